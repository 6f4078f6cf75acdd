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
from typing import Annotated, Any, Literal, Union

import pydantic
from pydantic import Field, model_validator

from harness.losses import TERMS
from harness.registry import UnknownName
from harness.includes import apply_override, read_with_defaults
from harness.schema import ConfigError, Strict, parse
from harness.tasks import get_task
from harness.weighting import NO_REGRESSION, WeightingSpec


class TeacherRef(Strict):
    """A teacher: a card (fine-tuned on the task, cached), or an assistant stage of the same recipe
    (its trained model, cached by the stage's resolved spec)."""

    card: str | None = Field(None, description="teacher card name (teachers/<card>.yaml) or a path to a card file")
    stage: str | None = Field(None, description="an assistant of this recipe (assistants[].name) whose trained "
                                                "model teaches (a teacher-assistant chain)")
    weight: float = Field(1.0, gt=0, description="relative weight; weights are normalised over teachers")
    finetune: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of the card's fine-tuning settings (e.g. max_train_examples), part of the cache key",
    )

    @model_validator(mode="after")
    def _one(self):
        if (self.card is None) == (self.stage is None):
            raise ValueError("give a teacher as either 'card' or 'stage'")
        if self.stage is not None and self.finetune:
            raise ValueError("finetune applies to cards; a stage is trained by its own assistants[] entry")
        return self

    @property
    def label(self) -> str:
        return self.card or f"stage {self.stage}"


class TeacherLayersStudent(Strict):
    """DistilBERT-style: keep some of a teacher's layers (pretrained weights, not the fine-tuned ones)."""

    init: Literal["teacher_layers"]
    name: str | None = None
    card: str | None = Field(None, description="card whose pretrained checkpoint is cut; default: first teacher")
    layers: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, description="teacher layer indices to keep")


class PretrainedStudent(Strict):
    init: Literal["pretrained"]
    name: str | None = None
    checkpoint: str = Field(description="a Hub id, or a local model folder starting with ./, ../, / or ~")


class ConfigStudent(Strict):
    """A randomly initialised encoder of the given shape, using a card's tokenizer and vocabulary."""

    init: Literal["config"]
    name: str | None = None
    tokenizer_card: str | None = Field(None, description="card whose tokenizer is used; default: first teacher")
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    ffn: int = Field(gt=0)

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


Student = Annotated[Union[TeacherLayersStudent, PretrainedStudent, ConfigStudent], Field(discriminator="init")]


class TermSpec(Strict):
    """One objective term: ``{term: hinton_kd, weight: 1.0, temperature: 2.0, ...}``.

    The term's own parameters sit beside ``term`` and ``weight`` in the YAML and are validated against
    the registered term's ``Params`` model; the resolved recipe stores them under ``params``.
    """

    term: str
    weight: float = Field(1.0, ge=0)
    params: Any = None

    @model_validator(mode="before")
    @classmethod
    def _split_params(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        name = data.pop("term", None)
        if not isinstance(name, str):
            raise ValueError("each objective entry needs 'term: <name>' naming a registered objective term")
        weight = data.pop("weight", 1.0)
        raw = data.pop("params", {}) | data  # a resolved recipe stores them under 'params'
        try:
            term_cls = TERMS.get(name)
        except UnknownName as e:
            raise ValueError(str(e)) from None
        try:
            params = term_cls.Params.model_validate(raw)
        except pydantic.ValidationError as e:
            first = e.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"])
            msg = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"{name}: {field + ': ' if field else ''}{msg}") from None
        return {"term": name, "weight": weight, "params": params}


