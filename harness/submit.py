"""``python -m harness submit RESULTS_OR_STUDY --out glue_submission.zip``: GLUE test-set predictions in
the leaderboard's format (:mod:`harness.glue_format`).

For each leaderboard file the model is the task's best student record (dev score) among the records
under ``RESULTS_OR_STUDY`` whose trained model is in this cache (``--row`` narrows them to one recipe
row, e.g. ``kd/minilm3L_from_minilm``).  Its test file is read from the GLUE folder and tokenized as its
dev set was.  A file with no such model, or no test file (the bundled GLUE copy has none for MNLI, QQP
and AX), is left out and listed, never filled in.  The zip is checked against the format before it is
kept.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from harness.glue_format import BOARD, BoardFile, check_submission
from harness.inference import logits, max_length, model_folder, predictions, torch_runner
from harness.records import load_records
from harness.run_record import RunRecord
from harness.schema import ConfigError
from harness.study import row_name
from harness.tasks import GlueDataError, get_task
from harness.glue_files import load_test


@dataclass(frozen=True)
class Chosen:
    folder: Path  # the record folder
    record: RunRecord
    model: Path  # its trained model
    row: str


@dataclass(frozen=True)
class Line:
    file: str
    written: int | None  # rows, or None when left out
    what: str  # the model, or why the file is left out


def records_folder(target: Path, results_dir: Path) -> Path:
    """A folder with ``runs/`` (``results``, ``results/studies/<name>``), or a study file's folder."""
    if target.suffix in (".yaml", ".yml") and target.is_file():
        data = yaml.safe_load(target.read_text()) or {}
        target = results_dir / "studies" / (data["name"] if "name" in data else target.stem)
    if not (target / "runs").is_dir():
        raise ConfigError(f"{target} has no runs/ folder: give a results folder (results) or a study's "
                          "(results/studies/<name>, or its file studies/<name>.yaml)")
    return target


def choose(folder: Path, row: str | None) -> tuple[dict[str, Chosen], dict[str, str]]:
    """Per task, the best student record (dev score) whose model is here; and for the tasks whose
    records all lack their model, why."""
    best: dict[str, Chosen] = {}
    unusable: dict[str, list[str]] = {}
    for rel, m in sorted(load_records(folder), key=lambda r: -r[1].score):
        name = row_name(m.name, m.task)
        if m.kind != "student" or m.task in best or (row is not None and not fnmatch.fnmatch(name, row)):
            continue
        try:
            best[m.task] = Chosen(folder / rel, m, model_folder(folder / rel, m), name)
        except ConfigError as e:
            unusable.setdefault(m.task, []).append(str(e))
    # a task's records whose models are all elsewhere: the best one's reason stands for them
    return best, {task: f"{len(why)} student record(s), none with its model here; the best: {why[0]}"
                  for task, why in unusable.items() if task not in best}


def test_rows(b: BoardFile, glue_dir: Path):
    """A leaderboard file's test examples (AX: GLUE's diagnostic set, read with MNLI's columns)."""
    task = get_task(b.task)
    if b.split == "diagnostic":
        task = dataclasses.replace(task, folder="diagnostic")
    return load_test(task, glue_dir, b.split)


def predict(c: Chosen, ds) -> list[str]:
    """The leaderboard's predictions: label strings (0/1 for the binary tasks), STS-B scores clipped."""
    task = get_task(c.record.task)
    model = AutoModelForSequenceClassification.from_pretrained(c.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(c.model)
    raw = logits(torch_runner(model), tok, ds, max_length(c.folder))
    if task.labels is None:
        return [f"{v:.3f}" for v in np.clip(raw[:, 0], 0.0, 5.0)]
    return [task.labels[i] for i in predictions(raw, task.labels)]


def tsv(indices: list[int], preds: list[str]) -> str:
    rows = sorted(zip(indices, preds))
    return "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in rows)


def build(target: Path, out: Path, glue_dir: Path | None, row: str | None = None,
          results_dir: Path = Path("results")) -> list[Line]:
    """Write the zip (checked, then renamed into place); one line per leaderboard file."""
    if glue_dir is None:
        raise ConfigError("submit reads the GLUE test files from a local GLUE folder: set GLUE_DIR or pass --glue-dir")
    folder = records_folder(target, results_dir)
    chosen, missing = choose(folder, row)
    files, lines = {}, []
    for b in BOARD:
        c = chosen[b.task] if b.task in chosen else None
        if c is None:
            why = missing[b.task] if b.task in missing else f"no student record of {b.task} in {folder / 'runs'}" + \
                (f" in row {row!r}" if row else "")
            lines.append(Line(b.name, None, why))
            continue
        try:
            ds = test_rows(b, glue_dir)
        except GlueDataError as e:
            lines.append(Line(b.name, None, f"no test file: {e}"))
            continue
        files[b.name] = tsv(list(ds["idx"]), predict(c, ds))
        lines.append(Line(b.name, len(ds), f"{c.row} seed {c.record.seed} (dev score {100 * c.record.score:.2f}; "
                                           f"{c.folder})"))
    if not files:
        raise ConfigError("nothing to submit:\n" + "\n".join(f"  {ln.file}: {ln.what}" for ln in lines))
    write_checked(out, files)
    return lines


def write_checked(out: Path, files: dict[str, str]) -> None:
    """The zip, kept only when it passes the format check (a failing one is an error naming why)."""
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    problems = check_submission(tmp)
    if problems:
        tmp.unlink()
        raise ConfigError("the submission fails the leaderboard's format check:\n  " + "\n  ".join(problems))
    tmp.rename(out)
