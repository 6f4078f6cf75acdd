"""The GLUE headline (:mod:`harness.metrics`) for many resampled copies of a dev split at once.

Each function takes (replicates x examples) arrays and returns one value per row, as numpy array
operations rather than a Python loop over replicates: accuracy, binary F1, Matthews' correlation in
Gorodkin's (2004) multiclass form (what scikit-learn computes), Pearson's r, and Spearman's rho as
Pearson's r on average ranks.  The study's bootstrap (:mod:`harness.study_stats_core`) draws thousands
of resamples per comparison; scikit-learn and scipy, one call per resample, would take minutes.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats

from harness.tasks import Task


def _accuracy_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (p == y).mean(axis=1)


def _f1_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    # F1 of class 1 is 2TP / (2TP + FP + FN) = 2TP / (#predicted 1 + #labelled 1); sklearn's
    # zero_division=0 makes it 0 when neither occurs.
    tp = ((p == 1) & (y == 1)).sum(axis=1)
    denom = (p == 1).sum(axis=1) + (y == 1).sum(axis=1)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def _mcc_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    # sklearn's multiclass MCC from the confusion matrix's margins.  A class absent from a row adds 0 to
    # each sum, so looping over the classes of the whole batch (few) gives each row's own value.
    n = float(p.shape[1])
    correct = (p == y).sum(axis=1).astype(np.float64)
    tp_dot = np.zeros(p.shape[0])
    pp_dot = np.zeros(p.shape[0])
    tt_dot = np.zeros(p.shape[0])
    for k in np.union1d(np.unique(p), np.unique(y)):
        t_k = (y == k).sum(axis=1).astype(np.float64)
        p_k = (p == k).sum(axis=1).astype(np.float64)
        tp_dot += t_k * p_k
        pp_dot += p_k * p_k
        tt_dot += t_k * t_k
    cov_pp_tt = (n * n - pp_dot) * (n * n - tt_dot)  # integers below 2**53: the == 0 test is exact
    with np.errstate(invalid="ignore", divide="ignore"):
        mcc = (correct * n - tp_dot) / np.sqrt(cov_pp_tt)
    return np.where(cov_pp_tt == 0, 0.0, mcc)  # sklearn: 0 when either side is constant


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Hand-written because scipy.stats.pearsonr takes no axis before scipy 1.13 (the project allows 1.10)
    # and would compute a p value per row for nothing.  Constancy is tested as scipy does (every value
    # equal to the first), and gives NaN as scipy does.
    constant = (x == x[:, :1]).all(axis=1) | (y == y[:, :1]).all(axis=1)
    xm = x - x.mean(axis=1, keepdims=True)
    ym = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xm * ym).sum(axis=1) / np.sqrt((xm * xm).sum(axis=1) * (ym * ym).sum(axis=1))
    return np.where(constant, np.nan, np.clip(r, -1.0, 1.0))


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Average ranks for ties, as scipy.stats.spearmanr uses.
    return _pearson_rows(stats.rankdata(x, axis=1), stats.rankdata(y, axis=1))


_BATCH_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "accuracy": _accuracy_rows,
    "f1": _f1_rows,
    "matthews_correlation": _mcc_rows,
    "pearson": _pearson_rows,
    "spearmanr": _spearman_rows,
}


def headline_batch(task: Task, preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The task's headline on one split (mean of its metrics) for each row of (B, n) preds and labels."""
    dtype = np.float64 if task.is_regression else np.int64  # as harness.metrics casts them
    p, y = np.asarray(preds, dtype=dtype), np.asarray(labels, dtype=dtype)
    if p.ndim != 2 or p.shape != y.shape or p.shape[1] == 0:
        raise ValueError(f"preds and labels must be equal (B, n) arrays with n > 0; got {p.shape}, {y.shape}")
    return np.mean([_BATCH_METRICS[key](p, y) for key in task.metrics], axis=0)