class Training(Strict):
    epochs: float = Field(3.0, gt=0, description="passes over the (capped) training set")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimiser steps (overrides epochs)")
    batch_size: int = Field(32, gt=0, description="global batch size, split over ranks")
    eval_batch_size: int = Field(128, gt=0)
    lr: float = Field(5e-5, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="fraction of steps with linear warm-up")
    max_length: int = Field(128, gt=0, le=4096, description="maximum sequence length in tokens")
    max_train_examples: int | None = Field(None, gt=0, description="cap on training examples (a seeded sample)")
    seed: int | list[int] = Field(42, description="a seed or a list of seeds (one run each)")
    log_every: int = Field(50, gt=0, description="steps between loss logs")
    loader_workers: int | None = Field(None, ge=0, description="processes collating batches (default: none on "
                                                                "CPU, where they would compete for its cores; "
                                                                "up to 4 on GPU, with pinned memory)")
    compile: bool = Field(False, description="torch.compile the student's forward (through DeepSpeed's "
                                             "engine.compile); pays a compile at the start of each stage")

    @property
    def seeds(self) -> list[int]:
        return [self.seed] if isinstance(self.seed, int) else list(self.seed)


class DeepSpeedSettings(Strict):
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp32 otherwise (CPU)"
    )
    gradient_accumulation_steps: int = Field(1, gt=0)
    gradient_clipping: float = Field(1.0, ge=0)


class SpeedSettings(Strict):
    seq_len: int = Field(128, gt=0, description="fixed sequence length for latency/throughput figures")
    throughput_batch: int = Field(32, gt=0)
    iters: int = Field(10, gt=0, description="timed iterations for batch-1 latency")


class Corpus(Strict):
    """Unlabeled text for a general (task-agnostic) distillation phase.  With neither ``files`` nor
    ``glue`` (``corpus: {}``) it is the recipe's own task's training inputs, capped and tokenized as
    for the task phase, labels ignored."""

    files: list[str] = Field(default_factory=list, description="text files, one sentence or document per line "
                                                               "(relative to the recipe's folder)")
    glue: list[str] = Field(default_factory=list, description="GLUE tasks whose training sentences are used as text")
    max_examples: int | None = Field(None, gt=0, description="cap on lines of files/glue text (a seeded sample)")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="fraction of tokens masked (80/10/10, as BERT) "
                                                                 "when the phase has an mlm term")

    @model_validator(mode="after")
    def _tasks(self):
        for t in self.glue:
            try:
                get_task(t)
            except UnknownName as e:
                raise ValueError(f"glue: {e}") from None
        return self


class Progressive(Strict):
    """MobileBERT's progressive knowledge transfer: the phase is run once per student block, bottom up,
    with its layer-wise terms restricted to that block."""

    lower: Literal["freeze", "reduced_lr"] = Field("freeze", description="what happens to the blocks (and "
                                                                         "embeddings) below the one being trained")
    lr_scale: float = Field(0.1, gt=0, le=1, description="their learning-rate multiplier with lower: reduced_lr")


class Phase(Strict):
    """One training phase; a recipe's phases run in order, each starting from the previous student."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    objective: list[TermSpec] = Field(min_length=1)
    training: dict[str, Any] = Field(default_factory=dict, description="overrides of the recipe's 'training'")
    corpus: Corpus | None = Field(None, description="general distillation on this text (pretrained teachers, "
                                                    "MLM data); default: the recipe's task with fine-tuned teachers")
    progressive: Progressive | None = None


class Assistant(Strict):
    """One stage of a teacher-assistant chain (Mirzadeh et al. 2020): a student trained like a recipe of
    its own (same task, the recipe's training and DeepSpeed settings unless overridden) whose model then
    teaches later stages through ``{stage: <name>}``.  Trained once per resolved spec and seed, cached,
    and reused by any recipe that defines the same stage."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="how teachers refer to it ({stage: name}) and "
                                                                  "how lineages show it")
    teachers: list[TeacherRef] = Field(min_length=1, description="cards and/or earlier assistants")
    teacher_weighting: WeightingSpec = WeightingSpec()
    student: Student
    objective: list[TermSpec] | None = Field(None, min_length=1)
    phases: list[Phase] | None = Field(None, min_length=1)
    training: dict[str, Any] = Field(default_factory=dict, description="overrides of the recipe's 'training'")


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
