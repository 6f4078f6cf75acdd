"""Reading GLUE data in the original download layout (or from the Hub), and naming which data a run read.

Every split comes back as a ``datasets.Dataset`` with the same column names whatever the task:
``idx``, ``text_a``, ``text_b`` (pair tasks only) and ``label``, so nothing downstream has to know
that MNLI calls its texts ``sentence1``/``sentence2`` and QQP ``question1``/``question2``.
"""
from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import logging
import os
from pathlib import Path
from typing import IO

import datasets

from harness.tasks import NO_LABEL, GlueDataError, Task, get_task

log = logging.getLogger(__name__)


def resolve_glue_dir(cli_value: str | None) -> Path | None:
    """The GLUE directory to read: ``--glue-dir``, else ``$GLUE_DIR``, else None (use the Hub)."""
    value = cli_value or os.environ.get("GLUE_DIR") or None
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        source = "--glue-dir" if cli_value else "the GLUE_DIR environment variable"
        raise GlueDataError(f"GLUE directory {path} (from {source}) does not exist or is not a directory")
    return path


def load_split(task: Task | str, split: str, glue_dir: str | Path | None) -> datasets.Dataset:
    """One labelled split of a task as a Dataset with columns idx, text_a, [text_b,] label.

    ``idx`` is the row's 0-based position among the file's data rows, so rows dropped for having no
    usable label leave gaps and every kept row can be traced back to its line in the file.
    """
    if isinstance(task, str):
        task = get_task(task)
    if split not in task.splits:
        # MNLI has no plain "dev": guessing matched would silently halve what "dev" means there.
        raise GlueDataError(
            f"{task.display} has no split {split!r}; valid splits: {', '.join(task.splits)}"
        )
    if glue_dir is None:
        return _load_from_hub(task, split)
    return _read_tsv(task, _find_file(Path(glue_dir), task, split))


def train_rows(task: Task, glue_dir: Path | None) -> int:
    """About how many training examples a run of ``task`` can see, for cost estimates: the data rows of
    the local train file (the bundled MNLI, QQP and QNLI are samples; rows without a usable label are
    counted too), or GLUE's official size when reading from the Hub."""
    if glue_dir is None:
        return task.train_size
    rows = _data_lines(_find_file(Path(glue_dir), task, "train"))
    return rows - (task.implicit_header is None)  # the header row, where the file has one


@functools.lru_cache(maxsize=None)
def _data_lines(path: Path) -> int:
    """Non-empty TSV rows of a file, read once per process (a study's plan asks for each task's often)."""
    with _open_text(path) as f:
        return sum(1 for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row)


def data_id(task: Task | str, glue_dir: str | Path | None) -> str:
    """Which data a run of ``task`` reads (its train and dev splits), for records and cache checks: a
    hash of the local files' bytes (the bundled 10k MNLI sample and the full MNLI are other data), or
    the Hub dataset it loads."""
    task = get_task(task) if isinstance(task, str) else task
    if glue_dir is None:
        return f"hub:nyu-mll/glue/{task.hub_config}"
    return _files_id(tuple(_find_file(Path(glue_dir), task, s) for s in ("train", *task.dev_splits)))


@functools.lru_cache(maxsize=None)
def _files_id(paths: tuple[Path, ...]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return "sha256:" + h.hexdigest()[:16]


def load_test(task: Task | str, glue_dir: str | Path, split: str = "test") -> datasets.Dataset:
    """A GLUE test file (no labels) as a Dataset with columns idx, text_a[, text_b]: ``idx`` is the
    file's own ``index`` column (QQP's is called ``id``), which a leaderboard submission repeats.
    ``split``: ``test``, or MNLI's ``test_matched`` / ``test_mismatched``.  Test files always have a
    header row, CoLA's too."""
    if isinstance(task, str):
        task = get_task(task)
    path = _find_file(Path(glue_dir), task, split)
    data: dict[str, list] = {"idx": [], "text_a": []} | ({"text_b": []} if task.is_pair else {})
    try:
        with _open_text(path) as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)  # unbalanced quotes, as in train
            header = next(reader, None)
            if header is None:
                raise GlueDataError(f"{path} is empty; expected a header row")
            names = [h.strip() for h in header]
            index_pos = _column(header, "index" if "index" in names else "id", path)
            text_pos = [_column(header, key, path) for key in task.text_keys]
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise GlueDataError(f"{path}, line {reader.line_num}: expected {len(header)} tab-separated "
                                        f"columns, found {len(row)}")
                if not row[index_pos].strip().isdigit():
                    raise GlueDataError(f"{path}, line {reader.line_num}: index {row[index_pos]!r} is not a number")
                data["idx"].append(int(row[index_pos]))
                for col, pos in zip(("text_a", "text_b"), text_pos):
                    data[col].append(row[pos])
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as err:
        raise GlueDataError(f"cannot read {path}: {err}") from err
    return datasets.Dataset.from_dict(data, features=datasets.Features(
        {k: datasets.Value("int64" if k == "idx" else "string") for k in data}))


