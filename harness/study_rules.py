"""The comparability rules of a study, applied to its records before any figure is computed.

A record that breaks one is left out of every figure, and its cell says why (:class:`Exclusion`):

- **one commit**: every record (students, teachers, assistant stages) comes from the commit most of
  the study's records come from, on a clean tree unless the table is built with ``allow_dirty``;
- **one dataset** per task: every record read the task files most of the task's records read
  (``data``: a hash of the train and dev files), so a full MNLI never sits beside the 10k sample;
- **one teacher instance** per (card, task, how it was fine-tuned): the weights a student read
  (``teachers[].instance``) are those of a teacher record of the study; where students read several
  instances, the one most of them read is the study's;
- **one recipe**: a student record's resolved recipe is the cell's (same hash), for a seed of the study;
- **one budget per cell**: every seed of a cell trained on the same examples for the same epochs in
  every phase (a progressive phase counts once per block).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness.losses import TERMS
from harness.records import load_records
from harness.run_record import RunRecord
from harness.study import StudyPlan
from harness.study_table import Exclusion
from harness.tasks import get_task


@dataclass(frozen=True)
class Rec:
    folder: str  # relative to the study's folder
    record: RunRecord
    commit: str | None
    changed: tuple[str, ...]  # tracked files that differed from the commit (a dirty tree)


def read_study_records(folder: Path) -> list[Rec]:
    out = []
    if not (folder / "runs").is_dir():
        return out
    for rel, m in load_records(folder):
        env = json.loads((folder / rel / "env.json").read_text())
        out.append(Rec(str(rel), m, env["git_commit"], tuple(env["git_changed"])))
    return out


def reads_teacher(m: RunRecord) -> bool:
    return any(TERMS.get(t).needs_teacher for t in m.terms)


def teacher_key(m: RunRecord) -> tuple[str, str, tuple[str, ...]]:
    """What a teacher is, apart from its weights: card, task, and the cards it was co-finetuned with."""
    return m.model, m.task, tuple(m.cofinetuned_with or ())


def budget(m: RunRecord) -> str:
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
        full = name != "general" and cap >= get_task(m.task).train_size
        part = f"{name} {'full' if full else _k(cap)} ex x {round(sum(s.epochs for s in ss), 2):g} ep"
        parts.append(part + (f" over {len(ss)} blocks" if len(ss) > 1 else ""))
    return "; ".join(parts)


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


class Rules:
    """The study's records, split into kept and excluded (with reasons)."""

    def __init__(self, sp: StudyPlan, records: list[Rec], allow_dirty: bool):
        self.sp, self.allow_dirty = sp, allow_dirty
        # the commit and task data most of the study's own student records have (strays get no vote)
        names = {c.plan.name for c in sp.cells}
        voters = [r for r in records if r.record.kind == "student" and r.record.name in names] or records
        self.commit = _majority([r.commit for r in voters])
        self.data = {t: _majority([r.record.data for r in voters if r.record.task == t] or
                                  [r.record.data for r in records if r.record.task == t])
                     for t in {r.record.task for r in records}}
        self.excluded: dict[str, Exclusion] = {}
        self.teachers: dict[tuple, Rec] = {}  # the study's instance of each teacher key
        self.stages: dict[str, Rec] = {}  # instance -> assistant stage record
        self.cells: dict[tuple[str, str], list[Rec]] = {}  # (row, task) -> kept student records
        self.stray: list[str] = []  # records that belong to no cell
        self._apply(records)

    def _leave_out(self, r: Rec, reason: str) -> None:
        self.excluded[r.folder] = Exclusion(r.folder, r.record.seed, reason)

    def _code_ok(self, r: Rec) -> bool:
        if r.commit != self.commit:
            self._leave_out(r, f"from commit {str(r.commit)[:10]}; the study's records come from {str(self.commit)[:10]}")
            return False
        if r.record.data != self.data[r.record.task]:
            self._leave_out(r, f"it read other {get_task(r.record.task).display} data ({r.record.data}); the "
                               f"study's records read {self.data[r.record.task]}")
            return False
        if r.changed and not self.allow_dirty:
            self._leave_out(r, f"run on a dirty tree ({', '.join(r.changed[:3])}{' ...' * (len(r.changed) > 3)})")
            return False
        return True

    def _apply(self, records: list[Rec]) -> None:
        by_name = {c.plan.name: c for c in self.sp.cells}
        students = []
        for r in records:
            if not self._code_ok(r):
                continue
            kind = r.record.kind
            if kind == "stage" and r.record.instance is not None:
                self.stages[r.record.instance] = r
            elif kind == "student":
                if r.record.name not in by_name:
                    self.stray.append(r.folder)
                else:
                    students.append(r)
        self._pick_teachers([r for r in records if r.record.kind == "teacher" and r.folder not in self.excluded],
                            students)
        for r in students:
            cell = by_name[r.record.name]
            reason = self._student_problem(r, cell.plan)
            if reason:
                self._leave_out(r, reason)
            else:
                self.cells.setdefault((cell.row, cell.task), []).append(r)
        for key, recs in self.cells.items():
            self.cells[key] = self._one_budget(recs)

    def _pick_teachers(self, teachers: list[Rec], students: list[Rec]) -> None:
        """For each teacher key, the instance most students read (ties: the first record)."""
        by_instance = {t.record.instance: t for t in teachers if t.record.instance is not None}
        reads = Counter(e.instance for s in students if reads_teacher(s.record)
                        for e in s.record.teachers if e.card is not None and e.instance in by_instance)
        for t in sorted(teachers, key=lambda t: (-reads[t.record.instance], t.folder)):
            key = teacher_key(t.record)
            if key not in self.teachers:
                self.teachers[key] = t
            else:
                self._leave_out(t, f"another instance of this teacher ({self.teachers[key].folder}) is the one "
                                   "the study's students read")

    def _student_problem(self, r: Rec, plan) -> str | None:
        m = r.record
        if m.seed not in self.sp.study.seeds:
            return f"seed {m.seed} is not one of the study's ({self.sp.study.seeds})"
        if m.recipe_hash != plan.hash(m.seed):
            return "its resolved recipe differs from the study's cell (the recipe or the study changed since)"
        if not reads_teacher(m):
            return None
        chosen = {t.record.instance for t in self.teachers.values()}
        for e in m.teachers:
            if e.instance is None:
                return "it names no teacher instance (recorded before instances were)"
            if e.card is not None and e.instance not in chosen:
                return f"it read {e.card} instance {e.instance}, not the study's instance of that teacher"
            if e.stage is not None and e.instance not in self.stages:
                return f"its assistant stage {e.stage} (instance {e.instance}) has no record kept in the study"
        return None

    def _one_budget(self, recs: list[Rec]) -> list[Rec]:
        spent = Counter(budget(r.record) for r in recs)
        main = spent.most_common(1)[0][0]
        for r in recs:
            if budget(r.record) != main:
                self._leave_out(r, f"its budget ({budget(r.record)}) differs from its cell's ({main})")
        return sorted((r for r in recs if budget(r.record) == main), key=lambda r: r.record.seed)

    def teacher_for(self, m: RunRecord) -> Rec | None:
        """The study's record of the strongest card teacher a student read on its task (fine-tuned alone,
        or co-finetuned with the others it lists), for retention; None when the study has none."""
        found = [t for e in m.teachers if e.card is not None for key, t in self.teachers.items()
                 # a no-KD record read no teacher: its reference is the card fine-tuned alone
                 if key[0] == e.card and key[1] == m.task
                 and (t.record.instance == e.instance if e.instance is not None else key[2] == ())]
        return max(found, key=lambda t: t.record.score, default=None)


def _majority(values: list):
    """The most common value (ties: the first seen); None for no values."""
    return Counter(values).most_common(1)[0][0] if values else None
