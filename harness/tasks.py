"""The nine GLUE tasks: a small registry of what each task is.

A ``Task`` says where a task's files live (``<glue_dir>/<folder>/<split>.tsv``), which TSV columns
hold its text and label, and how labels map to class ids.  Class ids follow the Hugging Face
``nyu-mll/glue`` dataset, so a model trained on local files and one trained on the Hub copy agree
on what "class 1" means.  Reading the files is :mod:`harness.glue_files`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import Registry, UnknownName



class GlueDataError(Exception):
    """GLUE data is missing, unreadable, or not in the layout the task expects."""


@dataclass(frozen=True)
class Task:
    name: str  # canonical key, e.g. "sst2"
    folder: str  # folder in the GLUE download, e.g. "SST-2"
    display: str  # column title in result tables
    text_keys: tuple[str, ...]  # TSV header name(s) of the text column(s): (text_a,) or (text_a, text_b)
    label_key: str  # TSV header name of the label column
    labels: tuple[str, ...] | None  # label strings as written in the TSV, in class-id order; None = regression
    hub_config: str  # config name in the nyu-mll/glue Hub dataset
    hub_text_keys: tuple[str, ...]  # the Hub's names for the text columns, same order as text_keys
    dev_splits: tuple[str, ...] = ("dev",)
    # CoLA's train/dev files have no header row; these names stand in for one so that columns can
    # still be picked by name.  None means the file's first row is its header.
    implicit_header: tuple[str, ...] | None = None
    # What GLUE reports for the task, in the order its leaderboard writes them ("F1/Acc"): the keys of
    # harness.metrics, whose mean is the headline score.
    metrics: tuple[str, ...] = field(kw_only=True)
    # GLUE's official training-set size: a figure trained on fewer examples says how many it used.
    train_size: int = field(kw_only=True)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        # A regression head has one output.
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_keys) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        """Splits with labels that ``load_split`` can read (GLUE test files have no labels)."""
        return ("train",) + self.dev_splits


_BINARY = ("0", "1")
# What GLUE writes where a row has no gold label (MNLI: no annotator consensus): such rows are dropped,
# as GLUE itself drops them; any other label a task does not know is an error naming the line.
NO_LABEL = ("-", "")
_ENTAILMENT2 = ("entailment", "not_entailment")

TASKS: Registry[Task] = Registry("task")
for _task in (
    Task("cola", "CoLA", "CoLA", ("sentence",), "label", _BINARY, "cola", ("sentence",),
         implicit_header=("source", "label", "original_label", "sentence"),
         metrics=("matthews_correlation",), train_size=8551),
    Task("sst2", "SST-2", "SST-2", ("sentence",), "label", _BINARY, "sst2", ("sentence",),
         metrics=("accuracy",), train_size=67349),
    Task("mrpc", "MRPC", "MRPC", ("#1 String", "#2 String"), "Quality", _BINARY, "mrpc",
         ("sentence1", "sentence2"), metrics=("f1", "accuracy"), train_size=3668),
    Task("stsb", "STS-B", "STS-B", ("sentence1", "sentence2"), "score", None, "stsb",
         ("sentence1", "sentence2"), metrics=("pearson", "spearmanr"), train_size=5749),
    Task("qqp", "QQP", "QQP", ("question1", "question2"), "is_duplicate", _BINARY, "qqp",
         ("question1", "question2"), metrics=("f1", "accuracy"), train_size=363846),
    Task("mnli", "MNLI", "MNLI", ("sentence1", "sentence2"), "gold_label",
         ("entailment", "neutral", "contradiction"), "mnli", ("premise", "hypothesis"),
         dev_splits=("dev_matched", "dev_mismatched"), metrics=("accuracy",), train_size=392702),
    Task("qnli", "QNLI", "QNLI", ("question", "sentence"), "label", _ENTAILMENT2, "qnli",
         ("question", "sentence"), metrics=("accuracy",), train_size=104743),
    Task("rte", "RTE", "RTE", ("sentence1", "sentence2"), "label", _ENTAILMENT2, "rte",
         ("sentence1", "sentence2"), metrics=("accuracy",), train_size=2490),
    Task("wnli", "WNLI", "WNLI", ("sentence1", "sentence2"), "label", _BINARY, "wnli",
         ("sentence1", "sentence2"), metrics=("accuracy",), train_size=635),
):
    TASKS.add(_task.name, _task)


def get_task(name: str) -> Task:
    """Look a task up by its key ("sst2") or its GLUE folder/display name ("SST-2", "sst-2")."""
    # Every folder name lower-cases to its key once hyphens go, so one normalisation covers both.
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise UnknownName(TASKS.unknown_message(key))
    return TASKS.get(key)
