"""MiniLM and MiniLMv2: deep self-attention distillation of the last (or a chosen) layer."""
from __future__ import annotations

import math

import torch
from pydantic import Field

from harness.features import Features, Need
from harness.losses.base import TERMS, Batch, Shape, Term, TermError
from harness.losses.mobilebert import row_kl
from harness.schema import Strict


class MiniLMParams(Strict):
    teacher_layer: int | None = Field(None, description="teacher block (0-based) to distil; default: the last "
                                                         "(an upper-middle one for large teachers, MiniLMv2)")
    student_layer: int | None = Field(None, description="student block (0-based); default: the last")


class _LastLayerTerm(Term):
    needs_teacher = True
    level = "features"

    def __init__(self, params, student: Shape | None = None, teachers: list[Shape] = ()):
        super().__init__(params, student, teachers)
        if student is None:
            return
        self.s_block = self._block(params.student_layer, student, "student_layer")
        self.t_blocks = [self._block(params.teacher_layer, t, "teacher_layer") for t in teachers]

    @staticmethod
    def _block(index: int | None, shape: Shape, field: str) -> int:
        if index is None:
            return shape.layers - 1
        if not 0 <= index < shape.layers:
            raise TermError(field, f"block {index} past the depth ({shape.layers} blocks, 0..{shape.layers - 1})")
        return index

    def student_need(self):
        return Need(qkv=frozenset({self.s_block}))

    def teacher_need(self, i):
        return Need(qkv=frozenset({self.t_blocks[i]}))

    def restrict(self, student_block: int) -> bool:
        return student_block == self.s_block


def relation_log_probs(x: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """log softmax(X_r X_r^T / sqrt(d_r)) per relation head r: x [B, T, H] -> [B, heads, T, T]."""
    b, t, h = x.shape
    xr = x.float().view(b, t, heads, h // heads).transpose(1, 2)  # [B, r, T, d_r]
    rel = xr @ xr.transpose(-1, -2) / math.sqrt(h // heads)  # [B, r, T, T]
    rel = rel.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return torch.log_softmax(rel, dim=-1)


@TERMS.register("minilm")
class MiniLM(_LastLayerTerm):
    """Wang et al. (2020), "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
    Pre-Trained Transformers", eqs. 3-5.

    L = L_AT + L_VR: KL(A_t || A_s) between the attention distributions of the last layers, and
    KL(VR_t || VR_s) between their value relations VR = softmax(V V^T / sqrt(d_k)), each averaged over
    heads and tokens.  Per-head comparison: head counts must match; depth and width are free.
    """

    Params = MiniLMParams
    summary = "MiniLM: attention-distribution KL + value-relation KL of the last layer"

    def __init__(self, params, student: Shape | None = None, teachers: list[Shape] = ()):
        super().__init__(params, student, teachers)
        for t in teachers if student else ():
            if t.heads != student.heads:
                raise TermError("term", f"compares attention head by head, but the student has {student.heads} "
                                        f"heads and the teacher {t.heads}; minilmv2's relation heads have no such limit")

    def forward(self, batch: Batch) -> torch.Tensor:
        s, m = batch.student, self.s_block

        def one(t: Features, n: int, w: torch.Tensor) -> torch.Tensor:
            at = row_kl(t.log_probs(n), s.log_probs(m), s.mask, w)
            vr = row_kl(relation_log_probs(t.v[n], t.heads, s.mask), relation_log_probs(s.v[m], s.heads, s.mask),
                        s.mask, w)
            return at + vr
        return sum(one(t, n, batch.example_weights(k)) for k, (t, n) in enumerate(zip(batch.teachers, self.t_blocks)))


class MiniLMv2Params(MiniLMParams):
    relation_heads: int = Field(12, gt=0, description="heads the concatenated Q, K and V are re-split into; "
                                                      "must divide both widths")
    relations: list[str] = Field(["qq", "kk", "vv"], description="which self-attention relations to transfer")


@TERMS.register("minilmv2")
class MiniLMv2(_LastLayerTerm):
    """Wang et al. (2021), "MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing
    Pretrained Transformers", eqs. 1-3.

    For each relation in {Q-Q, K-K, V-V}: concatenate the heads' vectors, re-split them into
    ``relation_heads`` heads of width d_r, R = softmax(A_r A_r^T / sqrt(d_r)), and take
    KL(R_t || R_s) averaged over relation heads and tokens; the loss sums the relations.  The number of
    relation heads is the same for both models, so head counts and widths may differ.
    """

    Params = MiniLMv2Params
    summary = "MiniLMv2: Q-Q, K-K, V-V self-attention relation KL with re-split relation heads"

    def __init__(self, params, student: Shape | None = None, teachers: list[Shape] = ()):
        super().__init__(params, student, teachers)
        bad = sorted(set(params.relations) - {"qq", "kk", "vv"})
        if bad or not params.relations:
            raise TermError("relations", f"{bad or '[]'}: choose from qq, kk, vv (at least one)")
        for who, shape in [("student", student)] + [("teacher", t) for t in teachers] if student else []:
            if shape.hidden % params.relation_heads:
                raise TermError("relation_heads", f"{params.relation_heads} does not divide the {who}'s width {shape.hidden}")

    def forward(self, batch: Batch) -> torch.Tensor:
        s, m, r = batch.student, self.s_block, self.params.relation_heads

        def one(t: Features, n: int, w: torch.Tensor) -> torch.Tensor:
            loss = 0.0
            for rel in self.params.relations:
                a = rel[0]  # 'q', 'k' or 'v'
                loss = loss + row_kl(relation_log_probs(getattr(t, a)[n], r, s.mask),
                                     relation_log_probs(getattr(s, a)[m], r, s.mask), s.mask, w)
            return loss
        return sum(one(t, n, batch.example_weights(k)) for k, (t, n) in enumerate(zip(batch.teachers, self.t_blocks)))
