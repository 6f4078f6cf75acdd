"""Lanes on a CPU: one training process on every core, against one single-threaded process per core
trained together (what ``results/campaign.sh`` runs, and what README "Studies" suggests for a study).

Each round trains the same recipe both ways through the real CLI (``--force``, its own results folder
per process, a seed per lane so that no two processes share a checkpoint folder), in an order that
alternates by round: one process with ``OMP_NUM_THREADS`` = the cores, then as many processes as
cores with 1 thread each, started together.  A record's ``train.samples_per_s`` is its training
throughput (examples over the training loop's wall time: no start-up, tokenizing or evaluation); the
lanes' figure is the sum of theirs, whose training windows overlap (both start within a second and
train the same examples).  Writes ``results/bench/lanes.json``: every run, per round the ratio
lanes/one, and the median ratio.  Run it on an otherwise idle machine:

    GLUE_DIR=../shared/glue python bench/lanes.py                 # 3 rounds, 1,500 SST-2 examples each
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.archspeed import cpu_model  # noqa: E402
from harness.records import git_state, read_record  # noqa: E402

RECIPE = REPO / "recipes" / "glue" / "sst2" / "nokd" / "minilm3L_from_minilm.yaml"


def start(recipe: Path, examples: int, seed: int, threads: int, results: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "harness", "run", str(recipe), "--results-dir", str(results), "--no-tables",
           "--force", "--set", f"training.max_train_examples={examples}", "--set", f"training.seed={seed}",
           "--set", "training.epochs=1"]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def train_together(recipe: Path, examples: int, threads: int, lanes: int, folder: Path) -> list[float]:
    """``lanes`` processes of ``threads`` threads each, started together; each one's training examples/s."""
    procs = [start(recipe, examples, lane, threads, folder / f"lane{lane}", folder / f"lane{lane}.log")
             for lane in range(lanes)]
    for lane, p in enumerate(procs):
        if p.wait() != 0:
            sys.exit(f"lane {lane} failed: {(folder / f'lane{lane}.log').read_text()[-3000:]}")
    return [read_record(next((folder / f"lane{lane}" / "runs").rglob("metrics.json")).parent).train.samples_per_s
            for lane in range(lanes)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", type=Path, default=RECIPE)
    ap.add_argument("--examples", type=int, default=1500, help="training examples per run (1 epoch)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "lanes.json")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    rounds = []
    with tempfile.TemporaryDirectory(prefix="kd-lanes-") as tmp:
        for r in range(args.rounds):
            ways = [("one", cores, 1), ("lanes", 1, cores)]
            got = {}
            for name, threads, lanes in ways if r % 2 == 0 else ways[::-1]:
                folder = Path(tmp) / f"round{r}" / name
                folder.mkdir(parents=True)
                got[name] = train_together(args.recipe, args.examples, threads, lanes, folder)
                print(f"round {r + 1}: {name}: {lanes} x {threads} thread(s): {got[name]} ex/s", flush=True)
            rounds.append({"one_ex_per_s": got["one"][0], "lanes_ex_per_s": got["lanes"],
                           "ratio": round(sum(got["lanes"]) / got["one"][0], 3)})
    commit, dirty = git_state(REPO)
    out = {"what": "training examples/s: one process on every core against one 1-thread process per core together",
           "recipe": str(args.recipe.relative_to(REPO)), "examples": args.examples, "cores": cores,
           "cpu": cpu_model(), "platform": platform.platform(), "commit": commit, "dirty": dirty,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rounds": rounds,
           "median_ratio": statistics.median(r["ratio"] for r in rounds)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"lanes / one process: median {out['median_ratio']:.2f}x over {args.rounds} rounds; wrote {args.out}")


if __name__ == "__main__":
    main()
