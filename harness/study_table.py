"""What a study's table holds, once every record has been checked and every statistic computed.

:mod:`harness.study_build` builds a :class:`StudyTable` from a study's records; the renderers
(:mod:`harness.study_render`) write it as Markdown, CSV, LaTeX and a Pareto plot and compute nothing.
Scores are fractions (0.853), as in the records; renderers scale them to percentages.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

ALPHA = 0.05  # the significance level of every claim a study's table makes
T_SEEDS, MIXED = "t", "boot+t"  # Diff.method: t over five or more seeds; bootstrap over examples + t over seeds


@dataclass(frozen=True)
class Flag:
    """A collapsed seed: kept in the cell's mean and shown, never counted for "best" or significance."""

    seed: int
    kind: str  # "one class" (classification) or "flat" (regression)
    share: float  # one class: the majority class's share of predictions; flat: std(pred) / std(labels)


@dataclass(frozen=True)
class Exclusion:
    """A record that breaks a comparability rule: left out of every figure, and said why."""

    record: str  # its folder, relative to the study's folder
    seed: int
    reason: str


@dataclass(frozen=True)
class Diff:
    """A row against the study's baseline row on one task, paired by seed (score units: fractions)."""

    n_pairs: int
    mean: float  # row minus baseline
    low: float  # 95 % interval
    high: float
    p: float  # two-sided, before correction
    method: str  # MIXED (dev examples bootstrapped, 2-4 seeds) or T_SEEDS (over seeds, n >= 5)
    p_holm: float | None = None  # Holm-corrected across the comparisons of its family (see study_build)
    n_boot: int | None = None  # the bootstrap's replicates of the dev examples (method MIXED)


@dataclass(frozen=True)
class Cell:
    """One row on one task: the seeds whose records passed every rule."""

    seeds: tuple[int, ...]
    scores: tuple[float, ...]  # the task's headline per seed, in ``seeds`` order
    retention: float | None = None  # mean student / mean teacher score on the task, in %
    flags: tuple[Flag, ...] = ()
    excluded: tuple[Exclusion, ...] = ()
    vs_baseline: Diff | None = None
    mark: str | None = None  # "best": beats the runner-up significantly; "tie": best, but not significantly
    mark_test: Diff | None = None  # the best cell's test against the runner-up (Holm across the tasks)
    mark_vs: str | None = None  # the runner-up's row
    budget: str = ""  # what every phase of this cell's runs cost, e.g. "task 4.0k ex x 2 ep"
    capped: bool = False  # a task phase saw fewer examples than GLUE's training set holds

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else None

    @property
    def clean_scores(self) -> tuple[float, ...]:
        """The scores of the seeds not flagged as collapsed: what "best" and the tests compare."""
        flagged = {f.seed for f in self.flags}
        return tuple(score for seed, score in zip(self.seeds, self.scores) if seed not in flagged)

    @property
    def clean_mean(self) -> float | None:
        return statistics.fmean(self.clean_scores) if self.clean_scores else None


@dataclass(frozen=True)
class Row:
    key: str  # e.g. "kd/minilm3L_from_minilm", "teacher: all-MiniLM-L6-v2", "kd/... [temperature=4]"
    kind: str  # "teacher" or "student"
    model: str  # the architecture's label, e.g. "3L-minilm"
    cells: dict[str, Cell]  # task name -> cell; a task the row lacks is absent
    params: int | None = None
    latency_ms: float | None = None  # CPU fp32, batch 1, length 128: median of the study's speed measurement
    latency_suspect: bool = False  # measured slower than a deeper twin even after re-measurement
    budget: str = ""  # the row's budget: every phase, with its cap and epochs (cells that differ named)
    baseline: bool = False

    @property
    def avg(self) -> float | None:
        """Mean over the row's cells of their means (a renderer says "k of n" when the row lacks a task)."""
        means = [c.mean for c in self.cells.values() if c.mean is not None]
        return statistics.fmean(means) if means else None


@dataclass(frozen=True)
class StudyTable:
    name: str
    description: str
    tasks: tuple[str, ...]  # column order
    rows: tuple[Row, ...]
    commit: str | None
    dirty: bool  # run with --allow-dirty: every cell says so
    notes: tuple[str, ...] = field(default=())  # footnotes: caps, exclusions, what a mark means
    rendered_at: str | None = None  # the code state (records.code_state) of the harness that built the table
    seeds: int = 0  # the seeds the study gives every cell
    stack: str | None = None  # records.stack_label of the records' package versions (None: none recorded)

    def summary(self) -> str:
        """One line on whether the table is complete and clean: seeds kept, cells short of the study's
        seeds, collapsed seeds, excluded records, the commit."""
        students = [c for r in self.rows if r.kind == "student" for c in r.cells.values()]
        kept = sum(c.n for c in students)
        collapsed = sum(len(c.flags) for c in students)
        short = sum(c.n < self.seeds for c in students)
        excluded = sum(len(c.excluded) for r in self.rows for c in r.cells.values())
        teachers = sum(len(r.cells) for r in self.rows if r.kind == "teacher")
        share = f" ({100 * collapsed / kept:.1f} %)" if kept else ""
        return (f"{kept} student seeds in {len(students)} cells, {short} of them short of the study's {self.seeds} "
                f"seeds; {collapsed} collapsed{share}; {excluded} records excluded; {teachers} teacher instances "
                f"(one per card and task); commit {self.commit or 'none'}{' with uncommitted changes' * self.dirty}")

    def row(self, key: str) -> Row:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(f"no row {key!r} in study {self.name}; rows: {', '.join(r.key for r in self.rows)}")
