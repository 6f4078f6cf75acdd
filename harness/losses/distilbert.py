"""DistilBERT: cosine alignment of hidden states, and the masked-language-model term of general distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.features import Need
from harness.losses.base import (TERMS, LAYER_MAP_HELP, Batch, LayerMap, MappedParams, MappedTerm, Shape,
                                 Term, masked_mean)


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
    student's word embeddings) belongs to the term: it trains with the student and is not saved.
    Our offline teachers ship without MLM heads, so the teacher's MLM distribution is not distilled.
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
        self.bias = nn.Parameter(torch.zeros(emb.num_embeddings))

    def student_need(self):
        return Need(hidden=True)

    def forward(self, batch: Batch) -> torch.Tensor:
        labels = batch.labels  # [B, T], -100 where not masked
        h = batch.student.hidden[-1][labels != -100]  # [N, H]
        logits = self.transform(h) @ self.embeddings.weight.t() + self.bias  # [N, V]
        if not h.shape[0]:
            # 15% masking of a short micro-batch can pick no token, and the mean over none is NaN, which
            # would poison the summed loss and every gradient of the step.  A zero computed from the
            # logits keeps the graph: backward still reaches the head and the student (zero gradients,
            # not missing ones).  float32 like the cross-entropy: the terms' losses are stacked together.
            return logits.float().sum() * 0
        return F.cross_entropy(logits.float(), labels[labels != -100])
