"""What every objective term shares: the registry, the per-step inputs, layer maps and projections."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Union

import torch
from pydantic import Field
from torch import nn

from harness.features import Features, Need
from harness.registry import Registry
from harness.schema import Strict


@dataclass(frozen=True)
class Shape:
    """What a term needs to know of a model to build itself: depth, width and attention heads."""

    layers: int
    hidden: int
    heads: int


class TermError(ValueError):
    """A term that cannot be built for these models; ``field`` names the offending parameter."""

    def __init__(self, field: str, msg: str):
        super().__init__(f"{field}: {msg}")
        self.field = field


@dataclass
class Batch:
    """What a term sees at one step.

    student:          the student's Features (logits [B, C]; hidden states and q/k/v when asked)
    teachers:         one Features per teacher, computed without gradient, in recipe order
    teacher_weights:  [B, K] per-example teacher weights, rows summing to 1 (see harness.weighting);
                      a [K] vector means the same weights for every example
    labels:           [B] class ids (long), gold scores (float, regression) or MLM labels [B, T]
    inputs:           the model inputs of the step (for terms that run the models again: MixKD)
    run_student / run_teachers: ``(perm, lam) -> Features`` / list of Features: the models on
                      mixup-interpolated word embeddings (MixKD; the teachers without gradient)
    """

    student: Features
    teachers: list[Features]
    teacher_weights: torch.Tensor
    labels: torch.Tensor
    regression: bool
    inputs: dict = field(default_factory=dict)
    run_student: Callable | None = None
    run_teachers: Callable | None = None

    @property
    def student_logits(self) -> torch.Tensor:
        return self.student.logits

    @property
    def teacher_logits(self) -> list[torch.Tensor]:
        return [t.logits for t in self.teachers]

    def example_weights(self, k: int) -> torch.Tensor:
        """[B] weight of teacher k on each example."""
        w = self.teacher_weights.float()
        return w[:, k] if w.ndim == 2 else w[k].expand(self.student.logits.shape[0])


class NoParams(Strict):
    pass


class Term(nn.Module):
    """An objective term: ``forward(batch) -> scalar loss``.

    Subclasses set ``Params`` (a Strict pydantic model validated from the recipe entry),
    ``needs_teacher`` and ``level`` ("logits": needs task labels/logits; "features": intermediate
    only, so usable on an unlabeled corpus).  A term is built for concrete model shapes and may own
    trainable parameters (projections, an MLM head); they are optimised with the student and never
    saved with it.  Build errors raise :class:`TermError` naming the parameter.
    """

    Params: ClassVar[type[Strict]] = NoParams
    needs_teacher: ClassVar[bool] = False
    level: ClassVar[Literal["logits", "features", "mlm"]] = "logits"
    summary: ClassVar[str] = ""
    live_teacher: ClassVar[str | None] = None  # why the teacher must run on new inputs each step, if it must

    def __init__(self, params: Strict, student: Shape | None = None, teachers: list[Shape] = ()):
        super().__init__()
        self.params = params
        self.student_shape = student
        self.teacher_shapes = list(teachers)

    def student_need(self) -> Need:
        return Need()

    def teacher_need(self, i: int) -> Need:
        return Need()

    def restrict(self, student_block: int) -> bool:
        """From now on use only the layer pairs of one student block, out of the term's full map
        (progressive transfer); False if that block has none.  It may be called again for another
        block, so one term, with its projections, serves every block of a progressive phase."""
        return False

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


TERMS: Registry[type[Term]] = Registry("objective term")


# -- layer maps ------------------------------------------------------------------------------------
LayerMap = Union[Literal["uniform", "skip", "last", "final"], list[Union[int, None]]]
LAYER_MAP_HELP = ("uniform: TinyBERT's g(m) = m*k, k = teacher/student depth, counting blocks from 1: student "
                  "block m <- teacher block m*k, rounded half up when k is not an integer (4 student blocks on "
                  "6 teacher blocks: 1.5, 3, 4.5, 6 -> teacher blocks 2, 3, 5, 6); skip / last: PKD-skip / "
                  "PKD-last (all but the top student block); final: top block only; or a list giving the "
                  "teacher block (0-based) for each student block, null to skip one")


class MappedParams(Strict):
    layer_map: LayerMap = Field("uniform", description=LAYER_MAP_HELP)
    projection: bool = Field(True, description="learn a linear map student width -> teacher width when they differ")


class AttentionParams(Strict):
    layer_map: LayerMap = Field("uniform", description=LAYER_MAP_HELP)


def layer_pairs(spec: LayerMap, m: int, n: int, field: str = "layer_map") -> list[tuple[int, int]]:
    """(student block, teacher block) pairs, 0-based, for an m-block student and an n-block teacher.

    uniform is TinyBERT's g(j) = j * n / m over 1-based blocks (exact when m divides n), rounded half up
    otherwise: student block j (1..m) reads teacher block floor(j * n / m + 1/2).  Since n / m >= 1 the
    map is strictly increasing, and it ends on the teacher's top block (j = m gives n).
    """
    if isinstance(spec, list):
        if len(spec) != m:
            raise TermError(field, f"lists {len(spec)} teacher blocks but the student has {m} blocks")
        bad = [t for t in spec if t is not None and not 0 <= t < n]
        if bad:
            raise TermError(field, f"teacher blocks {bad} past the teacher's depth ({n} blocks, 0..{n - 1})")
        return [(i, t) for i, t in enumerate(spec) if t is not None]
    if m > n:
        raise TermError(field, f"'{spec}' needs a student no deeper than its teacher ({m} > {n} blocks)")
    if spec == "final":
        return [(m - 1, n - 1)]
    if spec == "last":  # PKD-last: the m-1 teacher blocks just below the top one
        return [(i, n - m + i) for i in range(m - 1)]
    uniform = [(i, uniform_block(i + 1, m, n) - 1) for i in range(m)]
    return uniform[:-1] if spec == "skip" else uniform


def uniform_block(j: int, m: int, n: int) -> int:
    """The teacher block (1-based) that student block j (1-based) of m reads under uniform: j * n / m
    rounded half up, in integers (no float can land a hair off a tie).  Python's round() sends ties to
    the even block, so one map mixed up and down (4 -> 6: 1.5 -> 2 but 4.5 -> 4); half up treats every
    tie alike and, unlike floor, still picks the nearest teacher block, so the maps of ratios with no
    tie (3 -> 4, 5 -> 12) are the ones round() gave."""
    return (2 * j * n + m) // (2 * m)


def projection(s: int, t: int, enabled: bool, what: str = "hidden width") -> nn.Module:
    """TinyBERT's W_h: a learned linear map from the student's width to the teacher's, when they differ."""
    if s == t:
        return nn.Identity()
    if not enabled:
        raise TermError("projection", f"student {what} {s} differs from teacher {what} {t}; "
                                      "set projection: true to learn a linear map between them")
    return nn.Linear(s, t)


