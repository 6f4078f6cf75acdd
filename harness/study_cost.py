"""``harness study plan``: a study's matrix and what it will cost, without training anything.

Cost is examples x epochs per phase (a progressive phase once per student block; a corpus phase over
its capped text), divided by the examples/s this harness measured for the same model in earlier records
(same CPU thread count, task and precision preferred).  Teachers and assistant stages count only where
the cache lacks them; general phases that the tasks share count once per seed, and not at all when
cached.  A model never measured here has no estimate, and the plan says so rather than guess.
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from harness.data import corpus_cap
from harness.general_cache import GeneralEntry, general_count
from harness.models import student_tokenizer_path, tokenizer_id_at
from harness.paths import REPO_ROOT
from harness.recipe_students import student_label
from harness.records import code_state, git_state, load_records, record_commit, short_state, twin_record
from harness.resolved import RunPlan
from harness.run_record import RunRecord
from harness.study import StudyPlan
from harness.tasks import get_task
from harness.glue_files import data_id, train_rows
from harness.teacher_prep import joint_spec


@dataclass(frozen=True)
class Cost:
    examples: int  # examples trained on, over every phase and seed of the cell
    seconds: float | None  # None: some model of it was never measured here
    unmeasured: tuple[str, ...] = ()


class Speeds:
    """Training examples/s measured in earlier records, by (model, task, precision, CPU threads)."""

    def __init__(self, results_dir: Path, threads: int | None = None):
        import torch  # already loaded by the recipe checks

        # what this process would train with (torch's count by default): records at other counts come last
        self.threads = torch.get_num_threads() if threads is None else threads
        self.by = defaultdict(list)
        roots = [results_dir] + sorted(p for p in (results_dir / "studies").glob("*") if p.is_dir())
        for root in roots:
            if (root / "runs").is_dir():
                for folder, m in load_records(root):
                    self.by[m.model].append((m.task, _precision(m), _threads(root / folder), _rate(m)))

    def rate(self, model: str, task: str, precision: str) -> float | None:
        """The median of the best-matching measurements: same task and precision, else same precision,
        else any (a bf16 figure for an fp32 run is closer than none); at this process's thread count
        where any record has it, else at any."""
        found = self.by[model] if model in self.by else []
        for same_threads in (True, False):
            for keep in (lambda t, p: t == task and p == precision, lambda t, p: p == precision, lambda t, p: True):
                rates = [r for t, p, n, r in found if keep(t, p) and (n == self.threads or not same_threads)]
                if rates:
                    return statistics.median(rates)
        return None


def _threads(folder: Path) -> int | None:
    """The CPU threads a record trained with (env.json; None where it does not say)."""
    env = folder / "env.json"
    return json.loads(env.read_text()).get("cpu_threads") if env.is_file() else None  # older records lack it


def _precision(m: RunRecord) -> str:
    return m.train.precision


def _rate(m: RunRecord) -> float:
    # a general phase read from the cache was timed by the run that trained it
    stages = [s for s in m.train.phases or [m.train] if s.reused_from is None]
    return sum(s.examples_seen for s in stages) / max(sum(s.wall_time_s for s in stages), 1e-9)


class SharedGeneral:
    """General phases that one seed's cells share across tasks (:mod:`harness.general_cache`): a cached
    one costs nothing (in a study, ``study_commit``: one trained at that commit), and an uncached one
    counts once, for the first cell that needs it."""

    def __init__(self, glue_dir: Path | None, study_commit: str | None):
        self.glue_dir, self.study_commit, self.counted = glue_dir, study_commit, set()

    def skip(self, plan: RunPlan, seed: int) -> int:
        """How many leading phases of ``plan``'s ``seed`` need no training of their own."""
        if general_count(plan) == 0:
            return 0
        tok = tokenizer_id_at(student_tokenizer_path(plan.recipe.student, plan.student_card))
        entry = GeneralEntry.of(plan, seed, tok, self.glue_dir, self.study_commit)
        was = entry.trained_at(verify=False)
        if was is not None and self.study_commit in (None, was) or entry.folder in self.counted:
            return entry.count
        self.counted.add(entry.folder)
        return 0


def _phase_examples(plan: RunPlan, rows: int, skip: int = 0) -> int:
    """Examples one seed of a plan trains on, over its phases (but the first ``skip``)."""
    total = 0
    for _, phase in plan.recipe.named_phases()[skip:]:
        t = plan.recipe.phase_training(phase)
        if phase.corpus is not None and (phase.corpus.files or phase.corpus.glue):
            n = corpus_cap(phase.corpus, t) or rows  # an uncapped text's size is unknown: the task's, a lower bound
        else:
            n = min(t.max_train_examples or rows, rows)
        blocks = plan.student_shape.layers if phase.progressive is not None and plan.student_shape else 1
        if phase.progressive is not None:
            t = phase.progressive.block_training(t, blocks)
        seen = t.max_steps * t.batch_size if t.max_steps else n * t.epochs
        total += int(seen * blocks)
    return total


