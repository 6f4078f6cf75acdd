"""A study's records as its rules (:mod:`harness.study_rules`) read them: each with the code state it
was written at, what it read, and what its training cost (its budget)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.losses import TERMS
from harness.records import Stack, env_changed, load_records, stack_of, stored_recipe
from harness.run_record import RunRecord
from harness.tasks import get_task


@dataclass(frozen=True)
class Rec:
    folder: str  # relative to the study's folder
    record: RunRecord
    commit: str | None
    changed: tuple[str, ...]  # tracked files that differed from the commit (a dirty tree)
    corpus_phases: frozenset[str]  # the phases that read a corpus, not the task (see corpus_phases)
    stack: Stack | None = None  # its torch, transformers, DeepSpeed versions (None: an env.json naming none)


def read_study_records(folder: Path) -> list[Rec]:
    out = []
    if not (folder / "runs").is_dir():
        return out
    for rel, m in load_records(folder):
        env = json.loads((folder / rel / "env.json").read_text())
        stack = stack_of(env["packages"]) if "packages" in env else None
        out.append(Rec(str(rel), m, env["git_commit"], env_changed(env), corpus_phases(stored_recipe(folder / rel)),
                       stack))
    return out


def corpus_phases(recipe: dict | None) -> frozenset[str]:
    """The names of a resolved recipe's phases that train on a corpus (general text), not on the task's
    training set: their example counts are a corpus's size, neither the task's nor a cap on it.  The
    stats a record keeps per phase do not say so; the recipe it was trained from does."""
    # a teacher's fine-tuning recipe has no phases key, a one-objective student's has it null; a folder
    # without recipe.yaml (None) is read as having no corpus phase
    phases = recipe["phases"] if recipe is not None and "phases" in recipe else None
    return frozenset(ph["name"] for ph in phases or () if ph["corpus"] is not None)


def reads_teacher(m: RunRecord) -> bool:
    return any(TERMS.get(t).needs_teacher for t in m.terms)


def teacher_key(m: RunRecord) -> tuple[str, str, tuple[str, ...]]:
    """What a teacher is, apart from its weights: card, task, and the cards it was co-finetuned with."""
    return m.model, m.task, tuple(m.cofinetuned_with or ())


def capped(m: RunRecord, corpus: frozenset[str]) -> bool:
    """Whether a phase that trains on the task saw fewer examples than GLUE's training set holds (the
    phases named in ``corpus`` read general text: its size is no cap)."""
    return any(s.phase not in corpus and s.train_examples < get_task(m.task).train_size
               for s in (m.train.phases or [m.train]))


def budget(m: RunRecord, corpus: frozenset[str]) -> str:
    """Every phase's examples and epochs, e.g. 'progressive full ex x 3 ep over 6 blocks; final full ex
    x 3 ep'.  A progressive phase's epochs are its blocks' summed: blocks that share the phase's epochs
    along one batch stream differ by an epoch's short last batch, and which block gets it is the seed's
    draw, so one block's figure (0.499 or 0.501) would tell seeds of one budget apart."""
    stages = m.train.phases or [m.train]
    by_phase: dict[str, list] = {}
    for s in stages:
        by_phase.setdefault(s.phase or "task", []).append(s)
    parts = []
    for name, ss in by_phase.items():
        cap = ss[0].train_examples
        full = name not in corpus and cap >= get_task(m.task).train_size
        part = f"{name} {'full' if full else _k(cap)} ex x {round(sum(s.epochs for s in ss), 2):g} ep"
        parts.append(part + (f" over {len(ss)} blocks" if len(ss) > 1 else ""))
    return "; ".join(parts)


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)
