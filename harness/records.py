"""Run records: one folder per run under ``results/runs/``, written once and read back by the tables
and by ``harness verify``::

    recipe.yaml            the resolved recipe (or the teacher's resolved fine-tuning spec)
    metrics.json           a RunRecord (harness.run_record): dev metrics, headline score, training
                           stats, parameters, size, speed
    predictions/<split>.tsv  index, prediction, label: one row per dev example
    env.json               git commit (and any uncommitted code changes), package versions, device
    curves.csv             training curves (harness.curves), when the CSV monitor was on
"""
from __future__ import annotations

import csv
import json
import math
import platform
import shutil
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pydantic
import yaml

from harness.hashing import spec_hash
from harness.metrics import compute_metrics
from harness.run_record import RunRecord, StageRecipes, as_version_2, upgrade
from harness.schema import parse_yaml
from harness.tasks import get_task

PACKAGES = ("torch", "deepspeed", "transformers", "datasets", "evaluate", "pandas", "tabulate", "pydantic",
            "scikit-learn", "scipy", "kd-harness")
# the packages whose versions change what a run computes (kernels, model code, the training engine): a
# study's records share them as they share a commit (harness.study_rules)
STACK = ("torch", "transformers", "deepspeed")


def installed(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Each package's installed version (None: not installed)."""
    versions = {}
    for p in names:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return versions


Stack = tuple[tuple[str, str | None], ...]  # (package, version) of each of STACK


def stack_of(packages: dict[str, str | None]) -> Stack:
    """The versions that change what a run computes, from an env.json's ``packages``."""
    return tuple((p, packages[p]) for p in STACK)


def stack_label(stack: Stack) -> str:
    """'torch 2.13.0+cpu, transformers 5.24.0, deepspeed 0.19.8'."""
    return ", ".join(f"{p} {v}" for p, v in stack)


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
    versions = installed()
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


def write_record(folder: Path, resolved: dict, record: RunRecord, predictions: dict[str, list], env: dict,
                 extra_files: dict[str, str] | None = None) -> None:
    """Write a record folder whole or not at all: into ``<folder>.tmp``, then swapped into place, so an
    interruption (Ctrl-C, a full disk) leaves the previous record as it was and never a partial one.
    ``extra_files``: file name -> text written beside metrics.json (``curves.csv``: harness.curves)."""
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    pred_dir = tmp / "predictions"
    pred_dir.mkdir()
    for split, rows in predictions.items():
        with open(pred_dir / f"{split}.tsv", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["index", "prediction", "label"])
            w.writerows(rows)
    (tmp / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    (tmp / "metrics.json").write_text(json.dumps(record.to_json(), indent=2) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def code_state(commit: str | None, changed: tuple[str, ...] | list[str]) -> str:
    """Which code ran, as studies compare it: the commit, with '+dirty' when tracked files differed from
    it (a clean study run reuses only clean records; a dirty one, allowed by the user, dirty ones of its
    commit), or 'unknown' outside git (allowed as a dirty tree is)."""
    return "unknown" if commit is None else commit + ("+dirty" if changed else "")


def short_state(state: str | None) -> str:
    """A code state for messages: the commit's first 10 characters, and '+dirty' where it has it."""
    commit, plus, tag = str(state).partition("+")
    return commit[:10] + plus + tag


def env_changed(env: dict) -> tuple[str, ...]:
    """The tracked files an env.json says differed from its commit; records from before ``git_changed``
    was written say only whether the tree was dirty."""
    return tuple(env["git_changed"]) if "git_changed" in env else ("(not recorded)",) * bool(env["git_dirty"])


def record_commit(folder: Path) -> str:
    """The code state (:func:`code_state`) of the harness that wrote a record, from its env.json."""
    env = json.loads((folder / "env.json").read_text())
    return code_state(env["git_commit"], env_changed(env))


def twin_record(study_folder: Path, rel: Path, recipe_hash: str, commit: str, data: str) -> Path | None:
    """The same run recorded by another study beside ``study_folder``: the record folder at ``rel``
    under a sibling study, of the same resolved recipe and seed (``recipe_hash``), trained at ``commit`` (a code state)
    on the same ``data``.  Studies that share a row (the zoo's KD row is the multi-teacher study's
    baseline) then train it once."""
    siblings = study_folder.parent.iterdir() if study_folder.parent.is_dir() else []
    for other in sorted(p for p in siblings if p.is_dir() and p != study_folder):
        folder = other / rel
        if (folder / "metrics.json").is_file() and (folder / "env.json").is_file() and record_commit(folder) == commit:
            found = read_record(folder)
            if found.recipe_hash == recipe_hash and found.data == data:
                return folder
    return None


def same_data(record: RunRecord, data: str) -> bool:
    """Whether a record read ``data`` (tasks.data_id); one from before data was recorded is taken at
    its word."""
    return record.data is None or record.data == data


def read_record(folder: Path) -> RunRecord:
    """A record folder's ``metrics.json``, validated (and brought to the current schema version)."""
    path = folder / "metrics.json"
    try:
        data = json.loads(path.read_text())  # a stage's recipe is looked for only if a v1 record names one
        return RunRecord.model_validate(upgrade(data, lambda: stored_recipe(folder),
                                                lambda name, old: stage_recipes(folder, data)(name, old)))
    except (ValueError, pydantic.ValidationError) as e:
        raise RecordError(f"{path}: not a valid run record: {e}") from None


def stage_recipes(folder: Path, data: dict) -> StageRecipes:
    """What reads the recipe.yaml of an assistant stage the record in ``folder`` (its raw ``data``) read,
    by stage name and hash: under the same runs/ folder, at runs/stages/<task>/<name>/<hash>/seed<seed>
    (a record of recipe ``name`` sits at runs/<name>/seed<seed>, a stage's with its hash between)."""
    depth = len(data["name"].split("/")) + (data["kind"] == "stage")
    if depth >= len(folder.parents):  # not where a run writes its record: no stage beside it
        return lambda name, old: None
    runs = folder.parents[depth]
    return lambda name, old: stored_recipe(runs / "stages" / data["task"] / name / old / f"seed{data['seed']}")


def stored_recipe(folder: Path) -> dict | None:
    """A record folder's ``recipe.yaml`` (None: a folder without one)."""
    path = folder / "recipe.yaml"
    return parse_yaml(path.read_text()) if path.is_file() else None


def rewrite_record(folder: Path, record: RunRecord) -> None:
    """Replace a record's ``metrics.json`` (``harness retime``, ``records migrate``)."""
    (folder / "metrics.json").write_text(json.dumps(record.to_json(), indent=2) + "\n")


class RecordError(Exception):
    """A ``metrics.json`` that does not follow the RunRecord schema."""


def read_predictions(path: Path, regression: bool) -> tuple[list, list]:
    cast = float if regression else int
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [cast(float(r["prediction"])) for r in rows], [cast(float(r["label"])) for r in rows]


def recompute(folder: Path) -> dict[str, dict[str, float]]:
    """The official metrics recomputed from a record's predictions files."""
    m = read_record(folder)
    task = get_task(m.task)
    out = {}
    for split in m.dev:
        preds, labels = read_predictions(folder / "predictions" / f"{split}.tsv", task.is_regression)
        out[split] = compute_metrics(task, preds, labels)
    return out


def matches_predictions(folder: Path) -> bool:
    """Whether a record's stored metrics are those its predictions give (``harness verify``)."""
    stored = read_record(folder).dev
    again = recompute(folder)
    return all(_same(stored[s][k], again[s][k]) for s in again for k in again[s])


def _same(a: float, b: float) -> bool:
    """Equal up to rounding; an undefined metric (NaN: a constant prediction's correlation) matches itself."""
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def record_folders(results_dir: Path) -> list[Path]:
    """Every complete record (not one being written: ``.tmp``, or being replaced: ``.old``)."""
    return sorted(f.parent for f in (results_dir / "runs").rglob("metrics.json")
                  if f.parent.suffix not in (".tmp", ".old"))


def every_record_folder(results_dir: Path) -> list[Path]:
    """Every complete record of a results folder: its own runs and each study's under ``studies/``."""
    studies = sorted(p for p in (results_dir / "studies").glob("*") if p.is_dir())
    return record_folders(results_dir) + [f for s in studies for f in record_folders(s)]


def load_records(results_dir: Path) -> list[tuple[Path, RunRecord]]:
    """(folder relative to ``results_dir``, record) for every record, in path order."""
    return [(folder.relative_to(results_dir), read_record(folder)) for folder in record_folders(results_dir)]


def migrate(results_dir: Path) -> list[Path]:
    """Rewrite every record stored under an older schema version in the current one (studies' too);
    returns them.  Every record is read before any is written: a chain's student reads its stages'
    recipe.yaml as they were stored."""
    todo = []
    for folder in every_record_folder(results_dir):
        raw = json.loads((folder / "metrics.json").read_text())
        record, recipe = read_record(folder), stored_recipe(folder)
        as_run = as_version_2(recipe, record.seed, stage_recipes(folder, raw)) \
            if recipe is not None and record.kind != "teacher" else recipe
        todo.append((folder, record, record.to_json() != raw,
                     as_run if as_run != recipe and spec_hash(as_run) == record.recipe_hash else None))
    for folder, record, rewrite, as_run in todo:  # as_run: its seed list (and stages) as one run has them
        if rewrite:
            rewrite_record(folder, record)
        if as_run is not None:
            (folder / "recipe.yaml").write_text(yaml.safe_dump(as_run, sort_keys=False))
    return [folder for folder, _, rewrite, _ in todo if rewrite]
