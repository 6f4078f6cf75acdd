"""harness.study_stats_core against scikit-learn/scipy computed independently, and values worked by hand."""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from harness.metrics import compute_metrics, headline, task_headline
from harness.batch_metrics import headline_batch
from harness.study_stats_core import boot_size, collapse, holm, holm_family, paired_comparison
from harness.study_table import Diff, Flag
from harness.tasks import get_task

# A three-class task scored by MCC: no GLUE task is, but the vectorised MCC must handle it.
MNLI_MCC = dataclasses.replace(get_task("mnli"), metrics=("matthews_correlation",))


def _reference(task, preds, labels):
    """Row by row through harness.metrics (scipy and sklearn warn on constant rows; they are the point)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        return np.array([headline(task, compute_metrics(task, p, y)) for p, y in zip(preds, labels)])


def _random_rows(task, rng, rows=40, n=30):
    if task.is_regression:
        # Rounded to a coarse grid so both sides have ties, which Spearman must rank as averages.
        return np.round(rng.uniform(0, 5, (rows, n)) * 2) / 2, np.round(rng.uniform(0, 5, (rows, n)))
    return rng.integers(0, task.num_labels, (rows, n)), rng.integers(0, task.num_labels, (rows, n))


@pytest.mark.parametrize("task", [get_task(t) for t in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli")]
                         + [MNLI_MCC], ids=lambda t: "/".join(t.metrics) + f"-{t.num_labels}")
def test_headline_batch_equals_compute_metrics_row_by_row(task):
    preds, labels = _random_rows(task, np.random.default_rng(1))
    got = headline_batch(task, preds, labels)
    assert got.shape == (len(preds),)
    np.testing.assert_allclose(got, _reference(task, preds, labels), rtol=0, atol=1e-12)
    assert len(np.unique(got)) > 5  # the rows really differ: equality above is not one value repeated


@pytest.mark.parametrize("name", ["cola", "mrpc", "stsb", "sst2"])
def test_headline_batch_constant_rows_match_sklearn_and_scipy(name):
    task = get_task(name)
    labels = np.array([[0, 1, 1, 0, 1, 0], [1, 0, 1, 1, 0, 0], [0, 1, 0, 1, 1, 0], [2, 2, 2, 2, 2, 2]], float)
    preds = np.array([[0] * 6, [1] * 6, [0, 1, 1, 0, 0, 1], [1, 2, 3, 4, 5, 6]], float)
    if not task.is_regression:  # the last row: no positive predicted nor labelled (sklearn's zero_division)
        labels, preds = labels.astype(int), preds.astype(int)
        labels[3], preds[3] = 0, 0
    got = headline_batch(task, preds, labels)
    np.testing.assert_allclose(got, _reference(task, preds, labels), rtol=0, atol=1e-12, equal_nan=True)
    if name == "cola":
        assert got[0] == 0.0 and got[1] == 0.0  # constant predictions: MCC 0
    if name == "mrpc":
        assert got[0] == pytest.approx((0 + 3 / 6) / 2)  # no predicted positives: F1 0, accuracy 1/2
        assert got[3] == 0.5  # F1 0 by zero_division, accuracy 1
    if name == "stsb":
        assert np.isnan(got[0]) and np.isnan(got[1]) and np.isnan(got[3]) and not np.isnan(got[2])


def test_headline_batch_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        headline_batch(get_task("sst2"), np.zeros((2, 3), int), np.zeros((2, 4), int))


def _classes(share_of_zero_per_mille):
    return np.array([0] * share_of_zero_per_mille + [1] * (1000 - share_of_zero_per_mille))


def test_collapse_one_class_at_exactly_95_percent():
    sst2 = get_task("sst2")
    labels = np.zeros(1000, int)
    flag = collapse(sst2, {"dev": (_classes(950), labels)}, seed=7)
    assert flag == Flag(seed=7, kind="one class", share=0.95)
    assert collapse(sst2, {"dev": (_classes(949), labels)}) is None
    # the majority may be any class, not only 0
    assert collapse(sst2, {"dev": (1 - _classes(30), labels)}).share == pytest.approx(0.97)


def test_collapse_default_seed_is_a_placeholder():
    flag = collapse(get_task("sst2"), {"dev": (np.ones(20, int), np.zeros(20, int))})
    assert flag.seed == -1 and dataclasses.replace(flag, seed=3).seed == 3


def test_collapse_pools_mnli_splits():
    mnli = get_task("mnli")
    # matched alone is 100 % class 2 and mismatched 90 %: pooled 0.95 exactly, flagged
    matched = (np.full(500, 2), np.zeros(500, int))
    mismatched = (np.array([2] * 450 + [0] * 50), np.zeros(500, int))
    assert collapse(mnli, {"dev_matched": matched, "dev_mismatched": mismatched}).share == 0.95
    # 99.6 % and 90 %: pooled 94.8 %, not flagged although matched alone would be
    matched = (np.array([2] * 498 + [1] * 2), np.zeros(500, int))
    mismatched = (np.array([2] * 450 + [1] * 50), np.zeros(500, int))
    assert collapse(mnli, {"dev_matched": matched, "dev_mismatched": mismatched}) is None
    assert collapse(mnli, {"dev_matched": matched}).share == pytest.approx(0.996)


@pytest.mark.parametrize("ratio, flagged", [(0.09, True), (0.11, False)])
def test_collapse_flat_regression(ratio, flagged):
    rng = np.random.default_rng(0)
    labels = rng.normal(2.5, 1.3, 400)
    preds = 3.0 + ratio * (labels - labels.mean())  # std(preds) / std(labels) == ratio
    flag = collapse(get_task("stsb"), {"dev": (preds, labels)}, seed=2)
    assert (flag is not None) == flagged
    if flagged:
        assert flag.kind == "flat" and flag.share == pytest.approx(0.09)


def _accuracy_seed(n_correct, n=100, split="dev"):
    """Predictions with exactly n_correct right answers out of n alternating 0/1 labels."""
    labels = np.arange(n) % 2
    preds = np.where(np.arange(n) < n_correct, labels, 1 - labels)
    return {split: (preds, labels)}


def test_t_path_by_hand():
    # per-seed accuracy differences 1..5 / 100: mean 0.03, sd sqrt(2.5)/100, t_{0.975,4} = 2.776
    a = {s: _accuracy_seed(50 + s) for s in range(1, 6)}
    b = {s: _accuracy_seed(50) for s in range(1, 6)}
    diff = paired_comparison(get_task("sst2"), a, b)
    half = 2.776 * math.sqrt(2.5) / 100 / math.sqrt(5)
    assert diff.method == "t" and diff.n_pairs == 5
    assert diff.mean == pytest.approx(0.03)
    assert (diff.low, diff.high) == (pytest.approx(0.03 - half, abs=1e-5), pytest.approx(0.03 + half, abs=1e-5))
    t = 0.03 / (math.sqrt(2.5) / 100 / math.sqrt(5))  # 4.243 on 4 df: p between 0.01 and 0.02
    assert diff.p == pytest.approx(2 * stats.t.sf(t, 4)) and 0.01 < diff.p < 0.02


def test_t_path_equals_scipy_on_random_mrpc_seeds():
    rng = np.random.default_rng(3)
    mrpc = get_task("mrpc")
    labels = rng.integers(0, 2, 80)
    a = {s: {"dev": (np.where(rng.random(80) < 0.8, labels, 1 - labels), labels)} for s in range(6)}
    b = {s: {"dev": (np.where(rng.random(80) < 0.7, labels, 1 - labels), labels)} for s in range(1, 8)}
    diff = paired_comparison(mrpc, a, b)
    seeds = range(1, 6)  # only the seeds both have
    ha = [headline(mrpc, compute_metrics(mrpc, *a[s]["dev"])) for s in seeds]
    hb = [headline(mrpc, compute_metrics(mrpc, *b[s]["dev"])) for s in seeds]
    res = stats.ttest_rel(ha, hb)
    ci = res.confidence_interval(0.95)
    assert diff == Diff(n_pairs=5, mean=pytest.approx(np.mean(np.subtract(ha, hb))), low=pytest.approx(ci.low),
                        high=pytest.approx(ci.high), p=pytest.approx(res.pvalue), method="t")


def test_no_common_seed_gives_none():
    assert paired_comparison(get_task("sst2"), {1: _accuracy_seed(60)}, {2: _accuracy_seed(50)}) is None


def test_identical_systems_give_zero_and_p_one():
    sst2 = get_task("sst2")
    for seeds in (range(3), range(6)):
        runs = {s: _accuracy_seed(55 + s) for s in seeds}
        diff = paired_comparison(sst2, runs, runs, n_boot=300)
        assert (diff.mean, diff.low, diff.high, diff.p) == (0.0, 0.0, 0.0, 1.0)
        # no spread over seeds: t would divide by zero, so the bootstrap over dev examples says it
        assert diff.method == "bootstrap" and diff.n_boot == 300


def test_the_same_difference_on_every_seed_gets_a_finite_interval():
    # A is right on 5 more of 100 examples than B on each of 6 seeds: scipy's t is inf, its interval NaN
    a = {s: _accuracy_seed(70 + s) for s in range(6)}
    b = {s: _accuracy_seed(65 + s) for s in range(6)}
    diff = paired_comparison(get_task("sst2"), a, b, n_boot=1000)
    assert diff.method == "bootstrap" and diff.mean == pytest.approx(0.05)
    assert 0 < diff.low < 0.05 < diff.high < 0.1 and diff.p < 0.05


def test_boot_size_lets_the_smallest_holm_p_reach_a_fifth_of_alpha():
    assert boot_size(1, 0.05) == 2000  # the base suffices for a few tests
    n = boot_size(72, 0.05)  # the zoo: 12 rows against the baseline on 6 tasks
    assert n == 14400 and 72 * 2 / (n + 1) <= 0.05 / 5
    assert 72 * 2 / (2000 + 1) > 0.05  # what 2000 replicates could never show


def _better_everywhere(rng, n=200, seeds=(0, 1, 2)):
    labels = rng.integers(0, 2, n)
    a = {s: {"dev": (labels.copy(), labels)} for s in seeds}  # always right
    b = {s: {"dev": (np.where(rng.random(n) < 0.7, labels, 1 - labels), labels)} for s in seeds}
    return a, b


def test_bootstrap_system_better_on_every_example():
    a, b = _better_everywhere(np.random.default_rng(5))
    diff = paired_comparison(get_task("sst2"), a, b, n_boot=500)
    observed = np.mean([1 - np.mean(b[s]["dev"][0] == b[s]["dev"][1]) for s in b])
    assert diff.method == "bootstrap" and diff.n_pairs == 3
    assert diff.mean == pytest.approx(observed)
    assert 0 < diff.low < diff.mean < diff.high
    assert diff.p == pytest.approx(2 / 501)  # no replicate at or below 0: the smallest p 500 replicates give


def test_bootstrap_is_reproducible_for_a_seed():
    a, b = _better_everywhere(np.random.default_rng(6))
    sst2 = get_task("sst2")
    first = paired_comparison(sst2, a, b, n_boot=400, rng_seed=11)
    assert paired_comparison(sst2, a, b, n_boot=400, rng_seed=11) == first
    assert paired_comparison(sst2, a, b, n_boot=400, rng_seed=12) != first


def test_bootstrap_pairs_examples_one_seed():
    # A equals B except 100 of 1000 examples that only A gets right.  Paired per-example differences are
    # 0/1 with mean 0.1: 95 % width ~ 2 * 1.96 * 0.3 / sqrt(1000) = 0.037 (a 90 % one: 16 % less).
    # Resampling A and B independently (pairing lost) would give about twice that.  1000 x 2000 cells take two chunks.
    labels = np.arange(1000) % 2
    b_pred = np.where(np.arange(1000) < 700, labels, 1 - labels)  # 70 % right
    a_pred = np.where(np.arange(1000) < 800, labels, 1 - labels)  # those and 100 more
    diff = paired_comparison(get_task("rte"), {0: {"dev": (a_pred, labels)}}, {0: {"dev": (b_pred, labels)}},
                             n_boot=2000)
    assert diff.n_pairs == 1 and diff.mean == pytest.approx(0.1)
    assert diff.high - diff.low == pytest.approx(2 * 1.96 * 0.3 / math.sqrt(1000), rel=0.08)


def test_bootstrap_resamples_seeds():
    # Seed 0: A right and B wrong everywhere (difference 1 on any example resample); seed 1: A == B
    # (difference 0).  Resampling two seeds gives means 0, 0.5, 1 with chances 1/4, 1/2, 1/4, so the
    # interval spans [0, 1] and p = 2 * P(d <= 0) ~ 0.5.  Without seed resampling every value is 0.5.
    labels = np.arange(50) % 2
    a = {0: {"dev": (labels, labels)}, 1: {"dev": (labels, labels)}}
    b = {0: {"dev": (1 - labels, labels)}, 1: {"dev": (labels, labels)}}
    diff = paired_comparison(get_task("sst2"), a, b, n_boot=2000)
    assert (diff.mean, diff.low, diff.high) == (0.5, 0.0, 1.0)
    assert diff.p == pytest.approx(0.5, abs=0.06)


def test_bootstrap_needs_the_same_examples_for_every_seed():
    a = {0: _accuracy_seed(60), 1: _accuracy_seed(60, n=90)}
    with pytest.raises(ValueError, match="seeds were scored on different labels"):
        paired_comparison(get_task("sst2"), a, a)
    with pytest.raises(ValueError, match="n_boot"):
        paired_comparison(get_task("sst2"), {0: _accuracy_seed(60)}, {0: _accuracy_seed(60)}, n_boot=0)


def test_bootstrap_mnli_is_the_mean_of_both_splits():
    mnli = get_task("mnli")
    labels = np.arange(300) % 3
    same = labels.copy()
    half_right = np.where(np.arange(300) < 150, labels, (labels + 1) % 3)
    a = {0: {"dev_matched": (same, labels), "dev_mismatched": (half_right, labels)}}
    b = {0: {"dev_matched": (half_right, labels), "dev_mismatched": (half_right, labels)}}
    diff = paired_comparison(mnli, a, b, n_boot=300)
    assert diff.mean == pytest.approx(0.25)  # +0.5 on matched, 0 on mismatched
    assert diff.low < 0.25 < diff.high and diff.high - diff.low < 0.15


def test_mismatched_labels_raise():
    a = {0: _accuracy_seed(60)}
    labels = a[0]["dev"][1].copy()
    labels[0] = 1 - labels[0]
    with pytest.raises(ValueError, match="different labels"):
        paired_comparison(get_task("sst2"), a, {0: {"dev": (a[0]["dev"][0], labels)}})


def test_stsb_constant_predictor_makes_the_comparison_nan():
    rng = np.random.default_rng(8)
    labels = rng.uniform(0, 5, 50)
    a = {0: {"dev": (np.full(50, 2.5), labels)}}
    b = {0: {"dev": (labels + rng.normal(0, 1, 50), labels)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        diff = paired_comparison(get_task("stsb"), a, b, n_boot=100)
    assert diff.n_pairs == 1 and all(math.isnan(v) for v in (diff.mean, diff.low, diff.high, diff.p))


def test_stsb_bootstrap_drops_the_occasional_constant_resample():
    # Four examples: about 1.6 % of resamples draw one example four times, a constant vector (NaN).
    labels = np.array([0.5, 1.5, 3.0, 4.5])
    a = {0: {"dev": (np.array([0.4, 1.7, 2.9, 4.4]), labels)}}
    b = {0: {"dev": (np.array([1.0, 0.8, 3.5, 4.0]), labels)}}
    diff = paired_comparison(get_task("stsb"), a, b, n_boot=1000)
    assert all(math.isfinite(v) for v in (diff.mean, diff.low, diff.high, diff.p))
    assert diff.mean == pytest.approx(task_headline("stsb", {"dev": compute_metrics("stsb", *a[0]["dev"])})
                                      - task_headline("stsb", {"dev": compute_metrics("stsb", *b[0]["dev"])}))


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


def test_holm_nan_stays_and_is_not_counted():
    got = holm([0.01, float("nan"), 0.04, 0.03])  # m = 3: 0.03, 0.06, 0.06
    assert math.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2, 3]], [0.03, 0.06, 0.06])


def test_holm_caps_at_one_and_handles_edges():
    np.testing.assert_allclose(holm([0.5, 0.6, 0.7]), [1.0, 1.0, 1.0])
    assert holm([]).shape == (0,)
    assert holm([0.2]).tolist() == [0.2]
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_holm_family_raises_replicates_only_where_p_could_pass_alpha():
    """72 bootstrap tests at 2000 replicates: the smallest possible p, 2/2001, Holm-corrected is 0.072."""
    calls = []

    def test(i, n_boot):
        calls.append((i, n_boot))
        if i == 0:
            return None  # no common seed
        floor = 2 / (n_boot + 1)  # every replicate on one side of zero: the smallest p this n_boot gives
        return Diff(n_pairs=3, mean=0.1, low=0.05, high=0.15, p=floor if i < 5 else 0.5, method="bootstrap",
                    n_boot=n_boot)

    diffs = holm_family(test, [(i,) for i in range(73)], alpha=0.05, base=2000)
    assert diffs[0] is None and len(diffs) == 73
    raised = sorted(i for i, n in calls if n > 2000)
    assert raised == [1, 2, 3, 4] and {n for _, n in calls if n > 2000} == {boot_size(72, 0.05)}
    assert all(d.p_holm < 0.05 for d in diffs[1:5])  # with 2000 replicates each would be 72 * 2 / 2001
    assert all(d.n_boot == 2000 and d.p_holm == 1.0 for d in diffs[5:])
    assert diffs[1].p_holm == pytest.approx(72 * 2 / (boot_size(72, 0.05) + 1))
