"""Fine-tune into the cache, before the lanes start, every card teacher a study's committed teacher
record names, under the thread count that record was trained with (the campaign's first teachers were
trained by one 2-thread process, the rest in 1-thread lanes).

Why: CPU training is deterministic, so a teacher trained again at the record's commit, thread count and
torch is the very instance the study's students read; a lane (1 thread) training a 2-thread teacher
again would give other weights and split the study's teacher.  The harness since a87b658 sets the
record's thread count itself (harness.cached.kept_conditions); the campaign's commit, 86a30af, does not,
so results/campaign.sh runs this from its worktree first.  Uses only what that commit has.

    python results/campaign_teachers.py [--lane-threads N] RESULTS_DIR STUDY.yaml...   # from the worktree

With ``--lane-threads N``, teachers whose records say N threads are left to the lanes, which train them
as they were anyway (with two 1-thread lanes, the MPNet teachers go on in parallel instead of one by one
before the lanes start).

First of all it checks that this environment has the torch, transformers and DeepSpeed the studies'
records were trained under (a new machine's fresh venv gets the newest transformers): the harness since
dbc5634 refuses itself (harness.study_cmd.check_stack); the campaign's commit does not.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from importlib import metadata
from pathlib import Path

import torch

from harness import engine
from harness.options import Options
from harness.study import load_study
from harness.study_cmd import check_tree
from harness.tasks import resolve_glue_dir
from harness.teacher_prep import ensure_teacher


STACK = ("torch", "transformers", "deepspeed")  # harness.records.STACK at HEAD; the commit has none


def check_versions(results_dir: Path, names: set[str]) -> None:
    """Exit, naming the pip install, unless this environment has the studies' records' versions."""
    seen = Counter(tuple(json.loads(f.read_text())["packages"][p] for p in STACK)
                   for name in names for f in (results_dir / "studies" / name / "runs").rglob("env.json"))
    if not seen:
        return
    theirs = dict(zip(STACK, seen.most_common(1)[0][0]))
    pins = [f"{p}=={v.split('+')[0]}" for p, v in theirs.items() if v is not None and v != metadata.version(p)]
    if pins:
        raise SystemExit(f"the studies' records were trained under {theirs}; install those first: "
                         f"pip install {' '.join(pins)}")


def main(results_dir: Path, studies: list[str], lane_threads: int | None) -> None:
    check_versions(results_dir, {load_study(Path(s)).name for s in studies})
    engine.init_distributed()
    commit, default, done = check_tree(False), torch.get_num_threads(), set()
    for s in studies:
        sp = load_study(Path(s))
        opts = Options(results_dir=sp.folder(results_dir), glue_dir=resolve_glue_dir(None), study_commit=commit)
        for cell in sp.cells:
            if cell.plan.recipe.cofinetune is not None:  # co-finetuned in a lane, as their records were
                continue
            for t in cell.plan.teachers:
                env = t.record_dir(opts.results_dir, 0) / "env.json" if t.card is not None else None
                if env is None or not env.is_file() or (t.card.name, t.task) in done:
                    continue
                done.add((t.card.name, t.task))
                threads = json.loads(env.read_text())["cpu_threads"]
                if threads == lane_threads:
                    print(f"teacher {t.card.name} on {t.task}: {threads} thread(s), left to the lanes", flush=True)
                    continue
                print(f"teacher {t.card.name} on {t.task}: {threads} threads, as its record", flush=True)
                torch.set_num_threads(threads)
                ensure_teacher(t, opts)
                torch.set_num_threads(default)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lane-threads", type=int, default=None, help="leave teachers of this thread count to the lanes")
    ap.add_argument("results_dir", type=Path)
    ap.add_argument("studies", nargs="+")
    a = ap.parse_args()
    main(a.results_dir, a.studies, a.lane_threads)
