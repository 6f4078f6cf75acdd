"""MixKD: distillation on mixup-interpolated word embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.losses.base import TERMS, Batch, Term
from harness.schema import Strict


class MixKDParams(Strict):
    alpha: float = Field(0.4, gt=0, description="mixing ratios lambda ~ Beta(alpha, alpha), one per example")
    sm_weight: float = Field(1.0, ge=0, description="alpha_SM: student loss on mixed inputs with mixed labels")
    tmkd_weight: float = Field(1.0, ge=0, description="alpha_TMKD: student matches the teacher on mixed inputs")
    distance: str = Field("mse", pattern="^(mse|kl)$", description="teacher-student distance on mixed inputs: "
                                                                   "MSE of logits, or KL of softmax(./T) times T^2")
    temperature: float = Field(1.0, gt=0, description="T for distance: kl")


@TERMS.register("mixkd")
class MixKD(Term):
    """Liang et al. (2021), "MixKD: Towards Efficient Distillation of Large-scale Language Models", eq. 6-8.

    Each example i is paired with a random partner j in the batch and their word embeddings are
    interpolated, x' = lam x_i + (1 - lam) x_j with lam ~ Beta(alpha, alpha) (attention mask: the union).
    L = alpha_SM * [lam CE(s(x'), y_i) + (1 - lam) CE(s(x'), y_j)] + alpha_TMKD * d(t(x'), s(x')).
    L_MLE on the originals is the recipe's ``ce`` (or ``hinton_kd``) term.  The teacher is run on the
    mixed embeddings every step, so its outputs can never be cached.  Regression: mixed scores, MSE.
    """

    Params = MixKDParams
    needs_teacher = True
    live_teacher = "runs the teacher on new mixup-interpolated embeddings every step"
    summary = "MixKD: mixup of word embeddings; student CE on mixed labels + KD from the teacher on mixed inputs"

    def forward(self, batch: Batch) -> torch.Tensor:
        p = self.params
        y = batch.labels
        b = y.shape[0]
        perm = torch.randperm(b, device=y.device)
        lam = torch.distributions.Beta(p.alpha, p.alpha).sample((b,)).to(y.device)  # [B]
        s = batch.run_student(perm, lam).logits.float()  # [B, C]
        loss = s.new_zeros(())
        if p.sm_weight:
            if batch.regression:
                sm = F.mse_loss(s.squeeze(-1), lam * y.float() + (1 - lam) * y[perm].float())
            else:
                ce = lambda target: F.cross_entropy(s, target, reduction="none")  # noqa: E731  [B]
                sm = (lam * ce(y) + (1 - lam) * ce(y[perm])).mean()
            loss = loss + p.sm_weight * sm
        if p.tmkd_weight:
            tk = [t.logits.float() for t in batch.run_teachers(perm, lam)]  # [B, C] each, no grad
            # each teacher's weight on a mixed example: the lam-weighted mix of its weights on the two
            w = [lam * batch.example_weights(k) + (1 - lam) * batch.example_weights(k)[perm] for k in range(len(tk))]
            if p.distance == "mse" or batch.regression:
                d = sum((wk * (s - t).pow(2).mean(-1)).mean() for wk, t in zip(w, tk))
            else:
                T = p.temperature
                target = sum(wk[:, None] * F.softmax(t / T, -1) for wk, t in zip(w, tk))  # [B, C]
                d = F.kl_div(F.log_softmax(s / T, -1), target, reduction="batchmean") * T * T
            loss = loss + p.tmkd_weight * d
        return loss
