"""A recipe's general phases, trained once per seed and reused by every task.

General distillation on unlabeled text (TinyBERT's general stage, MobileBERT's layer-wise transfer,
DistilBERT's masked-LM phase) reads nothing of the task: the corpus is files or GLUE text, the
teachers are the cards' pretrained encoders.  The papers run it once and fine-tune its result on each
task; a harness that ran it again for every task would pay six times for one student over six tasks.
So the leading general phases of a recipe are cached under ``general/<student>-<key>-seed<seed>``: the
student's encoder after them, the stats of each of their stages (a record still shows what they cost,
and a study's budget counts them) and their curves.  The key is everything that decides those
weights: the student's encoder config and tokenizer, each phase with its resolved training settings
and the identity of its text, the teachers' pretrained checkpoints and weights, precision, DeepSpeed
settings, world size and seed.

The task head is not part of an entry: after the general phases the student gets back the head it
was initialised with, whether they were trained here or read from the cache, so a run's result does
not depend on what the cache held (the papers' task heads start fresh too).  Nothing of the task
reaches the phases: the encoder is built and initialised before the head, and each phase's terms
(projections, an mlm head) are seeded when the phase starts (:func:`harness.phases._run_phases`).

Entries are written like every cache entry (:mod:`harness.integrity`): into ``<folder>.tmp``, a
manifest last, renamed into place, under a lock; in a study an entry from another commit is trained
again, as a cached teacher is.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

from safetensors.torch import load_model, save_model
from torch import nn

from harness.data import corpus_files, corpus_tasks
from harness.engine import barrier, is_main, world
from harness.glue_files import data_id
from harness.hashing import spec_hash
from harness.integrity import MANIFEST, file_digest, intact, locked, write_manifest
from harness.models import student_config
from harness.paths import REPO_ROOT, cache_dir
from harness.recipe_parts import Corpus, Phase
from harness.recipe_students import student_label
from harness.records import code_state, git_state, short_state
from harness.resolved import RunPlan
from harness.resume import Checkpoints

ENCODER_FILE, STATS_FILE = "encoder.safetensors", "general.json"
LABEL_FIELDS = ("num_labels", "id2label", "label2id", "problem_type", "finetuning_task")

# (model, phases, index of their first stage) -> (trained model, one stats dict per stage)
TrainFn = Callable[[nn.Module, list[tuple[str, Phase]], int], tuple[nn.Module, list[dict]]]


def general_count(plan: RunPlan) -> int:
    """How many leading phases of the plan can be shared across tasks: corpus phases on files or GLUE
    text (not the task's own text) whose teachers are all cards (an assistant stage was trained on the
    task), before the last phase."""
    if any(t.card is None for t in plan.teachers):
        return 0
    n = 0
    for _, phase in plan.recipe.named_phases()[:-1]:
        if phase.corpus is None or not (phase.corpus.files or phase.corpus.glue):
            break
        n += 1
    return n


def corpus_id(corpus: Corpus, recipe_dir: Path, glue_dir: Path | None) -> dict:
    """What text a corpus phase reads: the SHA-256 of its files and the data ids of its GLUE tasks."""
    return {"files": [file_digest(f) for f in corpus_files(corpus, recipe_dir)],
            "glue": [data_id(t, glue_dir) for t in corpus_tasks(corpus)]}


def encoder_config(plan: RunPlan) -> dict:
    """The student's config without what depends on the task (its labels)."""
    config = student_config(plan.recipe.student, plan.student_card, plan.task).to_dict()
    return {k: v for k, v in config.items() if k not in LABEL_FIELDS}


