"""Official GLUE dev-set metrics, computed with scikit-learn and scipy.

The ``evaluate`` package's GLUE metric is a script fetched from the Hub, so it is not available
offline; this module computes the same numbers under the same key names (``accuracy``, ``f1``,
``matthews_correlation``, ``pearson``, ``spearmanr``) and offers ``GlueMetric`` as a drop-in for
``evaluate.load("glue", name)``.

Values are fractions (accuracy 0.85, not 85.0).  Tables that print GLUE-style percentages scale
them at display time, so stored results keep full precision.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from harness.tasks import Task, get_task


# scikit-learn and scipy are imported where a metric is first computed: reading records (``study plan``,
# ``tables``) needs none, and the two take about 1.5 s to import on this CPU.
def _accuracy(pred: np.ndarray, ref: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score
    return float(accuracy_score(ref, pred))


def _f1(pred: np.ndarray, ref: np.ndarray) -> float:
    # GLUE's F1 for MRPC/QQP is the F1 of the positive class ("is a paraphrase/duplicate").
    # zero_division=0: a model that never predicts 1 scores 0, not an exception.
    from sklearn.metrics import f1_score
    return float(f1_score(ref, pred, pos_label=1, average="binary", zero_division=0.0))


def _mcc(pred: np.ndarray, ref: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef
    return float(matthews_corrcoef(ref, pred))


def _pearson(pred: np.ndarray, ref: np.ndarray) -> float:
    from scipy import stats
    return float(stats.pearsonr(pred, ref)[0])


def _spearman(pred: np.ndarray, ref: np.ndarray) -> float:
    from scipy import stats
    return float(stats.spearmanr(pred, ref)[0])


# metric key -> (function, short name for table headers)
_METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], str]] = {
    "accuracy": (_accuracy, "Acc"),
    "f1": (_f1, "F1"),
    "matthews_correlation": (_mcc, "MCC"),
    "pearson": (_pearson, "Pearson"),
    "spearmanr": (_spearman, "Spearman"),
}

def _as_task(task: Task | str) -> Task:
    return get_task(task) if isinstance(task, str) else task


def metric_names(task: Task | str) -> tuple[str, ...]:
    """The metric keys ``compute_metrics`` returns for a task."""
    return _as_task(task).metrics


def _as_vector(values, what: str, regression: bool) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:  # a regression head's (n, 1) output
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(
            f"{what} must be one value per example, got shape {arr.shape}"
            + ("" if regression else " (take the argmax of the logits first)")
        )
    if regression:
        return arr.astype(np.float64)
    # Guard against passing probabilities or raw scores where class ids belong: sklearn would
    # otherwise fail with a less helpful "mix of binary and continuous" message, or not at all.
    if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{what} must be integer class ids for a classification task")
    return arr.astype(np.int64)


def compute_metrics(task: Task | str, predictions: Sequence, references: Sequence) -> dict[str, float]:
    """GLUE's dev metrics for one task and one split, as plain Python floats.

    Predictions are class ids for classification tasks and similarity scores for STS-B.
    """
    task = _as_task(task)
    pred = _as_vector(predictions, "predictions", task.is_regression)
    ref = _as_vector(references, "references", task.is_regression)
    if len(pred) != len(ref):
        raise ValueError(f"{len(pred)} predictions but {len(ref)} references")
    if len(ref) == 0:
        raise ValueError("cannot compute metrics on zero examples")
    return {key: _METRICS[key][0](pred, ref) for key in task.metrics}


def headline(task: Task | str, metrics: dict[str, float]) -> float:
    """One number per task for tables: the mean of the task's GLUE metrics, as GLUE averages
    F1/Acc and Pearson/Spearman into a task score."""
    names = metric_names(task)
    missing = [n for n in names if n not in metrics]
    if missing:
        raise KeyError(f"{_as_task(task).display} metrics lack {', '.join(missing)}; got {sorted(metrics)}")
    return float(np.mean([metrics[n] for n in names]))


def headline_name(task: Task | str) -> str:
    """What the task's headline averages, for table headers: "MCC", "Acc", "F1/Acc", "Pearson/Spearman";
    over several dev splits it says so: MNLI's is "Acc, mean of matched/mismatched"."""
    name = "/".join(_METRICS[n][1] for n in metric_names(task))
    splits = _as_task(task).dev_splits
    if len(splits) == 1:
        return name
    return f"{name}, mean of {'/'.join(s.removeprefix('dev_') for s in splits)}"


def task_headline(task: Task | str, metrics_by_split: dict[str, dict[str, float]]) -> float:
    """The task's score over all its dev splits: MNLI is the mean of matched and mismatched,
    every other task has a single dev split and this is just its headline."""
    task = _as_task(task)
    missing = [s for s in task.dev_splits if s not in metrics_by_split]
    if missing:
        raise KeyError(
            f"{task.display} needs metrics for {', '.join(task.dev_splits)}; missing {', '.join(missing)}"
        )
    return float(np.mean([headline(task, metrics_by_split[s]) for s in task.dev_splits]))


# evaluate's GLUE config names that are not task names: both MNLI dev sets use MNLI's metric.
_EVALUATE_ALIASES = {"mnli_matched": "mnli", "mnli_mismatched": "mnli"}


class GlueMetric:
    """Offline stand-in for ``evaluate.load("glue", task_name)``.

    >>> GlueMetric("mrpc").compute(predictions=[1, 0, 1], references=[1, 0, 0])
    {'f1': 0.6666666666666666, 'accuracy': 0.6666666666666666}
    """

    def __init__(self, task_name: str):
        self.config_name = task_name
        self.task = get_task(_EVALUATE_ALIASES.get(task_name, task_name))

    def compute(self, *, predictions: Sequence, references: Sequence) -> dict[str, float]:
        return compute_metrics(self.task, predictions, references)

    def __repr__(self) -> str:
        return f"GlueMetric({self.config_name!r})"
