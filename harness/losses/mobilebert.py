"""MobileBERT's attention transfer (its feature-map transfer is ``hidden_mse``)."""
from __future__ import annotations

import torch

from harness.losses.base import TERMS, AttentionParams, Batch, MappedTerm


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
