"""From a recipe file to a :class:`~harness.resolved.RunPlan`: read (``defaults`` merged, ``--set``
applied), parsed strictly, every card it names loaded once, its assistant stages resolved as plans of
their own, and the whole checked against the cards (:mod:`harness.checks`).

``harness validate`` stops at the plan; ``harness run`` starts from it.
"""
from __future__ import annotations

import glob
from pathlib import Path

from harness.checks import check_plan
from harness.includes import apply_override, read_with_defaults
from harness.precision import effective
from harness.recipe import Recipe
from harness.recipe_parts import ConfigStudent, PretrainedStudent, TeacherLayersStudent
from harness.resolved import ResolvedTeacher, RunPlan
from harness.schema import ConfigError, parse
from harness.teachers import Card, find_card, load_card


def default_name(path: Path) -> str:
    """recipes/glue/sst2/kd/3L_from_minilm.yaml -> glue/sst2/kd/3L_from_minilm."""
    parts = path.resolve().with_suffix("").parts
    if "recipes" in parts:
        return "/".join(parts[len(parts) - parts[::-1].index("recipes"):])
    return path.stem


def load(path: Path, overrides: tuple[str, ...] | list[str] = (), teachers_dir: Path | None = None) -> RunPlan:
    """Read, parse, resolve and check one recipe file.  ``overrides`` are ``dotted.key=yaml`` strings
    applied after ``defaults``; every problem is one ConfigError naming the file and the field."""
    data = read_with_defaults(path)
    for kv in overrides:
        apply_override(data, kv, path)
    recipe = parse(Recipe, data, path)
    if recipe.name is None:
        recipe = recipe.model_copy(update={"name": default_name(path)})
    s = recipe.student
    if isinstance(s, PretrainedStudent) and s.checkpoint.startswith((".", "/", "~")):
        ckpt = Path(s.checkpoint).expanduser()
        ckpt = ckpt if ckpt.is_absolute() else path.parent / ckpt
        if not (ckpt / "config.json").exists():
            raise ConfigError(f"{path}: student.checkpoint: no model folder (config.json) at {ckpt}")
        recipe = recipe.model_copy(update={"student": s.model_copy(update={"checkpoint": str(ckpt.resolve())})})
    plan = _Resolver(path, teachers_dir).plan(recipe, "student", "", tuple(overrides))
    check_plan(plan)
    return plan


def expand(patterns: list[str]) -> list[Path]:
    """Recipe files named by paths or globs; partials (files or folders starting with ``_``, such as
    ``recipes/glue/_methods/*.yaml``) are not recipes and are left out of globs."""
    paths: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(pat, recursive=True)) if glob.has_magic(pat) else [pat]
        if glob.has_magic(pat):
            hits = [h for h in hits if not any(part.startswith("_") for part in Path(h).parts)]
        if not hits:
            raise ConfigError(f"{pat}: no recipe matches this pattern")
        paths += [Path(h) for h in hits]
    return paths


def load_all(patterns: list[str], overrides: list[str] = (), teachers_dir: Path | None = None) -> list[RunPlan]:
    """Every recipe the patterns name, as a checked RunPlan; all problems reported together."""
    errors, plans = [], []
    for p in expand(patterns):
        try:
            plans.append(load(p, overrides, teachers_dir))
        except ConfigError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError("\n".join(errors))
    return plans


class _Resolver:
    """Resolves one recipe file's teachers and stages, loading each card file once."""

    def __init__(self, path: Path, teachers_dir: Path | None):
        self.path, self.teachers_dir = path, teachers_dir
        self.cards: dict[Path, Card] = {}

    def card(self, ref: str, field: str) -> Card:
        try:
            found = find_card(ref, self.path.parent, self.teachers_dir)
            if found not in self.cards:
                self.cards[found] = load_card(found)
            return self.cards[found]
        except ConfigError as e:
            raise ConfigError(f"{self.path}: {field}: {e}") from None

    def plan(self, recipe: Recipe, kind: str, where: str, overrides: tuple[str, ...] = ()) -> RunPlan:
        """``where`` prefixes field names in messages (``assistants[1].``)."""
        stages = {a.name: self.plan(recipe.stage_recipe(a.name), "stage", f"assistants[{i}].")
                  for i, a in enumerate(recipe.assistants)}
        teachers = []
        for i, ref in enumerate(recipe.teachers):
            if ref.card is not None:
                teachers.append(ResolvedTeacher(ref, recipe.canonical_task, precision=effective("auto"),
                                                card=self.card(ref.card, f"{where}teachers[{i}].card")))
            else:
                teachers.append(ResolvedTeacher(ref, recipe.canonical_task, stage=stages[ref.stage]))
        s = recipe.student
        own = s.card if isinstance(s, TeacherLayersStudent) else s.tokenizer_card if isinstance(s, ConfigStudent) \
            else None
        field = f"{where}student.{'card' if isinstance(s, TeacherLayersStudent) else 'tokenizer_card'}" if own \
            else f"{where}teachers[0].card"
        student_card = self.card(recipe.student_card, field) if recipe.student_card is not None else None
        return RunPlan(self.path, recipe, kind, tuple(teachers), student_card, effective(recipe.deepspeed.precision),
                       stages, overrides)
