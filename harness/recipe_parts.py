"""The sections a recipe is built from: teachers, student (its kinds are in :mod:`harness.recipe_students`),
objective terms, training, DeepSpeed and speed settings, corpus and progressive phases, teacher-assistant
stages.

Each is a strict pydantic model (:class:`harness.schema.Strict`: unknown keys are errors); the whole recipe
and its cross-field checks are in :mod:`harness.recipe`.
"""
from __future__ import annotations

import difflib
import math
import importlib.util
from typing import Any, Literal

import pydantic
from pydantic import ConfigDict, Field, RootModel, model_validator

from harness.losses import TERMS
from harness.recipe_students import (ConfigStudent, MobileBertStudent, PretrainedStudent,  # noqa: F401 (re-exported)
                                     Student, TeacherLayersStudent)
from harness.registry import UnknownName
from harness.schema import Strict
from harness.tasks import get_task
from harness.weighting import WeightingSpec


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


class TrainingOverrides(RootModel[dict[str, Any]]):
    """Some fields of :class:`Training`, overriding a base (a phase's or an assistant's ``training``, a
    teacher's ``finetune``, ``cofinetune``, a card's ``per_task`` entry).  Each key must be a Training
    field and each value valid for it; the mapping is kept as written (``epochs: 2`` stays 2, not 2.0),
    so the resolved recipes and the hashes of specs written before it was typed do not change."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="after")
    def _fields(self):
        allowed = sorted(Training.model_fields)
        for key in self.root:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown key {key!r}{hint}; allowed keys (training fields): {', '.join(allowed)}")
        try:
            Training.model_validate(self.root)
        except pydantic.ValidationError as e:
            first = e.errors(include_url=False)[0]
            field = ".".join(map(str, first["loc"]))
            raise ValueError(f"{field}: {first['msg'].removeprefix('Value error, ')} (got {first['input']!r})") from None
        return self

    def __bool__(self) -> bool:
        return bool(self.root)

    def over(self, base: dict) -> dict:
        """``base`` (a dump of Training or of a card's fine-tuning defaults) with these fields replaced."""
        return base | self.root


class TeacherRef(Strict):
    """A teacher: a card (fine-tuned on the task, cached), or an assistant stage of the same recipe
    (its trained model, cached by the stage's resolved spec)."""

    card: str | None = Field(None, description="teacher card name (teachers/<card>.yaml) or a path to a card file")
    stage: str | None = Field(None, description="an assistant of this recipe (assistants[].name) whose trained "
                                                "model teaches (a teacher-assistant chain)")
    weight: float = Field(1.0, gt=0, description="relative weight; weights are normalised over teachers")
    finetune: TrainingOverrides = Field(
        default_factory=lambda: TrainingOverrides({}),
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


class WandbSettings(Strict):
    project: str = Field("kd-harness", description="the W&B project the runs go to")
    team: str | None = Field(None, description="the W&B team (entity); default: your own account")
    group: str | None = Field(None, description="a W&B group gathering the runs")


class Monitor(Strict):
    """DeepSpeed's monitors: where a training stage's curves go (harness.curves).  Operational: left
    out of every hash (harness.hashing), so turning one on or off reuses cached models and records."""

    csv: bool = Field(True, description="DeepSpeed's CSV monitor; its files become curves.csv in the run's "
                                        "record folder (losses per term, learning rate, examples/s, teacher weights)")
    tensorboard: str | None = Field(None, description="a folder for TensorBoard event files, one subfolder per "
                                                      "run and stage (needs `pip install tensorboard`)")
    wandb: WandbSettings | None = Field(None, description="log to Weights & Biases, one W&B run per training "
                                                          "stage (needs `pip install wandb` and a login)")

    @model_validator(mode="after")
    def _installed(self):
        # DeepSpeed would fail at the first training step, minutes in; say it at validation instead
        for key, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
            if getattr(self, key) is not None and importlib.util.find_spec(package) is None:
                raise ValueError(f"{key}: the {package} package is not installed (pip install {package})")
        return self


class DeepSpeedSettings(Strict):
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 where the hardware has it natively (a GPU that supports it, a CPU with "
                            "avx512_bf16 or AMX), fp32 elsewhere")
    gradient_accumulation_steps: int = Field(1, gt=0)
    gradient_clipping: float = Field(1.0, ge=0)
    monitor: Monitor = Field(default_factory=Monitor, description="training curves through DeepSpeed's "
                                                                  "monitors: CSV (on), TensorBoard, W&B")


class SpeedSettings(Strict):
    seq_len: int = Field(128, gt=0, description="fixed sequence length for latency/throughput figures")
    throughput_batch: int = Field(32, gt=0)
    iters: int = Field(10, gt=0, description="timed iterations for batch-1 latency")


class Corpus(Strict):
    """Unlabeled text for a general (task-agnostic) distillation phase.  With neither ``files`` nor
    ``glue`` (``corpus: {}``) it is the recipe's own task's training inputs, capped and tokenized as
    for the task phase, labels ignored.  ``glue: all`` is the training text of every GLUE task (read
    from the GLUE folder), the general corpus the DistilBERT and TinyBERT recipes use."""

    files: list[str] = Field(default_factory=list, description="text files, one sentence or document per line "
                                                               "(relative to the recipe's folder)")
    glue: list[str] | Literal["all"] = Field(default_factory=list, description="GLUE tasks whose training sentences "
                                                                              "are used as text; all: every task")
    max_examples: int | None = Field(None, gt=0, description="cap on lines of files/glue text (a seeded sample); "
                                                             "the phase's training.max_train_examples caps it too")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="fraction of tokens masked (80/10/10, as BERT) "
                                                                 "when the phase has an mlm or mlm_kd term")

    @model_validator(mode="after")
    def _tasks(self):
        for t in [] if self.glue == "all" else self.glue:
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
    budget: Literal["per_block", "shared"] = Field(
        "per_block", description="per_block: every block trains the phase's epochs (or max_steps); shared: the "
                                 "blocks share them (each gets 1/blocks, the stream going on from block to block), "
                                 "so the phase costs what one non-progressive phase of the same training does")

    def block_training(self, training: Training, blocks: int) -> Training:
        """What one block's stage trains on."""
        if self.budget == "per_block":
            return training
        return training.model_copy(update={"epochs": training.epochs / blocks,
                                           "max_steps": training.max_steps and math.ceil(training.max_steps / blocks)})


class Phase(Strict):
    """One training phase; a recipe's phases run in order, each starting from the previous student."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    objective: list[TermSpec] = Field(min_length=1)
    training: TrainingOverrides = Field(default_factory=lambda: TrainingOverrides({}),
                                        description="overrides of the recipe's 'training'")
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
    training: TrainingOverrides = Field(default_factory=lambda: TrainingOverrides({}),
                                        description="overrides of the recipe's 'training'")
