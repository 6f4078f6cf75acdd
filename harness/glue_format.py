"""The GLUE leaderboard's submission format (gluebenchmark.com), and a check of a zip against it.

A submission is a zip with, at its top level, one TSV per task named as below; each has the header
``index<TAB>prediction`` and one row per test example, indices 0..n-1.  Predictions are the integers
0/1 for CoLA, SST-2, MRPC, QQP and WNLI, a similarity score from 0 to 5 for STS-B, and label strings for
the NLI tasks: entailment / neutral / contradiction for MNLI (matched, mismatched) and AX (the
diagnostic set, predicted by the MNLI model), entailment / not_entailment for QNLI and RTE.  The row
counts are those of GLUE's test sets.
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

HEADER = "index\tprediction"
NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")
BINARY = ("0", "1")


@dataclass(frozen=True)
class BoardFile:
    name: str  # the file's name in the zip
    task: str  # the harness task whose model predicts it
    split: str  # its test file in the GLUE folder: <folder>/<split>.tsv
    labels: tuple[str, ...] | None  # the allowed predictions; None: a score from 0 to 5
    rows: int  # GLUE's test-set size


BOARD = (
    BoardFile("CoLA.tsv", "cola", "test", BINARY, 1063),
    BoardFile("SST-2.tsv", "sst2", "test", BINARY, 1821),
    BoardFile("MRPC.tsv", "mrpc", "test", BINARY, 1725),
    BoardFile("STS-B.tsv", "stsb", "test", None, 1379),
    BoardFile("QQP.tsv", "qqp", "test", BINARY, 390965),
    BoardFile("MNLI-m.tsv", "mnli", "test_matched", NLI3, 9796),
    BoardFile("MNLI-mm.tsv", "mnli", "test_mismatched", NLI3, 9847),
    BoardFile("QNLI.tsv", "qnli", "test", NLI2, 5463),
    BoardFile("RTE.tsv", "rte", "test", NLI2, 3000),
    BoardFile("WNLI.tsv", "wnli", "test", BINARY, 146),
    BoardFile("AX.tsv", "mnli", "diagnostic", NLI3, 1104),  # GLUE's diagnostic/diagnostic.tsv
)
BY_NAME = {b.name: b for b in BOARD}


def value_problem(b: BoardFile, value: str) -> str | None:
    """Why ``value`` is not a prediction the leaderboard takes for ``b``, or None."""
    if b.labels is not None:
        return None if value in b.labels else f"prediction {value!r} is not one of {', '.join(b.labels)}"
    try:
        score = float(value)
    except ValueError:
        return f"prediction {value!r} is not a number"
    return None if math.isfinite(score) and 0.0 <= score <= 5.0 else f"score {value} is outside 0..5"


def file_problems(b: BoardFile, text: str, limit: int = 5) -> list[str]:
    """What is wrong with one file's text (at most ``limit`` row problems, then a count)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if not lines or lines[0] != HEADER:
        return [f"{b.name}: the header must be {HEADER!r}, found {lines[0] if lines else ''!r}"]
    bad, indices = [], []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        why = f"{len(fields)} tab-separated fields, not 2" if len(fields) != 2 else \
            f"index {fields[0]!r} is not a whole number" if not fields[0].isdigit() else value_problem(b, fields[1])
        if why:
            bad.append(f"{b.name}, line {n}: {why}")
        else:
            indices.append(int(fields[0]))
    out = bad[:limit] + ([f"{b.name}: {len(bad) - limit} more bad lines"] if len(bad) > limit else [])
    if len(lines) - 1 != b.rows:
        out.append(f"{b.name}: {len(lines) - 1} rows; GLUE's test set has {b.rows}")
    elif not bad and sorted(indices) != list(range(b.rows)):
        out.append(f"{b.name}: the indices are not 0..{b.rows - 1}, each once")
    return out


def check_submission(path: Path) -> list[str]:
    """Every problem of a submission zip ([] when the leaderboard's format holds for each file in it)."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        return [f"{path}: not a readable zip ({e})"]
    problems = []
    with zf:
        names = zf.namelist()
        for name in names:
            if name not in BY_NAME:
                where = " (files go at the zip's top level)" if "/" in name else ""
                problems.append(f"{name}: not a file the leaderboard reads{where}; "
                                f"expected names: {', '.join(BY_NAME)}")
            elif names.count(name) > 1:
                problems.append(f"{name}: in the zip {names.count(name)} times")
            else:
                problems += file_problems(BY_NAME[name], zf.read(name).decode("utf-8"))
    if not names:
        problems.append(f"{path}: the zip is empty")
    return list(dict.fromkeys(problems))
