"""A recipe with everything it refers to resolved once: its teachers (cards loaded, or assistant stages
as plans of their own), the student's card, and where each teacher's model and record live.

:func:`harness.plan.load` builds a :class:`RunPlan` from a recipe file; ``validate`` stops there and
``run`` starts from it.  Nothing here loads model weights: shapes come from the cards, and a teacher's
cache folder is a hash of its resolved spec.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from harness.hashing import one_run, spec_hash
from harness.losses import Shape
from harness.paths import cache_dir
from harness.precision import key_part
from harness.recipe import Recipe
from harness.recipe_parts import ConfigStudent, PretrainedStudent, TeacherLayersStudent, TeacherRef, Training
from harness.tasks import Task, get_task
from harness.teachers import Card, finetuned_dir


@dataclass(frozen=True)
class ResolvedTeacher:
    """One entry of a recipe's ``teachers``: a card fine-tuned on the task, or an assistant stage."""

    ref: TeacherRef
    task: str  # canonical task name
    card: Card | None = None  # a card teacher
    stage: RunPlan | None = None  # an assistant stage: its own plan
    precision: str = "fp32"  # what a card teacher is fine-tuned in here (DeepSpeed defaults: precision auto)

    @property
    def weight(self) -> float:
        return self.ref.weight

    @property
    def label(self) -> str:
        return self.ref.label

    @property
    def finetune(self) -> Training:
        """A card teacher's resolved fine-tuning settings (card defaults < per_task < the recipe's)."""
        assert self.card is not None, "a stage is trained by its own recipe, not fine-tuned"
        return self.card.finetune_for(self.task, self.ref.finetune)

    def folder(self, seed: int) -> Path:
        """Its cached model: the card's fine-tuned checkpoint, or the stage trained for ``seed``."""
        if self.card is not None:
            return finetuned_dir(self.card, self.task, self.finetune, self.precision)
        return self.stage.stage_folder(seed)

    def record_dir(self, results_dir: Path, seed: int) -> Path:
        """Where its run record is kept under ``results_dir``."""
        if self.card is not None:
            return results_dir / "runs" / "teachers" / self.card.name / self.task / self.folder(seed).name
        return results_dir / "runs" / self.stage.recipe.name / self.stage.hash(seed) / f"seed{seed}"

    @property
    def shape(self) -> Shape | None:
        if self.card is not None:
            return Shape(self.card.layers, self.card.hidden, self.card.heads)
        return self.stage.student_shape

    @property
    def tokenizer_source(self) -> str | None:
        """The local folder whose tokenizer it reads text with (None: not installed here, or the Hub)."""
        if self.card is not None:
            p = self.card.local_checkpoint()
            return str(p) if p is not None else None
        return self.stage.tokenizer_source

    def checkpoint_spec(self, seed: int) -> dict:
        """What it is, in a student's resolved recipe (``teacher_checkpoints``): a card's checkpoint and
        fine-tuning, or an assistant stage's own resolved hash."""
        if self.card is not None:  # fine-tuned under the default DeepSpeed settings (precision auto)
            return {"card": self.card.name, "source": self.card.source_spec(),
                    "finetune": self.finetune.model_dump(mode="json")} | key_part("auto", self.precision)
        return {"stage": self.ref.stage, "hash": self.stage.hash(seed)}


@dataclass(frozen=True)
class RunPlan:
    """A recipe ready to run: ``kind`` is "student" for a recipe file, "stage" for an assistant."""

    path: Path  # the recipe file (relative paths in it are relative to its folder)
    recipe: Recipe
    kind: Literal["student", "stage"]
    teachers: tuple[ResolvedTeacher, ...]
    student_card: Card | None  # the card the student is cut from or takes its tokenizer from
    precision: str  # what deepspeed.precision means on this machine: fp32, bf16 or fp16
    stages: dict[str, RunPlan] = field(default_factory=dict)  # its assistants, each a plan of its own
    overrides: tuple[str, ...] = ()  # the --set strings applied, as typed

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def task(self) -> Task:
        return get_task(self.recipe.task)

    def resolved(self, seed: int) -> dict:
        """What a run's record stores and its hash keys: the recipe, the seed, and what each teacher is."""
        return one_run(self.recipe.resolved(), seed) | key_part(self.recipe.deepspeed.precision, self.precision) | {
            "seed": seed, "teacher_checkpoints": [t.checkpoint_spec(seed) for t in self.teachers]}

    def hash(self, seed: int) -> str:
        return spec_hash(self.resolved(seed))

    def stage_folder(self, seed: int) -> Path:
        """An assistant stage's trained model in the cache (shared by every recipe defining the stage)."""
        short = self.name.rsplit("/", 1)[-1]  # stages/<task>/<name>
        return cache_dir() / "stages" / self.task.name / f"{short}-{self.hash(seed)}-seed{seed}"

    def reads_teachers(self) -> bool:
        return self.recipe.reads_teachers()

    def cofinetune_seeds(self) -> list[int] | None:
        """Under co-finetuning, each teacher's own dropout seed (its ``finetune: {seed: N}``, else the
        joint run's seed) when any teacher names one, so that copies of one card are other models; None
        when none does (all draw from the joint run's stream, and the cache keys stay as they were)."""
        if self.recipe.cofinetune is None or not any("seed" in t.ref.finetune.root for t in self.teachers):
            return None
        joint = self.teachers[0].card.finetune_for(self.task.name, self.recipe.cofinetune).seed
        return [t.ref.finetune.root.get("seed", joint) for t in self.teachers]

    @cached_property
    def student_shape(self) -> Shape | None:
        """The student's depth, width and heads, known without loading weights (None: a Hub checkpoint)."""
        s = self.recipe.student
        if isinstance(s, ConfigStudent):
            return Shape(s.layers, s.hidden, s.heads)
        if isinstance(s, TeacherLayersStudent):
            return Shape(len(s.layers), self.student_card.hidden, self.student_card.heads)
        cfg = Path(s.checkpoint) / "config.json"
        if cfg.is_file():
            c = json.loads(cfg.read_text())
            return Shape(c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"])
        return None

    @property
    def tokenizer_source(self) -> str | None:
        """The local folder whose tokenizer the student uses (None: not installed here, or the Hub)."""
        s = self.recipe.student
        if isinstance(s, PretrainedStudent):
            return s.checkpoint if Path(s.checkpoint).is_dir() else None
        p = self.student_card.local_checkpoint()
        return str(p) if p is not None else None
