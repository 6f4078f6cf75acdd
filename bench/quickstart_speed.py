"""The quickstart's student, trained by different versions of the harness back to back: examples/s and dev.

    GLUE_DIR=../shared/glue python bench/quickstart_speed.py --reps 3

Issue 24 asks whether ``precision: auto`` makes the quickstart's student train >= 1.3x faster than the
code of the day the issue was filed, at equal dev accuracy.  Each arm is one version of the code (a
``git worktree`` of a commit, or this checkout) with optional ``--set`` overrides, run through the
real CLI (``python -m harness run recipes/quickstart.yaml``) on the issue's budget: 4,000 SST-2
examples x 2 epochs, seed 0, the teacher-output cache on.  Every arm first runs once untimed (it
fine-tunes its teacher and builds its cache); then the arms take turns, ``--reps`` times, so that
the machine's load falls on all of them alike.  The student's examples/s is read from each run's
record (``train.samples_per_s``: the training loop only, cache built before it starts).

Writes ``results/bench/quickstart_speed.json``: every run, the median per arm, each arm's ratio to the
first arm, the machine, versions and commit.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.archspeed import cpu_model  # noqa: E402
from harness.precision import cpu_has_native_bf16  # noqa: E402
from harness.records import git_state  # noqa: E402

BUDGET = ["training.max_train_examples=4000", "training.epochs=2", "training.seed=0"]
# the "today": the commit before precision auto could mean bf16 on a CPU (fp32, foreach AdamW)
ARMS = [("issue-day code (e15c3b0^), auto = fp32", "e15c3b0^", []),
        ("DeepSpeed bf16 mode (501d5be), auto", "501d5be", []),
        ("this code, fp32", None, ["deepspeed.precision=fp32"]),
        ("this code, auto", None, [])]


def checkout(ref: str | None, scratch: Path) -> Path:
    """This checkout for ``None``, else a detached worktree of ``ref`` under ``scratch``."""
    if ref is None:
        return REPO
    path = scratch / ref.replace("^", "_parent").replace("/", "_")
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), ref], cwd=REPO, check=True)
    return path


def run_once(code: Path, sets: list[str], results: Path, glue_dir: str) -> dict:
    """One quickstart student run through the CLI of the code at ``code``; its record's figures."""
    cmd = [sys.executable, "-m", "harness", "run", "recipes/quickstart.yaml", "--results-dir", str(results),
           "--glue-dir", glue_dir, "--force"] + [a for s in BUDGET + sets for a in ("--set", s)]
    env = os.environ | {"PYTHONPATH": str(code)}
    done = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{code}: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    (record,) = [p for p in results.rglob("metrics.json") if "teachers" not in p.parts]
    m = json.loads(record.read_text())
    return {"samples_per_s": m["train"]["samples_per_s"], "wall_time_s": m["train"]["wall_time_s"],
            "score": m["score"], "precision": m["train"]["precision"],
            "precision_mode": m["train"].get("precision_mode", "DeepSpeed (not recorded by that code)")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="timed runs per arm, taken in turns")
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", "../shared/glue"))
    ap.add_argument("--out", type=Path, default=REPO / "results/bench/quickstart_speed.json")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kd-quickstart-speed-"))
    codes = [checkout(ref, scratch) for _, ref, _ in ARMS]
    runs, n = [], 0
    for rep in range(-1, args.reps):  # rep -1: untimed, fine-tunes each arm's teacher and builds its cache
        for (label, ref, sets), code in zip(ARMS, codes):
            n += 1  # a fresh results folder per run: another version's records are not this one's to read
            got = run_once(code, sets, scratch / f"results-{n}", args.glue_dir)
            print(f"rep {rep}  {label:45s} {got['samples_per_s']:7.1f} ex/s  dev {got['score']:.4f}", flush=True)
            if rep >= 0:
                runs.append({"arm": label, "ref": ref or "this checkout", "sets": sets, "rep": rep} | got)
    arms = {}
    for label, _, _ in ARMS:
        mine = [r for r in runs if r["arm"] == label]
        arms[label] = {"median_samples_per_s": statistics.median(r["samples_per_s"] for r in mine),
                       "scores": [r["score"] for r in mine], "precision_mode": mine[0]["precision_mode"]}
    first = arms[ARMS[0][0]]["median_samples_per_s"]
    for a in arms.values():
        a["ratio_to_first"] = round(a["median_samples_per_s"] / first, 3)
    commit, changed = git_state(REPO)
    out = {"bench": "quickstart_speed", "written": time.strftime("%Y-%m-%d %H:%M:%S"),
           "budget": BUDGET, "recipe": "recipes/quickstart.yaml",
           "machine": {"cpu": cpu_model(), "native_bf16": cpu_has_native_bf16(), "cores": os.cpu_count(),
                       "load_avg_at_end": os.getloadavg()},
           "versions": {p: metadata.version(p) for p in ("torch", "deepspeed", "transformers")},
           "git_commit": commit, "git_dirty": bool(changed), "arms": arms, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for label, a in arms.items():
        print(f"{label:45s} median {a['median_samples_per_s']:7.1f} ex/s  x{a['ratio_to_first']:.2f}  dev {a['scores']}")
    for _, ref, _ in ARMS:
        if ref is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(checkout(ref, scratch))], cwd=REPO)


if __name__ == "__main__":
    main()
