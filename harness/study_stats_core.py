"""The statistics behind a study's table: collapse flags, paired row-vs-baseline tests, Holm correction.

* ``collapse``: a seed whose predictions are one class, or flat.
* ``paired_comparison``: a row against the baseline, paired by seed.  With five or more pairs, Student's
  paired t test and t interval over per-seed differences; with fewer, a paired nonparametric bootstrap
  (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", percentile interval, ch. 13) that
  resamples seeds and dev examples, the example resample shared by both systems (Koehn 2004, "Statistical
  significance tests for machine translation evaluation").  Its p value inverts the percentile interval:
  twice the add-one share of replicates on the far side of zero (two-sided; at least 2 / (n_boot + 1),
  so ``boot_size`` sizes n_boot to the number of tests a table corrects for).
* ``holm``: Holm's (1979) step-down adjusted p values, "A simple sequentially rejective multiple test
  procedure".

Scores are fractions, as in the records.  An undefined headline (Pearson/Spearman of a constant vector,
NaN in scipy) propagates: a comparison involving one is NaN throughout, which ``holm`` leaves uncounted.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from harness.batch_metrics import headline_batch
from harness.metrics import compute_metrics, task_headline
from harness.study_table import Diff, Flag
from harness.tasks import Task

# split name -> (predictions, labels) for one seed of one row
SeedPredictions = Mapping[str, tuple[np.ndarray, np.ndarray]]

ONE_CLASS_SHARE = 0.95  # flagged at or above: the majority class's share of predictions
FLAT_RATIO = 0.10  # flagged below: std(predictions) / std(labels)
MIN_T_PAIRS = 5  # from this many seed pairs on, the seeds alone carry the t test
# Elements in one (replicates x examples) array: 8 MB as float64.  headline_batch holds about five such
# arrays at once (Spearman: two rank arrays, two centred copies, a product), so a chunk stays near 40 MB.
_CHUNK_CELLS = 1_000_000


def collapse(task: Task, splits: SeedPredictions, seed: int = -1) -> Flag | None:
    """A Flag when one seed's predictions, pooled over every split given, have collapsed; else None.

    ``seed`` is only copied into the Flag (pass it, or ``dataclasses.replace`` the -1 afterwards).
    """
    if not splits:
        raise ValueError(f"{task.display}: no predictions to check for collapse")
    preds = np.concatenate([np.asarray(p).ravel() for p, _ in splits.values()])
    if task.is_regression:
        labels = np.concatenate([np.asarray(y, dtype=np.float64).ravel() for _, y in splits.values()])
        label_std = labels.std()
        if label_std == 0:  # a dev set whose gold scores are all equal: the ratio means nothing
            raise ValueError(f"{task.display}: labels are constant, cannot measure a flat predictor")
        share = float(preds.astype(np.float64).std() / label_std)
        return Flag(seed=seed, kind="flat", share=share) if share < FLAT_RATIO else None
    # Correctly rounded division makes an exact 95 % equal the literal 0.95, so >= is exact here.
    share = float(np.unique(preds, return_counts=True)[1].max() / preds.size)
    return Flag(seed=seed, kind="one class", share=share) if share >= ONE_CLASS_SHARE else None


def _paired_labels(task: Task, a: Mapping[int, SeedPredictions], b: Mapping[int, SeedPredictions],
                   seeds: list[int]) -> None:
    for seed in seeds:
        for split in task.dev_splits:
            if split not in a[seed] or split not in b[seed]:
                raise KeyError(f"{task.display} seed {seed}: both systems need split {split!r}")
            pa, ya = a[seed][split]
            pb, yb = b[seed][split]
            if len(pa) != len(ya) or len(pb) != len(yb):
                raise ValueError(f"{task.display} seed {seed} {split}: predictions and labels differ in length")
            if not np.array_equal(ya, yb):
                raise ValueError(f"{task.display} seed {seed} {split}: the two systems were scored on "
                                 "different labels, so they cannot be paired")


def _observed(task: Task, runs: Mapping[int, SeedPredictions], seeds: list[int]) -> np.ndarray:
    # Through compute_metrics/task_headline, so the mean difference is exactly what the table's cells hold.
    return np.array([task_headline(task, {s: compute_metrics(task, *runs[seed][s]) for s in task.dev_splits})
                     for seed in seeds])


def _t_diff(a_scores: np.ndarray, b_scores: np.ndarray) -> Diff:
    d = a_scores - b_scores
    p = float(stats.ttest_rel(a_scores, b_scores).pvalue)
    low, high = stats.t.interval(0.95, df=len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    return Diff(n_pairs=len(d), mean=float(d.mean()), low=float(low), high=float(high), p=p, method="t")


def _stack(task: Task, runs: Mapping[int, SeedPredictions], seeds: list[int], split: str) -> np.ndarray:
    dtype = np.float64 if task.is_regression else np.int64
    return np.stack([np.asarray(runs[seed][split][0], dtype=dtype) for seed in seeds])


def _replicates(task: Task, a: Mapping[int, SeedPredictions], b: Mapping[int, SeedPredictions],
                seeds: list[int], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot bootstrap values of mean-over-resampled-seeds (A - B)."""
    k = len(seeds)
    data = {}
    for split in task.dev_splits:
        labels = np.asarray(a[seeds[0]][split][1])
        if any(not np.array_equal(a[s][split][1], labels) for s in seeds):
            # One example resample is shared by every seed, so every seed must score the same examples.
            raise ValueError(f"{task.display} {split}: seeds were scored on different labels")
        data[split] = (_stack(task, a, seeds, split), _stack(task, b, seeds, split), labels)
    chunk = max(1, _CHUNK_CELLS // max(len(y) for _, _, y in data.values()))
    out = []
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        seed_idx = rng.integers(0, k, size=(c, k))
        diff = np.zeros((c, k))  # per replicate, every seed's headline difference on that resample
        for pa, pb, labels in data.values():
            ex = rng.integers(0, len(labels), size=(c, len(labels)))
            y = labels[ex]
            for j in range(k):  # seeds are few (< MIN_T_PAIRS); B and n are vectorised
                diff[:, j] += headline_batch(task, pa[j][ex], y) - headline_batch(task, pb[j][ex], y)
        diff /= len(data)  # the task headline is the mean over dev splits
        # Seeds are resampled after the headlines: a seed drawn twice counts twice in the mean.
        out.append(np.take_along_axis(diff, seed_idx, axis=1).mean(axis=1))
    return np.concatenate(out)


def _bootstrap_diff(task: Task, a: Mapping[int, SeedPredictions], b: Mapping[int, SeedPredictions],
                    seeds: list[int], mean: float, n_boot: int, rng_seed: int) -> Diff:
    d = _replicates(task, a, b, seeds, n_boot, np.random.default_rng(rng_seed))
    # A replicate is NaN when its resample made a prediction or label vector constant (Pearson/Spearman
    # undefined; only plausible on tiny dev sets).  Such replicates are dropped, and the interval and p
    # use the rest; a seed whose own score is NaN never gets here (see paired_comparison).
    d = d[np.isfinite(d)]
    if d.size == 0:
        return Diff(n_pairs=len(seeds), mean=mean, low=np.nan, high=np.nan, p=np.nan, method="bootstrap")
    low, high = np.percentile(d, [2.5, 97.5])
    n = d.size
    p = min(1.0, 2 * min((np.sum(d <= 0) + 1) / (n + 1), (np.sum(d >= 0) + 1) / (n + 1)))
    return Diff(n_pairs=len(seeds), mean=mean, low=float(low), high=float(high), p=float(p),
                method="bootstrap", n_boot=n_boot)


def boot_size(tests: int, alpha: float, base: int = 2000) -> int:
    """Bootstrap replicates that let the smallest of ``tests`` Holm-corrected p values reach alpha / 5.

    A bootstrap p is at least 2 / (n_boot + 1) and Holm multiplies the smallest by the number of tests:
    with 2000 replicates, 72 tests could never reach 0.05 however large the differences.
    """
    return max(base, int(np.ceil(10 * tests / alpha)))


def paired_comparison(task: Task, a: Mapping[int, SeedPredictions], b: Mapping[int, SeedPredictions],
                      n_boot: int = 2000, rng_seed: int = 0) -> Diff | None:
    """Row A minus baseline B on one task over the seeds both have (None if none), in headline fractions.

    Five or more pairs: paired t test over per-seed headlines.  Fewer: paired bootstrap over seeds and
    dev examples.  Raises ValueError when a paired seed's labels differ between A and B.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    _paired_labels(task, a, b, seeds)
    a_scores, b_scores = _observed(task, a, seeds), _observed(task, b, seeds)
    # The same difference on every seed leaves t without a spread (0/0 or x/0: scipy says NaN or inf);
    # the bootstrap's dev-example resampling still measures how sure that difference is.
    method = "t" if len(seeds) >= MIN_T_PAIRS and np.ptp(a_scores - b_scores) > 1e-9 else "bootstrap"
    mean = float(np.mean(a_scores - b_scores))
    if np.isnan(mean):
        # A seed without a defined score (constant STS-B predictor) leaves the difference undefined;
        # saying NaN beats a figure silently computed over the other seeds only.
        return Diff(n_pairs=len(seeds), mean=mean, low=np.nan, high=np.nan, p=np.nan, method=method)
    if method == "t":
        return _t_diff(a_scores, b_scores)
    return _bootstrap_diff(task, a, b, seeds, mean, n_boot, rng_seed)


def holm_family(test: Callable[..., Diff | None], pairs: Sequence[tuple], alpha: float, base: int) -> list[Diff | None]:
    """``test(*pair, n_boot=...)`` for every pair, Holm-corrected as one family (``Diff.p_holm`` set).

    Every test first runs with ``base`` replicates, which settle p values of alpha and above; a bootstrap
    test whose p could pass alpha runs again with the replicates the family's size needs (``boot_size``).
    """
    diffs = [test(*pair, n_boot=base) for pair in pairs]
    n_boot = boot_size(sum(d is not None and not np.isnan(d.p) for d in diffs), alpha, base)
    diffs = [test(*pair, n_boot=n_boot) if d is not None and d.method == "bootstrap" and d.p < 2 * alpha
             and n_boot > base else d for pair, d in zip(pairs, diffs)]
    adjusted = holm([np.nan if d is None else d.p for d in diffs])
    return [None if d is None else dataclasses.replace(d, p_holm=float(p)) for d, p in zip(diffs, adjusted)]


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p values in input order; NaN entries stay NaN and are not counted in m."""
    # Hand-written: statsmodels (multipletests) is not a dependency and scipy has no Holm.
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"holm takes a flat sequence of p values, got shape {p.shape}")
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0) | (p[valid] > 1)):
        raise ValueError(f"p values must lie in [0, 1]: {p[valid].tolist()}")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(valid)
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    # i-th smallest (0-based) times (m - i); the running maximum keeps the adjusted values monotone.
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(stepped, 1.0)
    return out
