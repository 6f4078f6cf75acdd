"""DistilBERT's general-distillation terms: cosine alignment of hidden states (L_cos), the masked-LM
cross-entropy (L_mlm) and the soft targets of the teacher's masked-LM distribution (L_ce)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.features import Need
from harness.losses.base import (TERMS, LAYER_MAP_HELP, Batch, LayerMap, MappedParams, MappedTerm, Shape,
                                 Term, masked_mean)
from harness.schema import Strict


class CosineParams(MappedParams):
    layer_map: LayerMap = Field("final", description=LAYER_MAP_HELP)


@TERMS.register("cosine_hidden")
class CosineHidden(MappedTerm):
    """Sanh et al. (2019), "DistilBERT, a distilled version of BERT", sec. 2 ("cosine embedding loss").

    L_cos = sum_{(m, n) in map} mean over real tokens of 1 - cos(h_s[m], h_t[n]); by default only the
    last hidden states (layer_map: final), as in the paper, which needs equal widths (a projection is
    learned otherwise).
    """

    Params = CosineParams
    summary = "DistilBERT: 1 - cos(student, teacher) hidden states per token (default: last layer)"

    def forward(self, batch: Batch) -> torch.Tensor:
        def one(s, t, pairs, proj, w):
            loss = 0.0
            for m, n in pairs:
                cos = F.cosine_similarity(proj(s.hidden[m + 1]).float(), t.hidden[n + 1].float(), dim=-1)  # [B, T]
                loss = loss + masked_mean(1 - cos, s.mask, w)
            return loss
        return self.per_teacher(batch, one)


@TERMS.register("mlm")
class MaskedLM(Term):
    """Devlin et al. (2019), BERT, sec. 3.1 task 1; DistilBERT's L_mlm during general distillation.

    Cross-entropy of a prediction head on the masked positions (labels != -100; the corpus data masks
    15% of tokens, 80/10/10 as in BERT).  The head (dense + GELU + LayerNorm, decoder tied to the
    student's word embeddings) belongs to the term: it trains with the student and is not saved.  In a
    phase that also has ``mlm_kd`` the two terms share this one head, as DistilBERT's L_mlm and L_ce
    both read the student's one masked-LM distribution (see :func:`share_mlm_head`).
    """

    level = "mlm"
    summary = "masked-language-model cross-entropy (general distillation on a corpus)"

    def __init__(self, params, student: Shape | None = None, teachers=()):
        super().__init__(params, student, teachers)
        h = student.hidden if student else 1
        self.transform = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h))
        self.embeddings: nn.Embedding | None = None  # tied at run time (see bind)
        self.bias: nn.Parameter | None = None

    def bind(self, student: nn.Module) -> None:
        emb = student.get_input_embeddings()
        object.__setattr__(self, "embeddings", emb)  # not a submodule: it belongs to the student
        if self.bias is None:  # a head shared with mlm_kd is bound by whichever term comes first
            self.bias = nn.Parameter(torch.zeros(emb.num_embeddings))

    def student_need(self):
        return Need(hidden=True)

    def vocab_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The head on hidden states h [N, H]: logits over the student's vocabulary [N, V]."""
        return self.transform(h) @ self.embeddings.weight.t() + self.bias

    def forward(self, batch: Batch) -> torch.Tensor:
        labels = batch.labels  # [B, T], -100 where not masked
        h = batch.student.hidden[-1][labels != -100]  # [N, H]
        logits = self.vocab_logits(h)  # [N, V]
        if not h.shape[0]:
            # 15% masking of a short micro-batch can pick no token, and the mean over none is NaN, which
            # would poison the summed loss and every gradient of the step.  A zero computed from the
            # logits keeps the graph: backward still reaches the head and the student (zero gradients,
            # not missing ones).  float32 like the cross-entropy: the terms' losses are stacked together.
            return logits.float().sum() * 0
        return F.cross_entropy(logits.float(), labels[labels != -100])


class SoftMLMParams(Strict):
    temperature: float = Field(2.0, gt=0, description="softmax temperature T of both masked-LM distributions")
    positions: Literal["all", "masked"] = Field(
        "all", description="all: every real token (DistilBERT's released code, its default); masked: only the "
                           "masked tokens (that code's restrict_ce_to_mask option)")


@TERMS.register("mlm_kd")
class SoftMLM(MaskedLM):
    """Sanh et al. (2019), "DistilBERT, a distilled version of BERT", sec. 2: L_ce = sum_i t_i log s_i,
    the student's masked-LM distribution s against the teacher's soft targets t, at temperature T.

    L_ce = T^2 * mean over selected positions of sum_k w_k KL(p_k || q), with p_k = softmax(z_k / T)
    teacher k's masked-LM distribution over the vocabulary, q = softmax(z_s / T) the student's (its
    MLM head: the ``mlm`` term's when the phase has one, else its own), w_k the teachers' weights.
    KL and the paper's cross-entropy differ by the teacher's entropy, a constant: same gradients.  T^2
    as for every KD term here (Hinton et al. 2015).  Positions: all real tokens, masked or not, as
    DistilBERT's code does by default (its loss is a KL summed over the vocabulary and averaged over
    the tokens of the attention mask); ``positions: masked`` keeps the masked ones only.  The teacher
    reads the same masked text, through the MLM head its card declares (``mlm_head``).
    """

    Params = SoftMLMParams
    needs_teacher = True
    summary = "DistilBERT L_ce: T^2 * KL(teacher MLM_T || student MLM_T) per token (teacher card needs mlm_head)"
    live_teacher = "reads the teacher's masked-LM distribution over the vocabulary at every token, too large to cache"

    def __init__(self, params, student: Shape | None = None, teachers=()):
        super().__init__(params, student, teachers)
        # the mlm term whose head this one uses (see share_mlm_head); a plain attribute, not a submodule
        object.__setattr__(self, "owner", None)

    def bind(self, student: nn.Module) -> None:
        if self.owner is None:
            super().bind(student)
            return
        self.owner.bind(student)
        object.__setattr__(self, "embeddings", self.owner.embeddings)
        self.bias = self.owner.bias  # the same Parameter: the optimiser sees it once

    def forward(self, batch: Batch) -> torch.Tensor:
        T = self.params.temperature
        keep = (batch.labels != -100) if self.params.positions == "masked" else batch.student.mask.bool()  # [B, T]
        log_q = F.log_softmax(self.vocab_logits(batch.student.hidden[-1][keep]).float() / T, dim=-1)  # [N, V]
        if not keep.any():  # no masked token in the micro-batch: a zero that keeps the graph (see mlm)
            return log_q.sum() * 0
        loss = 0.0
        for k, t in enumerate(batch.teachers):
            if t.logits.ndim != 3 or t.logits.shape[-1] != log_q.shape[-1]:
                raise ValueError(f"mlm_kd: teacher {k} gives logits of shape {tuple(t.logits.shape)}, not masked-LM "
                                 f"logits [B, T, {log_q.shape[-1]}] over the student's vocabulary")
            log_p = F.log_softmax(t.logits[keep].float() / T, dim=-1)  # [N, V]
            kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)  # [N]
            w = batch.example_weights(k)[:, None].expand_as(keep)[keep]  # [N]: each token's example weight
            loss = loss + (w * kl).mean()
        return loss * T * T


def share_mlm_head(terms: list[Term]) -> None:
    """Let every mlm_kd term of a phase use the mlm term's head, if the phase has one: DistilBERT's
    L_mlm and L_ce are two losses on one student distribution, not on two heads."""
    owners = [t for t in terms if type(t) is MaskedLM]
    for t in terms:
        if isinstance(t, SoftMLM) and owners:
            object.__setattr__(t, "owner", owners[0])  # not a submodule: the phase's term list holds it
            t.transform = owners[0].transform  # the same module: its parameters are optimised once
