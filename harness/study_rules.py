"""The comparability rules of a study, applied to its records before any figure is computed.

A record that breaks one is left out of every figure, and its cell says why (:class:`Exclusion`):

- **one recipe**: a student record's resolved recipe is the cell's (same hash), for a seed of the study;
  only such records (the study's own) vote in the rules below;
- **one commit**: every record (students, teachers, assistant stages) comes from the commit most of
  the study's own records come from, on a clean tree (and in a git checkout) unless the table is built
  with ``allow_dirty``;
- **one software stack**: every record was trained under the torch, transformers and DeepSpeed
  versions most of the study's own records were (``records.STACK``): another version computes other
  numbers from the same commit, and a teacher trained again under it is another instance;
- **one dataset** per task: every record read the task files most of the task's records read
  (``data``: a hash of the train and dev files), so a full MNLI never sits beside the 10k sample;
- **one teacher instance** per (card, task, how it was fine-tuned): the weights a student read
  (``teachers[].instance``), directly or through an assistant stage, are those of a teacher record of
  the study; where students read several instances, the one most of them read is the study's.  An
  assistant stage is held to the same rules as a student (its commit, its teacher's instance);
- **one budget per cell**: every seed of a cell trained on the same examples for the same epochs in
  every phase (a progressive phase's blocks summed, an assistant's training included).

A vote that ties chooses nothing: the records it splits are all left out, and say so.
"""
from __future__ import annotations

from collections import Counter

from harness.records import Stack, stack_label
from harness.run_record import RunRecord
from harness.study import StudyPlan
from harness.study_records import Rec, budget, reads_teacher, teacher_key
from harness.study_table import Exclusion
from harness.tasks import get_task


