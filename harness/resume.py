"""Resuming an interrupted run where it stopped.

A run (a student with all its phases, a teacher's fine-tuning, an assistant stage) keeps its
checkpoints in ``$KD_HARNESS_CACHE/checkpoints/<run>/stage<i>/``, one folder per training stage in the
order the run trains them.  Each stage saves through DeepSpeed's ``save_checkpoint`` every
``--checkpoint-every`` optimiser steps and at each epoch end: the model with the terms' trainable
parts, the optimizer, the learning-rate schedule, and as client state the loop's position (epoch,
step, examples seen, loss sums, logged history) and the RNG states.  The data order needs nothing
stored: each epoch's batches are a function of (seed, epoch).  Teacher outputs live in their own
content-addressed cache.  A stage that finished saves its final weights too, so a run killed in a
later phase does not train the earlier ones again.

``latest.json`` names the newest complete checkpoint and is written (atomically) only after
DeepSpeed has written it, so a kill during a save leaves the previous one in force.  On CPU a resumed
run ends bitwise equal to an uninterrupted one (tests/test_resume.py checks records and predictions).
The checkpoints are deleted once the run's model and record are written (``--keep-checkpoints``
keeps them).  Each names the commit of the code that wrote it: a study (whose records claim one commit)
starts a stage again rather than resume another commit's checkpoint; a plain run resumes it and says so.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.engine import barrier, is_main
from harness.paths import REPO_ROOT, cache_dir
from harness.records import code_state, git_state, short_state

LATEST = "latest.json"
_NOTED: set[Path] = set()  # stages whose other-commit checkpoint this process has reported


@dataclass(frozen=True)
class Checkpoints:
    """Where one run keeps its stage checkpoints, and how often a stage saves."""

    root: Path
    every: int  # optimiser steps between saves (each epoch end saves too)
    commit: str | None = None  # the code state that trains now (records.code_state: '+dirty', 'unknown')
    strict: bool = False  # a study's: another commit's checkpoint is not resumed

    @classmethod
    def for_run(cls, target: Path, every: int, study_commit: str | None = None) -> Checkpoints:
        """The checkpoints of the run whose model goes to ``target`` (its final cache folder); a study
        run (``study_commit``) resumes only checkpoints of its own commit."""
        key = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:12]
        commit = study_commit if study_commit is not None else code_state(*git_state(REPO_ROOT))
        return cls(cache_dir() / "checkpoints" / f"{target.name}-{key}", every, commit, study_commit is not None)

    def stage(self, index: int) -> StageCheckpoint:
        return StageCheckpoint(self.root / f"stage{index}", self.every, self.commit, self.strict)

    def clear(self) -> None:
        if is_main():
            shutil.rmtree(self.root, ignore_errors=True)
        barrier()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class StageCheckpoint:
    folder: Path
    every: int
    commit: str | None = None
    strict: bool = False

    def latest(self) -> dict | None:
        """{"tag": ..., "done": bool, "step": int, "commit": ...} of the newest complete checkpoint to
        resume, or None (none, or another commit's under ``strict``)."""
        path = self.folder / LATEST
        if not path.is_file():
            return None
        latest = json.loads(path.read_text())
        was = latest["commit"] if "commit" in latest else None  # absent: written before commits were kept
        if was == self.commit:
            return latest
        if is_main() and self.folder not in _NOTED:
            _NOTED.add(self.folder)
            print(f"note: the checkpoint in {self.folder} was written by commit {short_state(was)}, and this "
                  f"{'study' if self.strict else 'run'} runs {short_state(self.commit)}: " +
                  ("training the stage from the start" if self.strict else "resuming it anyway"), flush=True)
        return None if self.strict else latest

    def save(self, engine, tag: str, state: dict, done: bool) -> None:
        """A checkpoint of ``engine`` with ``state`` (the loop's position), then the pointer to it."""
        rng = rng_state()
        engine.save_checkpoint(str(self.folder), tag=tag, client_state={"loop": state, "rng": rng},
                               save_latest=False)
        set_rng_state(rng)  # saving must not move the RNG: a run that saves trains as one that does not
        barrier()
        if is_main():
            tmp = self.folder / (LATEST + ".tmp")
            tmp.write_text(json.dumps({"tag": tag, "done": done, "step": state["step"], "commit": self.commit}) + "\n")
            tmp.rename(self.folder / LATEST)
            for old in self.folder.iterdir():  # earlier checkpoints of this stage are superseded
                if old.is_dir() and old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
        barrier()

    def load(self, engine, tag: str, weights_only: bool) -> tuple[dict, dict]:
        """Restore ``engine`` (all of it, or just the weights of a finished stage); returns the loop's
        saved position and the RNG states to set (the loop sets them: see ``StageLoop.run``)."""
        _, client = engine.load_checkpoint(str(self.folder), tag=tag, load_optimizer_states=not weights_only,
                                           load_lr_scheduler_states=not weights_only)
        return client["loop"], client["rng"]
