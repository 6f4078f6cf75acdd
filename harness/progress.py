"""One overall line after each recipe of a ``harness run`` over many: recipes done and left, and how
long the rest will train at the examples/s measured so far.

What is left is counted in training examples (every phase and seed of each remaining recipe without a
record, and the teachers or assistant stages it would train first: :func:`harness.study_cost.cell_cost`).
The rate is the examples/s of the stages trained in this run; before any has trained (all skipped so
far), the rates of this harness's earlier records for the same models, where it has some.
"""
from __future__ import annotations

from pathlib import Path

from harness.resolved import RunPlan
from harness.study_cost import SharedGeneral, Speeds, cell_cost


def _duration(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


class Progress:
    def __init__(self, plans: list[RunPlan], results_dir: Path, glue_dir: Path | None, force: bool = False,
                 study_commit: str | None = None):
        self.plans, self.results_dir, self.glue_dir, self.force = plans, results_dir, glue_dir, force
        self.study_commit = study_commit  # a study's: cached general phases of other commits train again
        self.speeds = Speeds(results_dir)  # earlier records: the fallback rate
        self.examples, self.seconds, self.done = 0, 0.0, 0

    def left(self, plan: RunPlan) -> list[int]:
        """The seeds of ``plan`` that will train: those without a record yet (all with --force)."""
        out = self.results_dir / "runs" / plan.name
        return [s for s in plan.recipe.training.seeds
                if self.force or not (out / f"seed{s}" / "metrics.json").exists()]

    def update(self, trained: list[dict]) -> str:
        """Count one finished recipe (the training stats of what it trained) and say where the run is."""
        self.done += 1
        # a general phase read from the cache (reused_from) was trained by another run
        done_here = [s for s in trained if "reused_from" not in s]
        self.examples += sum(s["examples_seen"] for s in done_here)
        self.seconds += sum(s["wall_time_s"] for s in done_here)
        rest = self.plans[self.done:]
        line = f"progress: {self.done} of {len(self.plans)} recipes done, {len(rest)} left"
        if not rest:
            return line
        general = SharedGeneral(self.glue_dir, self.study_commit)  # counted once for all the rest
        costs = [cell_cost(p, seeds, self.speeds, self.glue_dir, general) for p in rest if (seeds := self.left(p))]
        todo = sum(c.examples for c in costs)
        if not todo:
            return line + "; every one left has its records (they will be skipped unless their model is missing)"
        if self.seconds > 0:
            rate = self.examples / self.seconds
            return line + (f"; {todo:,} training examples left, about {_duration(todo / rate)} at the "
                           f"{rate:.0f} examples/s measured so far")
        if all(c.seconds is not None for c in costs):
            return line + (f"; {todo:,} training examples left, about {_duration(sum(c.seconds for c in costs))} "
                           "at the examples/s of earlier records")
        return line + f"; {todo:,} training examples left (no rate measured yet)"
