"""MobileBERT's attention transfer, with equal head counts and across head counts (its feature-map
transfer is ``hidden_mse``; its student is built by :mod:`harness.models` from a ``MobileBertStudent``)."""
from __future__ import annotations

import math

import torch

from harness.losses.base import TERMS, AttentionParams, Batch, MappedTerm, Shape, TermError


def row_kl(log_p: torch.Tensor, log_q: torch.Tensor, mask: torch.Tensor,
           weights: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p || q) of row distributions [B, h, T, T] over real keys, averaged over heads and real query
    rows (mask [B, T]), each example's rows scaled by weights [B] when given.  Masked keys carry
    log-probability -inf in both and contribute nothing."""
    off = ~mask.bool()[:, None, None, :]
    # zero the -inf entries first: a where() over them would still send NaN gradients back
    log_p, log_q = log_p.masked_fill(off, 0.0), log_q.masked_fill(off, 0.0)
    kl = (log_p.exp() * (log_p - log_q)).masked_fill(off, 0.0).sum(-1)  # [B, h, T]
    rows = mask.to(kl.dtype)[:, None, :]  # [B, 1, T]
    w = rows if weights is None else rows * weights.to(kl.dtype)[:, None, None]
    return (kl * w).sum() / (rows.sum() * kl.shape[1])


@TERMS.register("attention_kl")
class AttentionKL(MappedTerm):
    """Sun et al. (2020), "MobileBERT: a Compact Task-Agnostic BERT for Resource-Limited Devices", eq. 2.

    L_AT = sum_{(m, n) in map} (1/h) sum_heads mean_rows KL(a_t[n] || a_s[m]) between the attention
    distributions of mapped layers; head counts must match.  With layer_map: final it is MiniLM's
    attention-transfer half alone.
    """

    Params = AttentionParams
    same_heads = True
    reads = "attention"
    summary = "MobileBERT: KL between attention distributions of mapped layers"

    def forward(self, batch: Batch) -> torch.Tensor:
        def one(s, t, pairs, _proj, w):
            return sum(row_kl(t.log_probs(n), s.log_probs(m), s.mask, w) for m, n in pairs)
        return self.per_teacher(batch, one)


def group_mean_log_probs(log_p: torch.Tensor, groups: int) -> torch.Tensor:
    """log of the mean of consecutive head groups' distributions: [B, H, T, T] -> [B, groups, T, T],
    group g averaging heads g*k .. g*k+k-1 (k = H / groups).  A mean of distributions over the same
    keys is a distribution; logsumexp keeps it in log space (masked keys stay -inf)."""
    b, h, tq, tk = log_p.shape
    k = h // groups
    return torch.logsumexp(log_p.view(b, groups, k, tq, tk), dim=2) - math.log(k)


@TERMS.register("attention_kl_grouped")
class GroupedAttentionKL(AttentionKL):
    """MobileBERT's attention transfer (Sun et al. 2020, eq. 2) between models with different head counts.

    The paper's teacher (IB-BERT) is built with as many heads as the student, so eq. 2 pairs heads one to
    one.  A standard teacher has more (all-MiniLM-L6-v2: 12, a MobileBERT student: 4), so each student
    head j of h_s is paired with a group of k = h_t / h_s consecutive teacher heads j*k .. j*k+k-1, and
    its target is the mean of their attention distributions, (1/k) sum_i a_t[n, i] (itself a distribution
    over the same keys):

    L_AT = sum_{(m, n) in map} (1/h_s) sum_j mean_rows KL((1/k) sum_{i in group j} a_t[n, i] || a_s[m, j]),

    rows and keys of real tokens only.  Head order carries no meaning, so consecutive groups are one
    arbitrary but fixed choice.  With equal head counts (k = 1) it is ``attention_kl``.  The teacher's
    heads must be a multiple of the student's.
    """

    same_heads = False
    summary = ("MobileBERT: KL between attention distributions, each student head against the mean of a group "
               "of teacher heads")

    def __init__(self, params, student: Shape | None = None, teachers: list[Shape] = ()):
        super().__init__(params, student, teachers)
        for t in teachers if student else ():
            if t.heads % student.heads:
                raise TermError("term", f"pairs each student head with a group of teacher heads, but the teacher's "
                                        f"{t.heads} heads are not a multiple of the student's {student.heads}")

    def forward(self, batch: Batch) -> torch.Tensor:
        def one(s, t, pairs, _proj, w):
            return sum(row_kl(group_mean_log_probs(t.log_probs(n), s.heads), s.log_probs(m), s.mask, w)
                       for m, n in pairs)
        return self.per_teacher(batch, one)