@dataclass(frozen=True)
class GeneralEntry:
    """The cache entry of one plan's first ``count`` phases for one seed."""

    folder: Path
    count: int
    study_commit: str | None  # a study's: an entry trained at another commit is trained again

    @classmethod
    def of(cls, plan: RunPlan, seed: int, tok_id: str, glue_dir: Path | None,
           study_commit: str | None = None) -> GeneralEntry | None:
        """The entry for the plan's general phases (``tok_id``: the student tokenizer's
        :func:`~harness.models.tokenizer_id`), or None when it has none to share."""
        count = general_count(plan)
        if count == 0:
            return None
        phases = [p for _, p in plan.recipe.named_phases()[:count]]
        spec = {
            "student": plan.recipe.student.model_dump(mode="json"),
            "student_card": plan.student_card.source_spec() if plan.student_card is not None else None,
            "encoder": encoder_config(plan), "tokenizer": tok_id,
            "phases": [{"phase": p.model_dump(mode="json"), "training": plan.recipe.phase_training(p).model_dump(mode="json"),
                        "text": corpus_id(p.corpus, plan.path.parent, glue_dir)} for p in phases],
            "teachers": [{"card": t.card.name, "source": t.card.source_spec(), "weight": t.weight} for t in plan.teachers],
            "deepspeed": plan.recipe.deepspeed.model_dump(mode="json"), "precision": plan.precision,
            "world_size": world()[1], "seed": seed,
        }
        student = student_label(plan.recipe.student, plan.student_card).replace("/", "_")
        short = f"{student}-{'+'.join(p.name for p in phases)}"
        return cls(cache_dir() / "general" / f"{short}-{spec_hash(spec)}-seed{seed}", count, study_commit)

    @cached_property
    def commit(self) -> str:
        """The code state that trains now: the study's commit, else this checkout's."""
        return self.study_commit if self.study_commit is not None else code_state(*git_state(REPO_ROOT))

    def train_or_reuse(self, model: nn.Module, phases: list[tuple[str, Phase]], train: TrainFn,
                       checkpoints: Checkpoints | None) -> tuple[nn.Module, list[dict]]:
        """The student after the general phases (their stats, one dict per stage), read from the entry
        or trained and saved into it; either way with the task head it was initialised with."""
        head = {k: v.detach().clone() for k, v in model.state_dict().items() if not _in_encoder(model, k)}
        with locked(self.folder, "the general phases' student") if is_main() else contextlib.nullcontext():
            barrier()  # the other ranks wait until rank 0 holds the lock
            if self.usable():
                stats = self._load(model, checkpoints)
            else:
                if is_main() and (was := self.trained_at()) is not None:
                    print(f"note: {self.folder.name} was trained at commit {short_state(was)}; this study runs at "
                          f"{short_state(self.commit)}: training it again", flush=True)
                model, stats = train(model, phases[:self.count], 0)
                if is_main():
                    self._save(model, stats, checkpoints)
            barrier()
        model.load_state_dict(head, strict=False)
        return model, stats

    def usable(self) -> bool:
        """A complete, undamaged entry (in a study: trained at the study's commit)."""
        was = self.trained_at()
        return was is not None and (self.study_commit is None or was == self.commit)

    def trained_at(self, verify: bool = True) -> str | None:
        """The code state the entry was trained at; None without a complete entry, or (``verify``: read
        every file against the manifest) an undamaged one."""
        complete = (self.folder / STATS_FILE).is_file() and (self.folder / MANIFEST).is_file()
        if not complete or verify and not intact(self.folder, "a cached general-phase student"):
            return None
        return json.loads((self.folder / STATS_FILE).read_text())["commit"]

    def _load(self, model: nn.Module, checkpoints: Checkpoints | None) -> list[dict]:
        load_model(model.base_model, str(self.folder / ENCODER_FILE), strict=True)
        stats = json.loads((self.folder / STATS_FILE).read_text())["stages"]
        if checkpoints is not None and is_main():  # their curves join the run's (harness.curves reads stage<i>)
            for i in range(len(stats)):
                src, dst = self.folder / "curves" / f"stage{i}", checkpoints.root / "curves" / f"stage{i}"
                shutil.rmtree(dst, ignore_errors=True)  # an interrupted attempt's
                if src.is_dir():
                    shutil.copytree(src, dst)
        if is_main():
            print(f"[general phases] reused {self.folder.name}: trained once for this seed, shared by every task",
                  flush=True)
        return [s | {"reused_from": self.folder.name} for s in stats]

    def _save(self, model: nn.Module, stats: list[dict], checkpoints: Checkpoints | None) -> None:
        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(model.base_model, str(tmp / ENCODER_FILE))
        (tmp / STATS_FILE).write_text(json.dumps({"commit": self.commit, "stages": stats}, indent=1) + "\n")
        for i in range(len(stats)):
            src = checkpoints.root / "curves" / f"stage{i}" if checkpoints is not None else None
            if src is not None and src.is_dir():
                shutil.copytree(src, tmp / "curves" / f"stage{i}")
        write_manifest(tmp)
        shutil.rmtree(self.folder, ignore_errors=True)
        tmp.rename(self.folder)


def _in_encoder(model: nn.Module, key: str) -> bool:
    return key.startswith(model.base_model_prefix + ".")
