"""The recipe schema: one YAML file = one distillation experiment.

A recipe names a task, its teachers (cards in ``teachers/`` with weights), how the student is built and
initialised, the objective (a weighted list of registered terms), training settings, seeds and DeepSpeed
settings.  Loading is strict (see :mod:`harness.schema`); ``load_recipe`` also checks references
(task, teacher cards, objective terms, layer indices) so ``harness validate`` needs no model loading.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pydantic
from pydantic import Field, model_validator

from harness.losses import TERMS
from harness.registry import UnknownName
from harness.includes import apply_override, read_with_defaults
from harness.recipe_parts import (Assistant, ConfigStudent, DeepSpeedSettings, Phase, PretrainedStudent,
                                  SpeedSettings, Student, TeacherLayersStudent, TeacherRef, TermSpec, Training)
from harness.schema import ConfigError, Strict, parse
from harness.tasks import get_task
from harness.weighting import NO_REGRESSION, WeightingSpec


class Recipe(Strict):
    name: str | None = Field(None, description="run name; default: the file's path under recipes/")
    description: str = ""
    task: str
    teachers: list[TeacherRef] = Field(default_factory=list)
    teacher_weighting: WeightingSpec = Field(
        WeightingSpec(), description="how several teachers are weighted per example in task phases (corpus "
                                     "phases use the static weights: they have no labels and no task logits)")
    student: Student
    objective: list[TermSpec] | None = Field(None, min_length=1, description="a one-phase recipe's terms")
    phases: list[Phase] | None = Field(None, min_length=1, description="several phases (instead of 'objective')")
    training: Training = Training()
    deepspeed: DeepSpeedSettings = DeepSpeedSettings()
    speed: SpeedSettings = SpeedSettings()
    assistants: list[Assistant] = Field(default_factory=list, description="teacher-assistant stages, trained "
                                                                         "in order before the student")
    cofinetune: dict[str, Any] | None = Field(
        None, description="MT-BERT teacher co-finetuning: the (card) teachers are fine-tuned jointly with one shared "
                          "pooling and prediction layer; the mapping overrides the first card's fine-tuning settings "
                          "({} for none); absent: each teacher is fine-tuned alone")

    @model_validator(mode="after")
    def _check(self):
        try:
            get_task(self.task)
        except UnknownName as e:
            raise ValueError(f"task: {e}") from None
        names = [a.name for a in self.assistants]
        for i, a in enumerate(self.assistants):
            if a.name in names[:i]:
                raise ValueError(f"assistants[{i}].name: {a.name!r} is used twice")
            for j, t in enumerate(a.teachers):
                if t.stage is not None and t.stage not in names[:i]:
                    raise ValueError(f"assistants[{i}].teachers[{j}].stage: {t.stage!r} is not an earlier "
                                     f"assistant (earlier: {names[:i] or 'none'})")
        for j, t in enumerate(self.teachers):
            if t.stage is not None and t.stage not in names:
                raise ValueError(f"teachers[{j}].stage: no assistant named {t.stage!r} (assistants: {names or 'none'})")
        if self.teachers and self.teachers[0].stage is not None:
            s = self.student
            if isinstance(s, TeacherLayersStudent) and s.card is None or isinstance(s, ConfigStudent) and s.tokenizer_card is None:
                raise ValueError(f"student.{'card' if isinstance(s, TeacherLayersStudent) else 'tokenizer_card'}: "
                                 "needed when the first teacher is a stage (it has no card to default to)")
        if self.teacher_weighting.scheme in NO_REGRESSION and get_task(self.task).is_regression:
            raise ValueError(f"teacher_weighting.scheme: {self.teacher_weighting.scheme} needs class "
                             f"distributions; {self.task} is a regression task (use mtbert, static or uniform)")
        if (self.objective is None) == (self.phases is None):
            raise ValueError("give either 'objective' (one phase) or 'phases', not both or neither")
        for where, phase in self.named_phases():
            needs = [t.term for t in phase.objective if TERMS.get(t.term).needs_teacher]
            if needs and not self.teachers:
                raise ValueError(f"{where}objective: terms {needs} need a teacher, but 'teachers' is empty")
            try:
                Training.model_validate(self.training.model_dump() | phase.training)
            except pydantic.ValidationError as e:
                first = e.errors(include_url=False)[0]
                field = ".".join(["training", *map(str, first["loc"])])
                raise ValueError(f"{where}{field}: {first['msg'].removeprefix('Value error, ')}") from None
            for i, t in enumerate(phase.objective):
                level = TERMS.get(t.term).level
                if phase.corpus is not None and level == "logits":
                    raise ValueError(f"{where}objective[{i}]: {t.term} needs task labels or logits; a corpus "
                                     "phase has neither (use mlm and intermediate terms)")
                if phase.corpus is None and level == "mlm":
                    raise ValueError(f"{where}objective[{i}]: {t.term} belongs in a corpus phase")
        last_where, last = self.named_phases()[-1]
        if last.corpus is not None or last.progressive is not None:
            raise ValueError(f"{last_where}: the last phase must train on the task (no corpus, not progressive) "
                             "so the classifier is trained")
        if isinstance(self.student, (TeacherLayersStudent, ConfigStudent)) and not self.teachers:
            card = self.student.card if isinstance(self.student, TeacherLayersStudent) else self.student.tokenizer_card
            if card is None:
                raise ValueError(f"student.{self.student.init} needs a card: name one, or list a teacher")
        return self

    # -- derived --------------------------------------------------------------------------------------
    @property
    def canonical_task(self) -> str:
        return get_task(self.task).name

    def named_phases(self) -> list[tuple[str, Phase]]:
        """[(field prefix for messages, phase)]; a one-phase recipe is the phase 'task'."""
        if self.phases is None:
            return [("", Phase(name="task", objective=self.objective or []))]
        return [(f"phases[{i}].", p) for i, p in enumerate(self.phases)]

    def reads_teachers(self) -> bool:
        """Whether any phase has a term that reads a teacher (the no-KD baseline has none)."""
        return any(TERMS.get(t.term).needs_teacher for _, p in self.named_phases() for t in p.objective)

    def stage_recipe(self, name: str) -> "Recipe":
        """Assistant ``name`` as a recipe of its own, with just the earlier assistants it builds on."""
        by_name = {a.name: a for a in self.assistants}
        keep, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in keep:
                keep.add(n)
                todo += [t.stage for t in by_name[n].teachers if t.stage is not None]
        a = by_name[name]
        return Recipe.model_validate({
            "name": f"stages/{self.canonical_task}/{name}", "task": self.task,
            "teachers": [t.model_dump() for t in a.teachers], "teacher_weighting": a.teacher_weighting.model_dump(),
            "student": a.student.model_dump() | {"name": a.student.name or name}, "objective": a.objective and [t.model_dump() for t in a.objective],
            "phases": a.phases and [p.model_dump() for p in a.phases],
            "training": self.training.model_dump() | a.training, "deepspeed": self.deepspeed.model_dump(),
            "speed": self.speed.model_dump(),
            "assistants": [x.model_dump() for x in self.assistants if x.name in keep and x.name != name]})

    def phase_training(self, phase: Phase) -> Training:
        return Training.model_validate(self.training.model_dump() | phase.training)

    def resolved(self) -> dict:
        """The recipe with every default filled in: what a run record stores and hashes."""
        d = self.model_dump(mode="json")
        d["task"] = self.canonical_task
        return d


# Training fields that change how a run is logged or fed, not what it computes (loader workers give the
# same batches: tests/test_run.py).  Records keep them; every hash sees them at their defaults, so changing
# one reuses cached teachers, stages, students and records (and hashes from before this rule still match).
OPERATIONAL = ("log_every", "loader_workers")


def _operational_at_default(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: Training.model_fields[k].default if k in OPERATIONAL else _operational_at_default(v)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_operational_at_default(v) for v in obj]
    return obj


def recipe_hash(resolved: dict) -> str:
    """Content hash of a resolved recipe (or any spec holding Training dumps or overrides)."""
    spec = _operational_at_default(resolved)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def default_name(path: Path) -> str:
    """recipes/glue/sst2/kd/3L_from_minilm.yaml -> glue/sst2/kd/3L_from_minilm."""
    parts = path.resolve().with_suffix("").parts
    if "recipes" in parts:
        return "/".join(parts[len(parts) - parts[::-1].index("recipes"):])
    return path.stem


def load_recipe(path: Path, teachers_dir: Path | None = None, overrides: list[str] = ()) -> Recipe:
    """Parse and check a recipe file, including its teacher-card references and its terms' fit to the
    models' shapes.  ``overrides`` are ``dotted.key=yaml`` strings applied after ``defaults``."""
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
    from harness.checks import check_references  # local: the checks read this module's schema

    check_references(recipe, path, teachers_dir)
    return recipe
