"""Logit-level terms: hard-label fine-tuning and Hinton knowledge distillation."""
from __future__ import annotations

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


@TERMS.register("hinton_kd")
class HintonKD(Term):
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", sec. 2.

    L = alpha * T^2 * KL(p_T || q_T) + (1 - alpha) * CE(y, q_1)
    with p_T = softmax(z_teacher / T), q_T = softmax(z_student / T).  The T^2 factor keeps the soft
    gradients' scale independent of T (the paper's footnote to sec. 2.1).  With several teachers p_T is
    their weighted mixture sum_i w_i softmax(z_i / T).  Regression (STS-B): the soft term is the MSE to
    the (weighted) teacher score, the hard term the MSE to the gold score.
    """

    Params = HintonParams
    needs_teacher = True
    summary = "Hinton KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE"

    def forward(self, batch: Batch) -> torch.Tensor:
        T, alpha = self.params.temperature, self.params.alpha
        w = batch.teacher_weights.float()  # [K]
        s = batch.student_logits.float()  # [B, C]
        if batch.regression:
            target = sum(wi * t.float().squeeze(-1) for wi, t in zip(w, batch.teacher_logits))  # [B]
            soft = F.mse_loss(s.squeeze(-1), target)
        else:
            p_teacher = sum(wi * F.softmax(t.float() / T, dim=-1) for wi, t in zip(w, batch.teacher_logits))  # [B, C]
            log_q = F.log_softmax(s / T, dim=-1)  # [B, C]
            soft = F.kl_div(log_q, p_teacher, reduction="batchmean") * T * T
        if alpha == 1.0:
            return soft
        return alpha * soft + (1.0 - alpha) * hard_loss(s, batch.labels, batch.regression)