class MappedTerm(Term):
    """A term comparing mapped student/teacher blocks, with one projection per teacher."""

    Params = MappedParams
    needs_teacher = True
    level = "features"
    same_heads: ClassVar[bool] = False  # attention distributions need equal head counts
    reads: ClassVar[Literal["hidden", "attention"]] = "hidden"  # what the pairs index

    def __init__(self, params: Any, student: Shape | None = None, teachers: list[Shape] = ()):
        super().__init__(params, student, teachers)
        self.pairs: list[list[tuple[int, int]]] = []  # per teacher: the pairs in use (see restrict)
        self.all_pairs: list[list[tuple[int, int]]] = []  # per teacher: the whole map
        self.proj = nn.ModuleList()
        if student is None:
            return
        for t in teachers:
            self.pairs.append(self._pairs(student, t))
            if not self.pairs[-1]:
                raise TermError("layer_map", f"pairs no student block with a teacher block ({student.layers}-block "
                                             f"student, {t.layers}-block teacher)")
            if self.same_heads and student.heads != t.heads:
                raise TermError("term", f"compares attention distributions head by head, but the student "
                                        f"has {student.heads} heads and the teacher {t.heads}")
            # attention scores and distributions do not depend on width: only hidden terms project
            self.proj.append(projection(student.hidden, t.hidden, params.projection)
                             if self.reads == "hidden" else nn.Identity())
        self.all_pairs = list(self.pairs)

    def _pairs(self, student: Shape, teacher: Shape) -> list[tuple[int, int]]:
        return layer_pairs(self.params.layer_map, student.layers, teacher.layers)

    def student_need(self) -> Need:
        if self.reads == "hidden":
            return Need(hidden=True, layers=frozenset(m + 1 for ps in self.pairs for m, _ in ps))
        return Need(qkv=frozenset(m for ps in self.pairs for m, _ in ps))

    def teacher_need(self, i: int) -> Need:
        if self.reads == "hidden":
            return Need(hidden=True, layers=frozenset(n + 1 for _, n in self.pairs[i]))
        return Need(qkv=frozenset(n for _, n in self.pairs[i]))

    def restrict(self, student_block: int) -> bool:
        self.pairs = [[p for p in ps if p[0] == student_block] for ps in self.all_pairs]
        return any(self.pairs)

    def per_teacher(self, batch: Batch, fn: Callable) -> torch.Tensor:
        """sum_k fn(student, teacher_k, pairs_k, projection_k, w_k), w_k [B] teacher k's per-example
        weights, which fn applies to each example's share of its mean."""
        return sum(fn(batch.student, t, pairs, proj, batch.example_weights(k))
                   for k, (t, pairs, proj) in enumerate(zip(batch.teachers, self.pairs, self.proj)))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of x [B, T, ...] over the real tokens of mask [B, T] (and over trailing dims), each
    example's tokens scaled by weights [B] when given (a constant w gives w times the plain mean)."""
    m = mask.to(x.dtype).view(*mask.shape, *([1] * (x.ndim - 2)))
    per_token = x[0, 0].numel() if x.ndim > 2 else 1
    wm = m if weights is None else m * weights.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return (x * wm).sum() / (m.sum() * per_token)