class Rules:
    """The study's records, split into kept and excluded (with reasons).

    Only the study's own student records vote on its commit, data and teacher instances: those of a
    cell, a seed and a recipe of the study (strays, dropped seeds and stale recipes get no say).  A tie
    in a vote chooses nothing: the records it splits are all left out, and say so."""

    def __init__(self, sp: StudyPlan, records: list[Rec], allow_dirty: bool):
        self.sp, self.allow_dirty = sp, allow_dirty
        self.excluded: dict[str, Exclusion] = {}
        self.teachers: dict[tuple, Rec] = {}  # the study's instance of each teacher key
        self.stages: dict[str, Rec] = {}  # instance -> kept assistant stage record
        self.cells: dict[tuple[str, str], list[Rec]] = {}  # (row, task) -> kept student records
        self.stray: list[str] = []  # records that belong to no cell
        self._by_name = {c.plan.name: c for c in sp.cells}
        own, others = self._own(sorted(records, key=lambda r: r.folder))
        # without allow_dirty a dirty record is never kept, so it gets no say in which commit is kept
        clean = [r for r in own if allow_dirty or (r.commit is not None and not r.changed)]
        voters = clean or own or others
        self.commit, self.commit_tie = _vote([r.commit for r in voters])
        self.stack, self.stack_tie = _vote([r.stack for r in voters])
        self.data = {t: _vote([r.record.data for r in voters if r.record.task == t] or
                              [r.record.data for r in others if r.record.task == t])  # a task no student has
                     for t in {r.record.task for r in own + others}}
        self._models = {r.record.instance: r for r in others if r.record.instance}  # teachers and stages
        own = [r for r in own if self._code_ok(r)]
        others = [r for r in others if self._code_ok(r)]
        self._all_stages = {r.record.instance: r for r in others if r.record.kind == "stage" and r.record.instance}
        self._teacher_recs = [r for r in others if r.record.kind == "teacher"]
        self._pick_teachers(own)
        for r in self._all_stages.values():
            self._stage_ok(r.record.instance)
        for r in own:
            reason = self._reads_problem(r.record)
            if reason:
                self._leave_out(r, reason)
            else:
                cell = self._by_name[r.record.name]
                self.cells.setdefault((cell.row, cell.task), []).append(r)
        for key, recs in self.cells.items():
            self.cells[key] = self._one_budget(recs)

    def _leave_out(self, r: Rec, reason: str) -> None:
        self.excluded[r.folder] = Exclusion(r.folder, r.record.seed, reason)

    def _own(self, records: list[Rec]) -> tuple[list[Rec], list[Rec]]:
        """(the study's own student records, the teacher and stage records); the rest left out."""
        own, others = [], []
        for r in records:
            m = r.record
            if m.kind != "student":
                others.append(r)
            elif m.name not in self._by_name:
                self.stray.append(r.folder)
            elif m.seed not in self.sp.study.seeds:
                self._leave_out(r, f"seed {m.seed} is not one of the study's ({self.sp.study.seeds})")
            elif m.recipe_hash != self._by_name[m.name].plan.hash(m.seed):
                self._leave_out(r, "its resolved recipe differs from the study's cell (the recipe or the study "
                                   "changed since)")
            else:
                own.append(r)
        return own, others

    def _code_ok(self, r: Rec) -> bool:
        data, data_tie = self.data[r.record.task]
        reason = None
        if self.commit_tie:
            reason = f"the study's records split evenly between commits {_listed(self.commit_tie)}: none is the study's"
        elif r.commit != self.commit:
            reason = f"from commit {str(r.commit)[:10]}; the study's records come from {str(self.commit)[:10]}"
        elif self.stack_tie:
            stacks = " and ".join(_stack(s) for s in self.stack_tie)
            reason = f"the study's records split evenly between {stacks}: none is the study's"
        elif r.stack != self.stack:
            reason = f"trained under {_stack(r.stack)}; the study's records under {_stack(self.stack)}"
        elif data_tie:
            reason = (f"the study's records split evenly between {get_task(r.record.task).display} data "
                      f"{_listed(data_tie)}: none is the study's")
        elif r.record.data != data:
            reason = (f"it read other {get_task(r.record.task).display} data ({r.record.data}); the study's records "
                      f"read {data}")
        elif (r.changed or r.commit is None) and not self.allow_dirty:
            reason = (f"run on a dirty tree ({', '.join(r.changed[:3])}{' ...' * (len(r.changed) > 3)})" if r.changed
                      else "run outside a git checkout (its code is unknown, as a dirty tree's is)")
        if reason:
            self._leave_out(r, reason)
        return reason is None

    def card_reads(self, m: RunRecord, depth: int = 0) -> list[tuple[str, str | None]]:
        """(card, instance) of every fine-tuned teacher a record read: directly, or through the kept
        assistant stages it read (a chain's student reads its assistant's teacher too)."""
        out = []
        for e in m.teachers:
            if e.card is not None:
                out.append((e.card, e.instance))
            elif e.instance in self._all_stages and depth < 8:  # 8: far deeper than any chain; no cycles
                out += self.card_reads(self._all_stages[e.instance].record, depth + 1)
        return out

    def _pick_teachers(self, students: list[Rec]) -> None:
        """For each teacher key, the instance most students read, directly or through a stage."""
        reads = Counter(i for s in students if reads_teacher(s.record) for _, i in self.card_reads(s.record))
        by_key: dict[tuple, list[Rec]] = {}
        for t in self._teacher_recs:
            by_key.setdefault(teacher_key(t.record), []).append(t)
        for key, recs in by_key.items():
            recs.sort(key=lambda t: (-reads[t.record.instance], t.folder))
            top = {t.record.instance for t in recs if reads[t.record.instance] == reads[recs[0].record.instance]}
            if len(top) > 1:  # as many reads each (none, in a study of no-KD rows): no instance is the study's
                shown = _listed([f"{i} (read by {reads[i]})" for i in sorted(top)])
                for t in recs:
                    self._leave_out(t, f"the study's students split evenly between instances {shown} of this "
                                       "teacher: none is the study's")
                continue
            self.teachers[key] = recs[0]
            for t in recs[1:]:
                same = t.record.instance == recs[0].record.instance
                self._leave_out(t, f"another record of this instance ({recs[0].folder}) is kept: the same weights, "
                                   "recorded twice" if same else f"another instance of this teacher ({recs[0].folder}) "
                                   "is the study's: the one most of its students read")

    def _stage_ok(self, instance: str, depth: int = 0) -> bool:
        """Whether an assistant stage is kept: its own reads follow the rules a student's do."""
        if instance in self.stages:
            return True
        r = self._all_stages.get(instance)
        if r is None or r.folder in self.excluded:
            return False
        reason = self._reads_problem(r.record, depth + 1)
        if reason:
            self._leave_out(r, reason)
            return False
        self.stages[instance] = r
        return True

    def _reads_problem(self, m: RunRecord, depth: int = 0) -> str | None:
        """Why what a record read is not the study's: a teacher instance or an assistant stage."""
        if not reads_teacher(m):
            return None
        chosen = {t.record.instance for t in self.teachers.values()}
        for e in m.teachers:
            if e.instance is None:
                return "it names no teacher instance (recorded before instances were)"
            if e.card is not None and e.instance not in chosen:
                return f"it read {e.card} instance {e.instance}, and {self._why(e.instance)}"
            if e.stage is not None and not (depth < 8 and self._stage_ok(e.instance, depth)):
                return f"its assistant stage {e.stage} (instance {e.instance}) is left out: {self._why(e.instance)}"
        return None

    def _why(self, instance: str) -> str:
        """Why the teacher or stage record of an instance is not the study's."""
        r = self._models.get(instance)
        if r is None:
            return "no record of that instance is in the study"
        return f"its record ({r.folder}) is left out: {self.excluded[r.folder].reason}" if r.folder in self.excluded \
            else "its record is not the study's instance"

    def budget(self, r: Rec) -> str:
        """The record's budget (:func:`budget`), its assistants' training first: a chain's compute too."""
        assist = [f"assistant {self.stages[e.instance].record.model} ({self.budget(self.stages[e.instance])})"
                  for e in r.record.teachers if e.stage is not None and e.instance in self.stages]
        return "; ".join([*assist, budget(r.record, r.corpus_phases)])

    def _one_budget(self, recs: list[Rec]) -> list[Rec]:
        """The cell's seeds that share its budget: the one most of them share (none on a tie)."""
        main, tie = _vote([self.budget(r) for r in recs])
        for r in recs:
            if main is None:
                self._leave_out(r, f"its cell's seeds split evenly between budgets {_listed(tie)}: none is the cell's")
            elif self.budget(r) != main:
                self._leave_out(r, f"its budget ({self.budget(r)}) differs from its cell's ({main})")
        return sorted((r for r in recs if self.budget(r) == main), key=lambda r: r.record.seed)

    def teacher_for(self, m: RunRecord) -> Rec | None:
        """The study's record of the strongest card teacher a student read on its task (fine-tuned alone,
        or co-finetuned with the others it lists; through an assistant too), for retention; None when
        the study has none."""
        found = [t for card, instance in self.card_reads(m) for key, t in self.teachers.items()
                 # a no-KD record read no teacher: its reference is the card fine-tuned alone
                 if key[0] == card and key[1] == m.task
                 and (t.record.instance == instance if instance is not None else key[2] == ())]
        return max(found, key=lambda t: t.record.score, default=None)

    def stack_label(self) -> str | None:
        """The study's package versions as one label (None: tied, or none recorded)."""
        return stack_label(self.stack) if self.stack is not None else None

    def kept(self) -> list[Rec]:
        """Every record a figure of the table reads: the cells' students, their teachers and stages."""
        return [*(r for recs in self.cells.values() for r in recs), *self.teachers.values(), *self.stages.values()]


def _vote(values: list) -> tuple:
    """(the most common value, ()) or, when several share the top count, (None, the tied values);
    (None, ()) for no values."""
    counts = Counter(values).most_common()
    if not counts:
        return None, ()
    top = [v for v, n in counts if n == counts[0][1]]
    return (top[0], ()) if len(top) == 1 else (None, tuple(top))


def _stack(stack: Stack | None) -> str:
    return stack_label(stack) if stack is not None else "unrecorded package versions"


def _listed(values) -> str:
    return ", ".join(str(v)[:16] for v in values)
