"""TinyBERT's transformer-layer and embedding-layer distillation (its prediction layer is ``hinton_kd``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.features import Need
from harness.losses.base import TERMS, AttentionParams, Batch, MappedTerm, Shape, Term, masked_mean, projection
from harness.schema import Strict


@TERMS.register("hidden_mse")
class HiddenMSE(MappedTerm):
    """Jiao et al. (2020), "TinyBERT: Distilling BERT for Natural Language Understanding", eq. 8.

    L_hidn = sum_{(m, n) in map} MSE(H_s[m] W_h, H_t[n]), one learned W_h (student width -> teacher
    width) shared by all mapped layers and dropped after training; layer_map: uniform is the paper's
    g(m) = m * k.  Also MobileBERT's feature-map transfer (Sun et al. 2020, eq. 1).  The mean runs
    over real tokens only: with dynamic padding the pad positions are not comparable across batches.
    """

    summary = "TinyBERT / MobileBERT: MSE between (projected) hidden states of mapped layers"

    def forward(self, batch: Batch) -> torch.Tensor:
        def one(s, t, pairs, proj, w):
            return sum(masked_mean(F.mse_loss(proj(s.hidden[m + 1]).float(), t.hidden[n + 1].float(),
                                              reduction="none"), s.mask, w) for m, n in pairs)
        return self.per_teacher(batch, one)


class EmbeddingParams(Strict):
    projection: bool = Field(True, description="learn W_e (student width -> teacher width) when they differ")


@TERMS.register("embedding_mse")
class EmbeddingMSE(Term):
    """TinyBERT eq. 9: L_embd = MSE(E_s W_e, E_t), on the embedding-layer outputs, real tokens only."""

    Params = EmbeddingParams
    needs_teacher = True
    level = "features"
    summary = "TinyBERT: MSE between (projected) embedding-layer outputs"

    def __init__(self, params, student: Shape | None = None, teachers: list[Shape] = ()):
        super().__init__(params, student, teachers)
        self.proj = nn.ModuleList(projection(student.hidden, t.hidden, params.projection) for t in teachers) \
            if student else nn.ModuleList()

    def student_need(self):
        return Need(hidden=True, layers=frozenset({0}))

    def teacher_need(self, i):
        return Need(hidden=True, layers=frozenset({0}))

    def forward(self, batch: Batch) -> torch.Tensor:
        s = batch.student
        return sum(masked_mean(F.mse_loss(p(s.hidden[0]).float(), t.hidden[0].float(), reduction="none"), s.mask,
                               batch.example_weights(k))
                   for k, (t, p) in enumerate(zip(batch.teachers, self.proj)))


@TERMS.register("attention_mse")
class AttentionMSE(MappedTerm):
    """TinyBERT eq. 7: L_attn = (1/h) sum_heads MSE(A_s, A_t) on the *unnormalised* attention scores
    QK^T / sqrt(d) of mapped layers (the paper found them to converge faster than probabilities).
    Head counts must match.  The mean runs over (query, key) pairs of real tokens, where TinyBERT's
    code zeroes the masked scores instead; the two agree when nothing is padded.
    """

    Params = AttentionParams
    same_heads = True
    reads = "attention"
    summary = "TinyBERT: MSE between attention scores (pre-softmax) of mapped layers"

    def forward(self, batch: Batch) -> torch.Tensor:
        def one(s, t, pairs, _proj, w):
            pair_mask = (s.mask[:, :, None] * s.mask[:, None, :])[:, None].float()  # [B, 1, T, T]
            weighted = pair_mask * w[:, None, None, None]
            loss = 0.0
            for m, n in pairs:
                err = (s.scores(m).float() - t.scores(n).float()).pow(2)  # [B, h, T, T]
                loss = loss + (err * weighted).sum() / (pair_mask.sum() * err.shape[1])
            return loss
        return self.per_teacher(batch, one)