def _features(task: Task) -> datasets.Features:
    # Explicit features keep column types stable even when a split is empty, and ClassLabel keeps
    # the label names with the data, as the Hub copy of GLUE does.
    cols = {"idx": datasets.Value("int64"), "text_a": datasets.Value("string")}
    if task.is_pair:
        cols["text_b"] = datasets.Value("string")
    cols["label"] = (datasets.Value("float64") if task.labels is None
                     else datasets.ClassLabel(names=list(task.labels)))
    return datasets.Features(cols)


def _find_file(glue_dir: Path, task: Task, split: str) -> Path:
    folder = glue_dir / task.folder
    for name in (f"{split}.tsv", f"{split}.tsv.gz"):  # plain file first: it is what GLUE ships
        if (folder / name).is_file():
            return folder / name
    hint = "" if folder.is_dir() else f" (the folder {folder} does not exist)"
    raise GlueDataError(
        f"{task.display} {split} data not found: expected {folder / split}.tsv "
        f"(or {split}.tsv.gz){hint}"
    )


def _open_text(path: Path) -> IO[str]:
    # utf-8-sig strips the byte-order mark MRPC's files start with, which would otherwise glue
    # itself onto the first header name ("\ufeffQuality").  newline="" is what csv expects.
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _read_tsv(task: Task, path: Path) -> datasets.Dataset:
    data: dict[str, list] = {name: [] for name in _features(task)}  # idx, text_a, [text_b,] label
    label_ids = None if task.labels is None else {s: i for i, s in enumerate(task.labels)}
    dropped: dict[str, int] = {}
    n_rows = 0
    try:
        with _open_text(path) as f:
            # QUOTE_NONE: GLUE text contains unbalanced quote marks (QNLI, MRPC, SST-2), and
            # default quoting would swallow tabs and newlines up to the next quote, merging rows.
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = task.implicit_header or next(reader, None)
            if header is None:
                raise GlueDataError(f"{path} is empty; expected a header row")
            # By name, so extra columns (MNLI parses and annotator labels, QQP ids) never matter.
            text_pos = [_column(header, key, path) for key in task.text_keys]
            label_pos = _column(header, task.label_key, path)
            for row in reader:
                if not row:  # a blank line, e.g. a trailing one
                    continue
                if len(row) != len(header):
                    raise GlueDataError(
                        f"{path}, line {reader.line_num}: expected {len(header)} tab-separated "
                        f"columns, found {len(row)}"
                    )
                idx, n_rows = n_rows, n_rows + 1
                raw = row[label_pos].strip()
                if label_ids is None:
                    label = _parse_score(raw, path, reader.line_num)
                elif raw in label_ids:
                    label = label_ids[raw]
                elif raw in NO_LABEL:
                    label = None
                else:
                    raise GlueDataError(f"{path}, line {reader.line_num}: label {raw!r} is not one of "
                                        f"{', '.join(task.labels)} (nor a no-consensus mark: {', '.join(map(repr, NO_LABEL))})")
                if label is None:
                    dropped[raw] = dropped.get(raw, 0) + 1
                    continue
                data["idx"].append(idx)
                data["label"].append(label)
                data["text_a"].append(row[text_pos[0]])
                if task.is_pair:
                    data["text_b"].append(row[text_pos[1]])
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as err:
        raise GlueDataError(f"cannot read {path}: {err}") from err
    if dropped:
        # MNLI marks pairs without annotator consensus with gold_label "-"; GLUE excludes them.
        summary = ", ".join(f"{value!r} x{count}" for value, count in sorted(dropped.items()))
        log.info("%s: dropped %d of %d rows without a usable label (%s)",
                 path, sum(dropped.values()), n_rows, summary)
    return datasets.Dataset.from_dict(data, features=_features(task))


def _column(header: list[str] | tuple[str, ...], key: str, path: Path) -> int:
    names = [h.strip() for h in header]
    if key not in names:
        raise GlueDataError(f"{path}, line 1: no column {key!r} in header {names}")
    return names.index(key)


def _parse_score(raw: str, path: Path, line: int) -> float | None:
    if raw in ("", "-"):
        return None  # missing: dropped like an unknown class label
    try:
        return float(raw)
    except ValueError:
        raise GlueDataError(f"{path}, line {line}: score {raw!r} is not a number") from None


_HUB_SPLITS = {"train": "train", "dev": "validation", "dev_matched": "validation_matched",
               "dev_mismatched": "validation_mismatched"}


def _load_from_hub(task: Task, split: str) -> datasets.Dataset:
    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.hub_config, split=_HUB_SPLITS[split])
    except Exception as err:  # offline, no cache, renamed dataset...: all mean "no data"
        raise GlueDataError(
            f"no local GLUE directory was given (set GLUE_DIR or pass --glue-dir) and "
            f"{task.display} {split} could not be loaded from the Hugging Face Hub "
            f"(nyu-mll/glue, config {task.hub_config!r}): {err}"
        ) from err
    return from_hub_layout(task, ds)


def from_hub_layout(task: Task, ds: datasets.Dataset) -> datasets.Dataset:
    """Rename a Hub GLUE split's columns to the harness's idx / text_a / text_b / label."""
    renames = dict(zip(task.hub_text_keys, ("text_a", "text_b")))
    ds = ds.rename_columns(renames).select_columns(["idx", *renames.values(), "label"])
    if task.is_regression:  # the Hub stores STS-B scores as float32; match the local float64
        ds = ds.cast_column("label", datasets.Value("float64"))
    return ds
