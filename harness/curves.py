"""Training curves: what a training stage reports through DeepSpeed's monitors, and ``curves.csv``.

``StageLoop`` (:mod:`harness.distill`) writes events with ``engine.monitor.write_events``: at every log
point the mean loss and each term's since the previous one and the examples/s over that stretch; at
each epoch end every teacher's mean weight.  DeepSpeed adds the learning rate at every step.  Each
event's x is DeepSpeed's sample count (optimiser steps x global batch), as DeepSpeed's own events.

The recipe's ``deepspeed.monitor`` chooses the monitors (CSV on by default, TensorBoard, W&B).  The CSV
monitor of a stage writes one file per event into ``<run's checkpoints>/curves/stage<i>/``: beside the
checkpoints, so that a resumed stage appends to the same files, and deleted with them.  When the run
writes its record, :func:`record_files` merges them into one ``curves.csv`` inside the record folder,
written with the rest of the record (whole or not at all)::

    stage,phase,block,name,examples,value
    0,task,,loss,320,0.6931

``name`` is ``loss``, ``loss_<term>``, ``lr``, ``examples_per_s`` or ``teacher_weight_<k>`` (k: the
teacher's place in the record's ``teachers``).
"""
from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

from harness.losses import TERMS
from harness.recipe_parts import Monitor

PREFIX = "Train/Samples/"  # DeepSpeed's own events are named so (Train/Samples/lr)
FILE_PREFIX = PREFIX.replace("/", "_")  # what its CSV monitor makes of it in file names
COLUMNS = ("stage", "phase", "block", "name", "examples", "value")
CURVES_FILE = "curves.csv"


def stage_folder(checkpoint_folder: Path) -> Path:
    """Where the CSV monitor of the stage checkpointed in ``checkpoint_folder`` writes.  Not inside it:
    each save there deletes whatever is not the newest checkpoint."""
    return checkpoint_folder.parent / "curves" / checkpoint_folder.name


def fresh_start(checkpoint_folder: Path) -> None:
    """A stage that starts from step 0 drops curves an interrupted attempt left (rank 0, before the
    engine's monitor opens its files)."""
    shutil.rmtree(stage_folder(checkpoint_folder), ignore_errors=True)


def monitor_config(monitor: Monitor, csv_folder: Path | None, job: str) -> dict:
    """The DeepSpeed config's monitor sections for one stage.  ``csv_folder`` None: no CSV files (a
    stage trained without checkpoints, outside a run: nowhere to keep them)."""
    cfg = {}
    if monitor.csv and csv_folder is not None:
        cfg["csv_monitor"] = {"enabled": True, "output_path": str(csv_folder), "job_name": ""}
    if monitor.tensorboard is not None:
        cfg["tensorboard"] = {"enabled": True, "output_path": monitor.tensorboard,
                              "job_name": re.sub(r"[^A-Za-z0-9_.-]+", "_", job).strip("_")}
    if monitor.wandb is not None:
        cfg["wandb"] = {"enabled": True} | monitor.wandb.model_dump()
    return cfg


def term_names(terms) -> list[str]:
    """Each term module's registered name; a second term of the same kind gets ``_2`` appended."""
    by_class = {cls: name for name, cls in TERMS.items()}
    names: list[str] = []
    for term in terms:
        base = by_class[type(term)]
        names.append(base if base not in names else f"{base}_{names.count(base) + 1}")
    return names


def loss_events(x: int, loss: float, terms: list[float], names: list[str], rate: float) -> list[tuple]:
    """Events of one log point: mean loss, each term's mean, examples/s since the previous point."""
    return ([(PREFIX + "loss", loss, x)] + [(PREFIX + f"loss_{n}", v, x) for n, v in zip(names, terms)]
            + [(PREFIX + "examples_per_s", rate, x)])


def weight_events(x: int, weights: list[float]) -> list[tuple]:
    """Events of one epoch end: every teacher's mean per-example weight over the epoch."""
    return [(PREFIX + f"teacher_weight_{k}", w, x) for k, w in enumerate(weights)]


def read_events(path: Path) -> dict[int, float]:
    """One CSV monitor file as {x: value}.  A resumed stage's monitor writes its header again and
    repeats the steps done after the last checkpoint: the later value of an x wins (they are equal on
    CPU), and header rows are skipped."""
    out: dict[int, float] = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if row and row[0] != "step":
                out[int(float(row[0]))] = float(row[1])
    return out


def merged(root: Path, stages: list[tuple[str, int | None]]) -> list[tuple]:
    """The rows of ``curves.csv`` from a run's checkpoint folder ``root``; ``stages`` names each
    stage (phase, block or None) in the order the run trained them."""
    rows = []
    for i, (phase, block) in enumerate(stages):
        for f in sorted((root / "curves" / f"stage{i}").glob("*.csv")):
            name = f.stem.removeprefix(FILE_PREFIX)
            rows += [(i, phase, "" if block is None else block, name, x, v) for x, v in sorted(read_events(f).items())]
    return rows


def record_files(root: Path, stages: list[tuple[str, int | None]]) -> dict[str, str]:
    """``{"curves.csv": text}`` for :func:`harness.records.write_record`, or ``{}`` when no stage
    wrote curves (the CSV monitor was off)."""
    rows = merged(root, stages)
    if not rows:
        return {}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows)
    return {CURVES_FILE: buf.getvalue()}


def read_curves(record_folder: Path) -> list[dict] | None:
    """A record's curves as rows (stage and examples as int, value as float), None without the file."""
    path = record_folder / CURVES_FILE
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{"stage": int(r["stage"]), "phase": r["phase"], "block": r["block"], "name": r["name"],
             "examples": int(r["examples"]), "value": float(r["value"])} for r in rows]
