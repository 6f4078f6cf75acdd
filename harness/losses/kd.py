"""Logit-level terms: hard-label fine-tuning and Hinton knowledge distillation."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.losses.base import TERMS, Batch, Term
from harness.schema import Strict


def hard_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy on gold labels, or MSE on gold scores for a regression task (STS-B)."""
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


@TERMS.register("ce")
class HardLabel(Term):
    """Plain supervised fine-tuning: cross-entropy on the gold label (MSE for regression).

    Alone it is the "no-KD" baseline; it needs no teacher.
    """

    summary = "hard-label cross-entropy (MSE for STS-B); the no-KD baseline"

    def forward(self, batch: Batch) -> torch.Tensor:
        return hard_loss(batch.student_logits, batch.labels, batch.regression)


class HintonParams(Strict):
    temperature: float = Field(2.0, gt=0, description="softmax temperature T used for teacher and student")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft term; (1 - alpha) goes to hard CE")
    combine: Literal["mixture", "sum"] = Field(
        "mixture", description="several teachers: distil from their weighted mixture distribution, or sum "
                               "the weighted per-teacher KL terms")


def soft_loss(s: torch.Tensor, batch: Batch, T: float, combine: str) -> torch.Tensor:
    """The soft part of KD for student logits s [B, C] against every teacher of the batch.

    mixture: KL(sum_k w_k p_k || q) per example, w [B, K] the per-example teacher weights;
    sum:     sum_k w_k KL(p_k || q) per example.  Both are averaged over the batch and scaled by T^2.
    One teacher (or one-hot weights) makes them equal.  Regression: the squared error to the
    weighted teacher score (mixture) or the weighted squared errors to each teacher score (sum).
    """
    w = torch.stack([batch.example_weights(k) for k in range(len(batch.teachers))], dim=1)  # [B, K]
    if batch.regression:
        z = torch.stack([t.float().squeeze(-1) for t in batch.teacher_logits], dim=1)  # [B, K]
        if combine == "mixture":
            return (s.squeeze(-1) - (w * z).sum(1)).pow(2).mean()
        return (w * (s.squeeze(-1)[:, None] - z).pow(2)).sum(1).mean()
    log_q = F.log_softmax(s / T, dim=-1)  # [B, C]
    p = torch.stack([F.softmax(t.float() / T, dim=-1) for t in batch.teacher_logits], dim=1)  # [B, K, C]
    if combine == "mixture":
        kl = F.kl_div(log_q, (w[:, :, None] * p).sum(1), reduction="none").sum(-1)  # [B]
    else:
        kl = (w * F.kl_div(log_q[:, None, :].expand_as(p), p, reduction="none").sum(-1)).sum(1)  # [B]
    return kl.mean() * T * T


@TERMS.register("hinton_kd")
class HintonKD(Term):
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", sec. 2.

    L = alpha * T^2 * KL(p_T || q_T) + (1 - alpha) * CE(y, q_1)
    with p_T = softmax(z_teacher / T), q_T = softmax(z_student / T).  The T^2 factor keeps the soft
    gradients' scale independent of T (the paper's footnote to sec. 2.1).  With several teachers p_T is
    their weighted mixture sum_i w_i softmax(z_i / T) (combine: mixture), or the loss is the weighted
    sum of per-teacher KL terms (combine: sum); the weights come from the recipe's teacher_weighting.
    Regression (STS-B): the soft term is the MSE to the (weighted) teacher score, the hard term the
    MSE to the gold score.
    """

    Params = HintonParams
    needs_teacher = True
    summary = "Hinton KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE"

    def forward(self, batch: Batch) -> torch.Tensor:
        T, alpha = self.params.temperature, self.params.alpha
        s = batch.student_logits.float()  # [B, C]
        soft = soft_loss(s, batch, T, self.params.combine)
        if alpha == 1.0:
            return soft
        return alpha * soft + (1.0 - alpha) * hard_loss(s, batch.labels, batch.regression)
