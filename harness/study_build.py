"""A study's records, checked (:mod:`harness.study_rules`), turned into a :class:`StudyTable`.

Per cell: the kept seeds' scores (mean ± std, n), collapsed seeds flagged, retention against the
study's teacher instance.  Per row against the baseline row: the paired difference on each task over
the seeds clean in both, with a 95 % interval and a p-value (:mod:`harness.study_stats_core`),
Holm-corrected across the table.  Per task: the best student cell by the mean of its clean seeds is
marked "best" only when it beats the runner-up significantly (Holm across the tasks' tests), else both
are marked "tie".  Collapsed seeds take part in neither; one clean seed pair gets no p value.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np

from harness.archspeed_result import find_row, marks, model_speed
from harness.paths import REPO_ROOT
from harness.records import code_state, git_state, read_predictions, stack_label
from harness.study import StudyPlan
from harness.study_records import Rec, capped, read_study_records
from harness.study_rules import Rules
from harness.study_stats_core import collapse, holm_family, paired_comparison
from harness.study_table import ALPHA, Cell, Diff, Exclusion, Row, StudyTable
from harness.tasks import get_task

BOOT = 2000  # bootstrap replicates of the dev examples in a test of two to four seed pairs
Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def _splits(folder: Path, r: Rec) -> Splits:
    task = get_task(r.record.task)
    out = {}
    for split in task.dev_splits:
        preds, labels = read_predictions(folder / r.folder / "predictions" / f"{split}.tsv", task.is_regression)
        out[split] = (np.asarray(preds), np.asarray(labels))
    return out


class _Builder:
    def __init__(self, sp: StudyPlan, results_dir: Path, allow_dirty: bool, speed: dict | None):
        self.sp, self.folder = sp, sp.folder(results_dir)
        records = read_study_records(self.folder)
        self.records = {r.folder: r for r in records}
        self.rules = Rules(sp, records, allow_dirty)
        self.dirty = any(r.changed or r.commit is None for r in self.rules.kept())
        self.speed = speed
        self.preds: dict[str, Splits] = {}

    def splits(self, r: Rec) -> Splits:
        if r.folder not in self.preds:
            self.preds[r.folder] = _splits(self.folder, r)
        return self.preds[r.folder]

    def cell(self, recs: list[Rec], excluded: list[Exclusion]) -> Cell:
        flags = []
        for r in recs:
            flag = collapse(get_task(r.record.task), self.splits(r))
            if flag is not None:
                flags.append(dataclasses.replace(flag, seed=r.record.seed))
        teacher = self.rules.teacher_for(recs[0].record) if recs else None
        mean = float(np.mean([r.record.score for r in recs])) if recs else None
        retention = 100 * mean / teacher.record.score if teacher and mean is not None and teacher.record.score > 0 else None
        return Cell(tuple(r.record.seed for r in recs), tuple(r.record.score for r in recs), retention,
                    tuple(flags), tuple(excluded), budget=self.rules.budget(recs[0]) if recs else "",
                    capped=any(capped(r.record, r.corpus_phases) for r in recs))

    def clean(self, row: str, task: str) -> dict[int, Splits]:
        """A cell's seeds that may take part in a significance claim: kept and not collapsed."""
        recs = self.rules.cells.get((row, task), [])
        flagged = {f.seed for f in self.cells[(row, task)].flags} if (row, task) in self.cells else set()
        return {r.record.seed: self.splits(r) for r in recs if r.record.seed not in flagged}

    def build(self) -> StudyTable:
        sp, excluded_by_cell = self.sp, self._exclusions_by_cell()
        self.cells = {(c.row, c.task): self.cell(self.rules.cells.get((c.row, c.task), []),
                                                 excluded_by_cell.get((c.row, c.task), []))
                      for c in sp.cells}
        self._compare_with_baseline()
        self._mark_best()
        rows = [self._teacher_row(key, recs) for key, recs in self._teacher_rows().items()]
        for row in sp.rows:
            cells = {t: self.cells[(row, t)] for t in sp.study.tasks if (row, t) in self.cells}
            recs = [r for t in sp.study.tasks for r in self.rules.cells.get((row, t), [])]
            model = recs[0].record.model if recs else ""
            rows.append(Row(row, "student", model, cells, recs[0].record.params.total if recs else None,
                            budget=_row_budget(cells), baseline=row == sp.study.baseline, **self._latency(model)))
        return StudyTable(sp.name, sp.study.description, tuple(sp.study.tasks), tuple(rows), self.rules.commit,
                          self.dirty, tuple(self._notes()), rendered_at=code_state(*git_state(REPO_ROOT)),
                          seeds=len(sp.study.seeds), stack=self.rules.stack_label())

    def _exclusions_by_cell(self) -> dict[tuple[str, str], list[Exclusion]]:
        by_name = {c.plan.name: c for c in self.sp.cells}
        out: dict[tuple[str, str], list[Exclusion]] = {}
        for folder, ex in self.rules.excluded.items():
            m = self.records[folder].record
            if m.kind == "student" and m.name in by_name:
                c = by_name[m.name]
                out.setdefault((c.row, c.task), []).append(ex)
        return out

    def _test(self, row: str, other: str, task: str) -> Diff | None:
        """Row minus other row on a task, over the seeds clean in both (one pair: no interval, no p)."""
        return paired_comparison(get_task(task), self.clean(row, task), self.clean(other, task), n_boot=BOOT)

    def _family(self, pairs: list[tuple[str, str, str]]) -> list[Diff | None]:
        """The tests of (row, other row, task) pairs, Holm-corrected as one family."""
        return holm_family(self._test, pairs)

    def _compare_with_baseline(self) -> None:
        base = self.sp.study.baseline
        keys = [(row, task) for row, task in self.cells if row != base and (base, task) in self.cells]
        for (row, task), d in zip(keys, self._family([(row, base, task) for row, task in keys])):
            if d is not None:
                self._set(row, task, vs_baseline=d)

    def _mark_best(self) -> None:
        contests = []
        for task in self.sp.study.tasks:
            cells = [(self.cells[(row, task)].clean_mean, row) for row in self.sp.rows if (row, task) in self.cells]
            ranked = sorted(((mean, row) for mean, row in cells if mean is not None), reverse=True)
            if len(ranked) >= 2:
                contests.append((ranked[0][1], ranked[1][1], task))
        for (best, second, task), d in zip(contests, self._family(contests)):
            won = d is not None and d.mean > 0 and d.p_holm is not None and d.p_holm < ALPHA
            self._set(best, task, mark="best" if won else "tie", mark_test=d, mark_vs=second)
            if not won:
                self._set(second, task, mark="tie")

    def _set(self, row: str, task: str, **fields) -> None:
        self.cells[(row, task)] = dataclasses.replace(self.cells[(row, task)], **fields)

    def _teacher_rows(self) -> dict[tuple[str, tuple[str, ...]], list[Rec]]:
        out: dict = {}
        for (card, task, co), r in self.rules.teachers.items():
            out.setdefault((card, co), []).append(r)
        return out

    def _teacher_row(self, key: tuple[str, tuple[str, ...]], recs: list[Rec]) -> Row:
        card, co = key
        # a co-finetuned copy says its own seed too: its partners' names carry theirs
        name = f"teacher: {card}" + (f" (seed {recs[0].record.seed}, co-finetuned with {', '.join(co)})"
                                     if co else "")
        cells = {r.record.task: self.cell([r], []) for r in recs}  # a collapsed teacher is flagged too
        return Row(name, "teacher", card, cells, recs[0].record.params.total, budget=_row_budget(cells),
                   **self._latency(card))

    def _latency(self, model: str) -> dict:
        """CPU fp32, batch 1, the fixed length: the study's own measurement of the model's architecture,
        and whether it stayed slower than a deeper twin (Row fields)."""
        entry = None if self.speed is None else model_speed(self.speed, model)
        return {} if entry is None else {"latency_ms": find_row(entry)["median_ms"],
                                         "latency_suspect": any(model in self.speed["archs"][k]["names"]
                                                                for k in marks(self.speed))}

    def _notes(self) -> list[str]:
        notes = []
        if self.rules.commit_tie:
            notes.append(f"no commit is the study's: its own records split evenly between commits "
                         f"{', '.join(str(c) for c in self.rules.commit_tie)}, so every record is left out")
        if self.rules.stack_tie:
            notes.append(f"no package versions are the study's: its own records split evenly between "
                         f"{' and '.join(map(stack_label, self.rules.stack_tie))}, so every record is left out")
        if self.rules.stray:
            notes.append(f"{len(self.rules.stray)} records under the study's folder belong to no cell of it and are "
                         f"left out: {', '.join(self.rules.stray)}")
        other = [e for f, e in self.rules.excluded.items() if not any(e in c.excluded for c in self.cells.values())]
        notes += [f"left out: {e.record}: {e.reason}" for e in other]
        base = self.sp.study.baseline
        notes += [f"{get_task(task).display}: no Δ against the baseline, whose every seed collapsed"
                  for (row, task), c in self.cells.items() if row == base and c.scores and c.clean_mean is None]
        notes += [f"{get_task(task).display}, {row}: no Δ against the baseline: every seed collapsed"
                  for (row, task), c in self.cells.items() if row != base and c.scores and c.clean_mean is None]
        if self.speed is None:
            notes.append("latency: not measured yet (`python -m harness study speed STUDY`)")
        return notes


def _row_budget(cells: dict[str, Cell]) -> str:
    """The budget most of a row's cells share, with the tasks that differ named (e.g. a capped SST-2)."""
    spent = Counter(c.budget for c in cells.values() if c.budget)
    if not spent:
        return ""
    main = spent.most_common(1)[0][0]
    other = [f"{get_task(t).display}: {c.budget}" for t, c in cells.items() if c.budget and c.budget != main]
    return main + (f" ({'; '.join(other)})" if other else "")


def build_table(sp: StudyPlan, results_dir: Path, allow_dirty: bool = False) -> StudyTable:
    speed_file = sp.folder(results_dir) / "speed.json"
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else None
    return _Builder(sp, results_dir, allow_dirty, speed).build()