def cell_cost(plan: RunPlan, seeds: list[int], speeds: Speeds, glue_dir: Path | None,
              general: SharedGeneral | None = None) -> Cost:
    """What training one cell (every seed, and any teacher or stage not cached) takes; ``general``
    counts general phases shared with other cells once (default: this cell alone)."""
    general = general or SharedGeneral(glue_dir, None)
    task = plan.task
    rows = train_rows(task, glue_dir)
    examples, seconds, unmeasured = 0, 0.0, []

    def add(model: str, n: int) -> None:
        nonlocal examples, seconds
        examples += n
        rate = speeds.rate(model, task.name, plan.precision)
        if rate is None:
            unmeasured.append(model)
        else:
            seconds += n / rate

    label = student_label(plan.recipe.student, plan.student_card)
    for seed in seeds:
        add(label, _phase_examples(plan, rows, general.skip(plan, seed)))
        for t in plan.teachers:
            if t.stage is not None and not _cached_here(t.folder(seed)):
                add(student_label(t.stage.recipe.student, t.stage.student_card),
                    _phase_examples(t.stage, rows, general.skip(t.stage, seed)))
    # co-finetuned teachers live in folders of their own; each costs about what its own fine-tune does
    # (and train on the joint run's settings: the recipe's cofinetune caps, not each card's own)
    joint = joint_spec(plan, Path(".")) if plan.recipe.cofinetune is not None else None
    for i, t in enumerate(plan.teachers):  # fine-tuned once for every seed of the student
        folder = joint.entries[i][0] if joint is not None else t.folder(0)
        if t.card is not None and plan.reads_teachers() and not _cached_here(folder):
            ft = joint.settings if joint is not None else t.finetune
            add(t.card.name, int(min(ft.max_train_examples or rows, rows) * ft.epochs))
    return Cost(examples, None if unmeasured else seconds, tuple(dict.fromkeys(unmeasured)))


def _cached_here(folder: Path) -> bool:
    """Whether a study run would reuse a cached model: it is there, trained at this commit (and as clean)."""
    return _recorded(folder / "record", code_state(*git_state(REPO_ROOT)))


def _recorded(folder: Path, commit: str) -> bool:
    """A study's record that a run would keep: there, and of this code state (records.code_state)."""
    return (folder / "metrics.json").exists() and record_commit(folder) == commit


def _cell_status(left: list[int], twins: list[int], cost: Cost, stale: list[str]) -> str:
    """'done', the time the seeds left to train take, how many seeds another study's records give, and
    the code states of records a run would replace (another commit, or a dirty tree)."""
    parts = []
    if left:
        parts.append(_duration(cost.seconds) if cost.seconds is not None else "not measured")
    if twins:
        parts.append(f"{len(twins)} seed{'s' * (len(twins) > 1)} to copy from another study")
    for state in sorted(set(stale)):
        n = stale.count(state)
        parts.append(f"{n} seed{'s' * (n > 1)} recorded at {short_state(state)}, not this code state")
    return "; ".join(parts) or "done"


def _duration(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def report(sp: StudyPlan, results_dir: Path, glue_dir: Path | None) -> str:
    """The matrix (rows x tasks: seeds recorded / seeds asked, estimated time) and the total."""
    speeds, seeds = Speeds(results_dir), sp.study.seeds
    folder = sp.folder(results_dir)
    lines = [f"study {sp.name}: {len(sp.rows)} rows x {len(sp.study.tasks)} tasks x {len(seeds)} seeds "
             f"(baseline: {sp.study.baseline}); records in {folder}", ""]
    todo_s, todo_ex, missing, commit = 0.0, 0, set(), code_state(*git_state(REPO_ROOT))
    general = SharedGeneral(glue_dir, commit)
    all_stale: list[str] = []
    for cell in sp.cells:
        rel = {s: Path("runs") / cell.plan.name / f"seed{s}" for s in seeds}
        left = [s for s in seeds if not _recorded(folder / rel[s], commit)]
        done = len(seeds) - len(left)
        data = data_id(cell.plan.task, glue_dir)
        twins = [s for s in left if commit and twin_record(folder, rel[s], cell.plan.hash(s), commit, data)]
        left = [s for s in left if s not in twins]
        cost = cell_cost(cell.plan, left, speeds, glue_dir, general) if left else Cost(0, 0.0)
        stale = [record_commit(folder / rel[s]) for s in left if (folder / rel[s] / "metrics.json").exists()]
        all_stale += stale
        todo_ex += cost.examples
        todo_s += cost.seconds or 0.0
        missing |= set(cost.unmeasured)
        lines.append(f"  {cell.row:48s} {get_task(cell.task).display:7s} {done}/{len(seeds)} seeds  "
                     f"{cost.examples:>10,} ex  {_cell_status(left, twins, cost, stale)}")
    lines += ["", f"left to train: {todo_ex:,} examples, about {_duration(todo_s)} at the examples/s measured "
                  f"in this harness's records (at {speeds.threads} CPU threads where any were)" + (f"; never measured here (not in the estimate): "
                                                  f"{', '.join(sorted(missing))}" if missing else "")]
    if all_stale:
        states = ", ".join(f"{short_state(s)}: {all_stale.count(s)}" for s in sorted(set(all_stale)))
        same_commit = {s.partition("+")[0] for s in all_stale} == {commit.partition("+")[0]}
        lines.append(f"recorded at another code state ({states} seeds) than this checkout's ({short_state(commit)}): "
                     + ("it has uncommitted changes, which `study run` refuses (with --allow-dirty it trains "
                        "those seeds again)" if same_commit else
                        "a run here trains them again; to go on with a campaign, run it from a checkout of its "
                        "commit (git worktree)"))
    return "\n".join(lines)
