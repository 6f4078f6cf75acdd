"""What every objective term shares: the registry, the per-step inputs and the module interface."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from harness.registry import Registry
from harness.schema import Strict


@dataclass
class Batch:
    """What a term sees at one step.

    student_logits:   [B, C] (C = 1 for regression)
    teacher_logits:   one [B, C] tensor per teacher, no grad, in recipe order
    teacher_weights:  [K] recipe weights of the K teachers, normalised to sum to 1
    labels:           [B] class ids (long) or gold scores (float, regression)
    """

    student_logits: torch.Tensor
    teacher_logits: list[torch.Tensor]
    teacher_weights: torch.Tensor
    labels: torch.Tensor
    regression: bool


class NoParams(Strict):
    pass


class Term(nn.Module):
    """An objective term: ``forward(batch) -> scalar loss``.

    Subclasses set ``Params`` (a Strict pydantic model validated from the recipe entry) and
    ``needs_teacher``.  A term may own trainable parameters (e.g. a projection); they are optimised
    with the student and never saved with it.
    """

    Params: ClassVar[type[Strict]] = NoParams
    needs_teacher: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    def __init__(self, params: Strict):
        super().__init__()
        self.params = params

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


TERMS: Registry[type[Term]] = Registry("objective term")
