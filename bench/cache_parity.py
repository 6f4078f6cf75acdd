"""Does the teacher-output cache change what a recipe scores?  Same recipe, same seeds, cache on and off.

    GLUE_DIR=../shared/glue python bench/cache_parity.py recipes/glue/sst2/kd/3L_from_mpnet.yaml \\
        --seeds 42 43 44 --set training.max_train_examples=2000 --set training.max_length=64

For each seed the recipe runs twice through the real CLI (``python -m harness run --force``): once
with the cache (the teacher's outputs computed once, stored and read back every epoch) and once
with ``--no-teacher-cache`` (the teacher run on every batch, fp32 on CPU).  It prints each pair's dev
headline, their difference in points, the largest difference between their logged losses, and the
wall time of each; it exits 1 when a difference exceeds ``--tolerance`` points (default 0.5).

The runs' records go to ``--out`` (default ``results/bench/cache_parity``), outside ``results/runs``
so the GLUE tables do not pick them up.  Students are saved to a scratch cache
(``$KD_HARNESS_CACHE/bench/cache_parity``), so the user's trained students are left alone; teachers,
tokenized data and teacher outputs are shared with the user's cache through links (they are all
keyed by content, so sharing cannot mix them up).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from harness.paths import cache_dir

REPO = Path(__file__).resolve().parent.parent
SHARED = ("models", "teachers", "tokenized", "teacher_outputs", "stages")


def scratch_cache() -> Path:
    """A harness cache whose content-keyed folders are the user's, with its own ``students/``."""
    where = cache_dir() / "bench" / "cache_parity"
    where.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        (cache_dir() / name).mkdir(parents=True, exist_ok=True)
        link = where / name
        if not link.is_symlink():
            link.symlink_to(cache_dir() / name, target_is_directory=True)
    return where


def run(recipe: str, seed: int, cached: bool, out: Path, sets: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "harness", "run", recipe, "--force", "--no-tables", "--results-dir", str(out),
           "--set", f"training.seed={seed}"]
    for s in sets:
        cmd += ["--set", s]
    if not cached:
        cmd.append("--no-teacher-cache")
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    records = [json.loads(p.read_text()) for p in (out / "runs").rglob(f"seed{seed}/metrics.json")]
    students = [m for m in records if m["kind"] == "student"]
    if len(students) != 1:
        sys.exit(f"expected one student record for seed {seed} under {out}/runs, found {len(students)}")
    return students[0]


def loss_gap(a: dict, b: dict) -> tuple[float, float]:
    """(gap at the first logged step, largest gap over all logged steps) between two runs' losses."""
    la = {h["step"]: h["loss"] for h in a["train"]["loss_history"]}
    lb = {h["step"]: h["loss"] for h in b["train"]["loss_history"]}
    steps = sorted(set(la) & set(lb))
    gaps = [abs(la[s] - lb[s]) for s in steps]
    return gaps[0], max(gaps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="one recipe file (its own seeds are replaced by --seeds)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides, as for run")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "cache_parity")
    ap.add_argument("--tolerance", type=float, default=0.5, help="largest dev difference allowed, in points")
    args = ap.parse_args()
    out = args.out.resolve()
    env = dict(os.environ, KD_HARNESS_CACHE=str(scratch_cache()))
    rows = []
    for seed in args.seeds:
        on = run(args.recipe, seed, True, out / "cached", args.set, env)
        off = run(args.recipe, seed, False, out / "uncached", args.set, env)
        first, worst = loss_gap(on, off)
        rows.append((seed, 100 * on["score"], 100 * off["score"], first, worst,
                     on["train"]["wall_time_s"], off["train"]["wall_time_s"], on["train"]["teacher_cache"]["status"]))
    print(f"\n== {args.recipe}: dev headline x 100, teacher-output cache on vs off ==")
    print(f"{'seed':>5} {'cached':>8} {'uncached':>9} {'diff':>7} {'loss gap (1st log)':>19} {'loss gap (max)':>15} "
          f"{'train s (on/off)':>17}  cache")
    for seed, a, b, first, worst, ta, tb, status in rows:
        print(f"{seed:>5} {a:8.2f} {b:9.2f} {a - b:+7.2f} {first:19.2e} {worst:15.2e} {ta:8.0f}/{tb:<8.0f}  {status}")
    diffs = [a - b for _, a, b, *_ in rows]
    mean_on = sum(r[1] for r in rows) / len(rows)
    mean_off = sum(r[2] for r in rows) / len(rows)
    print(f"mean  {mean_on:8.2f} {mean_off:9.2f} {mean_on - mean_off:+7.2f}   largest |diff| {max(map(abs, diffs)):.2f} "
          f"points (tolerance {args.tolerance})")
    return int(max(map(abs, diffs)) > args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
