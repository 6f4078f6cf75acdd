"""bf16 against fp32 training on this CPU: speed and dev scores, back to back, same teacher instance.

For each task (SST-2 capped, MRPC) and seed, the quickstart's pair (all-MiniLM-L6-v2 -> 3 of its blocks,
``recipes/glue/<task>/kd/minilm3L_from_minilm.yaml``) is trained twice in a row, once with
``deepspeed.precision: fp32`` (what every CPU run did before ``auto`` meant bf16 here) and once with
``bf16``, through the real CLI.  Both read one teacher (fine-tuned once, under ``auto``).  The records
go to ``results/runs/glue/<task>/kd/minilm3L_from_minilm/{fp32,bf16}/seed<k>/``; this script then
writes ``results/bench/precision_parity.json``: every run's dev score and training examples/s, per
task the mean and spread over seeds, the bf16/fp32 speed ratio of each seed's pair, and the machine;
and ``precision_parity.md``, that JSON as the table ``results/README.md`` quotes.

    GLUE_DIR=../shared/glue python bench/precision_parity.py            # runs what lacks a record
    python bench/precision_parity.py --summarize-only                  # JSON + table from existing records
    python bench/precision_parity.py --table-only                      # the table from the committed JSON
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.archspeed import cpu_model  # noqa: E402
from harness.precision import cpu_has_native_bf16  # noqa: E402
from harness.records import git_state, read_record  # noqa: E402

TASKS = ("sst2", "mrpc")
PRECISIONS = ("fp32", "bf16")
SEEDS = (0, 1, 2)


def recipe(task: str) -> Path:
    return REPO / "recipes" / "glue" / task / "kd" / "minilm3L_from_minilm.yaml"


def run_name(task: str, precision: str) -> str:
    return f"glue/{task}/kd/minilm3L_from_minilm/{precision}"


def train(task: str, precision: str, seed: int, results: Path) -> None:
    if (results / "runs" / run_name(task, precision) / f"seed{seed}" / "metrics.json").exists():
        return
    cmd = [sys.executable, "-m", "harness", "run", str(recipe(task)), "--results-dir", str(results), "--no-tables",
           "--set", f"name={run_name(task, precision)}", "--set", f"deepspeed.precision={precision}",
           "--set", f"training.seed={seed}"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def summarize(results: Path) -> dict:
    runs = []
    for task in TASKS:
        for seed in SEEDS:
            for precision in PRECISIONS:
                folder = results / "runs" / run_name(task, precision) / f"seed{seed}"
                if (folder / "metrics.json").exists():
                    m = read_record(folder)
                    runs.append({"task": task, "precision": precision, "seed": seed, "score": m.score,
                                 "samples_per_s": m.train.samples_per_s, "wall_time_s": m.train.wall_time_s,
                                 "train_precision": m.train.precision,
                                 "precision_mode": m.train.precision_mode, "teacher_scores": m.teacher_scores,
                                 "record": str(folder.relative_to(results.parent))})
    return {"runs": runs, "tasks": {task: _task_summary([r for r in runs if r["task"] == task]) for task in TASKS}}


def _task_summary(runs: list[dict]) -> dict:
    out = {}
    for precision in PRECISIONS:
        scores = [r["score"] for r in runs if r["precision"] == precision]
        if scores:
            out[precision] = {"seeds": len(scores), "score_mean": statistics.mean(scores),
                              "score_std": statistics.stdev(scores) if len(scores) > 1 else None,
                              "samples_per_s_mean": statistics.mean(r["samples_per_s"] for r in runs
                                                                    if r["precision"] == precision)}
    pairs = {}
    for r in runs:
        pairs.setdefault(r["seed"], {})[r["precision"]] = r
    ratios = [p["bf16"]["samples_per_s"] / p["fp32"]["samples_per_s"] for p in pairs.values() if len(p) == 2]
    if ratios:
        out["speed_ratio_bf16_over_fp32"] = {"per_seed": [round(x, 3) for x in ratios],
                                             "mean": round(statistics.mean(ratios), 3)}
    if "fp32" in out and "bf16" in out and out["fp32"]["score_std"] is not None:
        diff = out["bf16"]["score_mean"] - out["fp32"]["score_mean"]
        spread = max(out["fp32"]["score_std"], out["bf16"]["score_std"])
        out["score_diff_bf16_minus_fp32"] = diff
        out["within_seed_spread"] = abs(diff) <= spread
    return out


BUDGETS = {"sst2": "SST-2 (4k, 2 ep, length 64)", "mrpc": "MRPC (3.7k, 3 ep, length 128)"}


def table(out: dict) -> str:
    """The JSON as Markdown: per task, each precision's dev scores by seed (mean ± std) and examples/s."""
    def scores(task: str, precision: str) -> str:
        runs = sorted((r for r in out["runs"] if r["task"] == task and r["precision"] == precision),
                      key=lambda r: r["seed"])
        s = out["tasks"][task][precision]
        return (" / ".join(f"{100 * r['score']:.2f}" for r in runs)
                + f" ({100 * s['score_mean']:.1f} ± {100 * s['score_std']:.1f})")

    lines = ["<!-- generated by bench/precision_parity.py from precision_parity.json; do not edit -->", "",
             "| task (student budget) | fp32 dev (seeds " + "/".join(map(str, SEEDS)) + ") | bf16 dev | "
             "fp32 ex/s | bf16 ex/s | bf16 / fp32 speed, per seed | bf16 − fp32 dev (points) |",
             "|---|---|---|---|---|---|---|"]
    for task, t in out["tasks"].items():
        ratio = t["speed_ratio_bf16_over_fp32"]
        lines.append(f"| {BUDGETS[task]} | {scores(task, 'fp32')} | {scores(task, 'bf16')} | "
                     f"{t['fp32']['samples_per_s_mean']:.1f} | {t['bf16']['samples_per_s_mean']:.1f} | "
                     + " / ".join(f"{x:.2f}" for x in ratio["per_seed"]) + f" (mean {ratio['mean']:.2f}) | "
                     f"{100 * t['score_diff_bf16_minus_fp32']:+.2f} |")
    m = out["machine"]
    teachers = sorted({(r["task"], card, score) for r in out["runs"] for card, score in r["teacher_scores"].items()})
    lines += ["", "Teachers read (dev x 100): "
              + "; ".join(f"{task} {card} {100 * score:.1f}" for task, card, score in teachers) + ".",
              "", f"Commit {out['git_commit'][:7]}{' (dirty)' if out['git_dirty'] else ''}, {out['written']}; "
              f"{m['cpu']}, {m['threads']} threads, native bf16: {m['native_bf16']}; "
              + ", ".join(f"{k} {v}" for k, v in out["versions"].items()) + ". Dev: accuracy x 100; "
              "ex/s: training examples per second, mean over seeds."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results-dir", type=Path, default=REPO / "results")
    ap.add_argument("--summarize-only", action="store_true", help="no training: the JSON from the records there")
    ap.add_argument("--table-only", action="store_true", help="only precision_parity.md, from the committed JSON")
    args = ap.parse_args()
    dest = args.results_dir / "bench" / "precision_parity.json"
    if args.table_only:
        write_table(json.loads(dest.read_text()), dest)
        return 0
    if not args.summarize_only:
        for task in TASKS:
            for seed in SEEDS:  # the two precisions of a seed back to back: the machine's load is shared
                for precision in PRECISIONS:
                    train(task, precision, seed, args.results_dir)
    import torch

    out = {"bench": "precision_parity", "written": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": {"cpu": cpu_model(), "native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(),
                       "platform": platform.platform()},
           "versions": {p: metadata.version(p) for p in ("torch", "deepspeed", "transformers")},
           "git_commit": git_state(REPO)[0], "git_dirty": bool(git_state(REPO)[1])} | summarize(args.results_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["tasks"], indent=2))
    print(f"wrote {dest}")
    write_table(out, dest)
    return 0


def write_table(out: dict, dest: Path) -> None:
    md = dest.with_suffix(".md")
    md.write_text(table(out))
    print(f"wrote {md}")


if __name__ == "__main__":
    sys.exit(main())
