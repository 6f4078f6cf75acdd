"""Run records: one folder per run under ``results/runs/``, written once and read back by the tables
and by ``harness verify``::

    recipe.yaml            the resolved recipe (or the teacher's resolved fine-tuning spec)
    metrics.json           dev metrics, headline score, training stats, parameters, size, speed
    predictions/<split>.tsv  index, prediction, label: one row per dev example
    env.json               git commit (and any uncommitted code changes), package versions, device
"""
from __future__ import annotations

import csv
import json
import math
import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import yaml

from harness.metrics import compute_metrics
from harness.tasks import get_task

PACKAGES = ("torch", "deepspeed", "transformers", "datasets", "evaluate", "pandas", "tabulate", "pydantic",
            "scikit-learn", "scipy", "kd-harness")


@lru_cache(maxsize=None)
def git_state(repo: Path) -> tuple[str | None, tuple[str, ...]]:
    """The commit and the tracked files that differ from it, outside ``results/``: a rerun deletes and
    rewrites its own committed record, which says nothing about the code that ran. Cached per process,
    and read when a run starts, so an edit made while it trains is not blamed on it."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results") or ""
    return (commit.strip() if commit else None), tuple(line[3:] for line in status.splitlines() if line.strip())


def env_info(repo: Path) -> dict:
    commit, changed = git_state(repo)
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "git_commit": commit,
        "git_dirty": bool(changed),
        "git_changed": list(changed),  # tracked files outside results/ that differ from the commit
        "python": sys.version.split()[0],
        "packages": versions,
        "device": gpu or "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def write_record(folder: Path, resolved: dict, metrics: dict, predictions: dict[str, list], env: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    pred_dir = folder / "predictions"
    pred_dir.mkdir(exist_ok=True)
    for split, rows in predictions.items():
        with open(pred_dir / f"{split}.tsv", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["index", "prediction", "label"])
            w.writerows(rows)
    (folder / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    # metrics.json last: its presence marks a complete record
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def read_predictions(path: Path, regression: bool) -> tuple[list, list]:
    cast = float if regression else int
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [cast(float(r["prediction"])) for r in rows], [cast(float(r["label"])) for r in rows]


def recompute(folder: Path) -> dict[str, dict[str, float]]:
    """The official metrics recomputed from a record's predictions files."""
    m = json.loads((folder / "metrics.json").read_text())
    task = get_task(m["task"])
    out = {}
    for split in m["dev"]:
        preds, labels = read_predictions(folder / "predictions" / f"{split}.tsv", task.is_regression)
        out[split] = compute_metrics(task, preds, labels)
    return out


def matches_predictions(folder: Path) -> bool:
    """Whether a record's stored metrics are those its predictions give (``harness verify``)."""
    stored = json.loads((folder / "metrics.json").read_text())["dev"]
    again = recompute(folder)
    return all(math.isclose(stored[s][k], again[s][k], rel_tol=1e-9, abs_tol=1e-12) for s in again for k in again[s])


def load_records(results_dir: Path) -> list[dict]:
    recs = []
    for f in sorted((results_dir / "runs").rglob("metrics.json")):
        m = json.loads(f.read_text())
        m["_dir"] = str(f.parent.relative_to(results_dir))
        recs.append(m)
    return recs
