"""How much each of several teachers counts, per example.

A weighting scheme turns the teachers' logits on a batch, the gold labels and the recipe's static
teacher weights into a [B, K] matrix whose rows sum to 1.  Every objective term reads its teacher
weights from that matrix (``Batch.example_weights``), so a scheme applies to logit-level and
intermediate terms alike, as MT-BERT prescribes.  The dynamic schemes multiply the static weights
(all 1 unless a recipe sets them), so a recipe can both prefer a teacher and let the data decide.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from harness.registry import Registry, UnknownName
from harness.schema import Strict

# scheme(logits [K x [B, C]], labels [B], static [K] summing to 1, regression, spec) -> [B, K]
Scheme = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor, bool, "WeightingSpec"], torch.Tensor]
SCHEMES: Registry[Scheme] = Registry("teacher weighting scheme")
NO_REGRESSION = {"confidence"}  # schemes defined for class distributions only


class WeightingSpec(Strict):
    """``teacher_weighting:`` in a recipe."""

    scheme: str = Field("static", description="static (the teachers' recipe weights), uniform, mtbert "
                                              "(w_i ∝ 1/(1 + CE_i) per example) or confidence")
    confidence: str = Field("max_prob", pattern="^(max_prob|entropy)$",
                            description="confidence: max_prob (w_i ∝ max_c p_i(c)) or entropy "
                                        "(w_i ∝ 1 - H(p_i) / log C)")

    @field_validator("scheme")
    @classmethod
    def _known(cls, v: str) -> str:
        try:
            SCHEMES.get(v)
        except UnknownName as e:  # a KeyError: pydantic reports ValueErrors
            raise ValueError(str(e)) from None
        return v


def _normalise(w: torch.Tensor) -> torch.Tensor:
    return w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)


@SCHEMES.register("static")
def static(logits, labels, static_w, regression, spec) -> torch.Tensor:
    """The recipe's teacher weights, the same for every example."""
    return static_w.float().expand(logits[0].shape[0], -1)


@SCHEMES.register("uniform")
def uniform(logits, labels, static_w, regression, spec) -> torch.Tensor:
    """1/K for every teacher, whatever the recipe's weights."""
    return torch.full((logits[0].shape[0], len(logits)), 1.0 / len(logits), device=static_w.device)


@SCHEMES.register("mtbert")
def mtbert(logits, labels, static_w, regression, spec) -> torch.Tensor:
    """MT-BERT: per example, w_i ∝ 1 / (1 + CE_i), CE_i teacher i's cross-entropy on the gold label.

    Wu et al. (2021), "One Teacher is Enough? Pre-trained Language Model Distillation from Multiple
    Teachers" (MT-BERT), eq. 5: per example, teacher i's weight is proportional to 1 / (1 + CE_i),
    CE_i its cross-entropy on the gold label, normalised over teachers.  Regression: the squared error
    to the gold score stands in for CE."""
    if regression:
        err = torch.stack([(z.float().squeeze(-1) - labels.float()).pow(2) for z in logits], dim=1)  # [B, K]
    else:
        err = torch.stack([F.cross_entropy(z.float(), labels, reduction="none") for z in logits], dim=1)  # [B, K]
    return _normalise(static_w.float() / (1.0 + err))


@SCHEMES.register("confidence")
def confidence(logits, labels, static_w, regression, spec) -> torch.Tensor:
    """Label-free: w_i ∝ teacher i's confidence (max probability, or 1 - H / log C) on the example.

    A teacher counts more on the examples it is sure about, by its top probability or by its
    normalised certainty 1 - H(p) / log C (0 for a uniform prediction, 1 for a one-hot one)."""
    probs = torch.stack([F.softmax(z.float(), dim=-1) for z in logits], dim=1)  # [B, K, C]
    if spec.confidence == "max_prob":
        c = probs.max(dim=-1).values  # [B, K]
    else:
        ent = -(probs * probs.clamp_min(1e-12).log()).sum(-1)  # [B, K]
        c = 1.0 - ent / math.log(probs.shape[-1])
    return _normalise(static_w.float() * c.clamp_min(1e-6))


def teacher_weights(spec: WeightingSpec, logits: list[torch.Tensor], labels: torch.Tensor | None,
                    static_w: torch.Tensor, regression: bool) -> torch.Tensor:
    """[B, K] per-example teacher weights, rows summing to 1."""
    return SCHEMES.get(spec.scheme)(logits, labels, static_w, regression, spec)
