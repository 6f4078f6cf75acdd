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
from harness.study_stats_core import collapse, holm, holm_family, paired_comparison, seeds_t
from harness.study_table import MIXED, T_SEEDS, Diff, Flag
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
                        high=pytest.approx(ci.high), p=pytest.approx(res.pvalue), method=T_SEEDS)


def test_no_common_seed_gives_none():
    assert paired_comparison(get_task("sst2"), {1: _accuracy_seed(60)}, {2: _accuracy_seed(50)}) is None


def test_identical_systems_give_zero_and_p_one():
    sst2 = get_task("sst2")
    for seeds in (range(3), range(6)):
        runs = {s: _accuracy_seed(55 + s) for s in seeds}
        diff = paired_comparison(sst2, runs, runs, n_boot=300)
        assert (diff.mean, diff.low, diff.high, diff.p) == (0.0, 0.0, 0.0, 1.0)
        # no spread over seeds: t would divide by zero, so the bootstrap over dev examples says it
        assert diff.method == MIXED and diff.n_boot == 300


def test_the_same_difference_on_every_seed_gets_a_finite_interval():
    # A is right on 5 more of 100 examples than B on each of 6 seeds: scipy's t is inf, its interval NaN
    a = {s: _accuracy_seed(70 + s) for s in range(6)}
    b = {s: _accuracy_seed(65 + s) for s in range(6)}
    diff = paired_comparison(get_task("sst2"), a, b, n_boot=1000)
    assert diff.method == MIXED and diff.mean == pytest.approx(0.05)
    assert 0 < diff.low < 0.05 < diff.high < 0.1 and diff.p < 0.05


def test_seeds_t_by_hand():
    # d = 0.02, 0.04, 0.06: mean 0.04, var(d) = 0.0004, / 3 = 0.000133; with v_ex = 0.0004,
    # se = sqrt(0.000533) = 0.02309, t = 1.732 on 2 df: p = 0.2254, half-width 4.303 * 0.02309 = 0.0994
    low, high, p = seeds_t(0.04, 0.0004, np.array([0.02, 0.04, 0.06]))
    assert p == pytest.approx(0.2254, abs=1e-4)
    assert (low, high) == (pytest.approx(0.04 - 0.09935, abs=1e-4), pytest.approx(0.04 + 0.09935, abs=1e-4))
    # no example variance: exactly scipy's paired t test over the seeds
    res = stats.ttest_1samp([0.02, 0.04, 0.06], 0.0)
    ci = res.confidence_interval(0.95)
    assert seeds_t(0.04, 0.0, np.array([0.02, 0.04, 0.06])) == (pytest.approx(ci.low), pytest.approx(ci.high),
                                                                 pytest.approx(res.pvalue))
    assert seeds_t(0.0, 0.0, np.zeros(3)) == (0.0, 0.0, 1.0)  # nothing varies and nothing differs


def _null_table(rng, seeds=3, n=1000, skill=0.75, seed_sd=0.05):
    """Two rows of the same skill, each seed's skill drawn around it: no true difference."""
    labels = rng.integers(0, 2, n)

    def seed():
        right = rng.random(n) < skill + rng.normal(0, seed_sd)
        return {"dev": (np.where(right, labels, 1 - labels), labels)}
    return {s: seed() for s in range(seeds)}, {s: seed() for s in range(seeds)}


def test_few_seeds_do_not_make_a_null_difference_significant():
    """Where seeds vary more than the dev examples, resampling 3 seeds with replacement made 18 % of
    these null comparisons significant at 0.05 (the spread of 3 seeds understated by a third, and 10
    distinct seed draws); the seeds' own variance on 2 degrees of freedom keeps it at or under 5 %."""
    rng = np.random.default_rng(0)
    p = np.array([paired_comparison(get_task("sst2"), *_null_table(rng), n_boot=200, rng_seed=i).p
                  for i in range(200)])
    assert np.mean(p < 0.05) <= 0.05
    assert 0.3 < np.median(p) < 0.8  # not a test that never rejects because it returns p = 1


def _better_everywhere(rng, n=200, seeds=(0, 1, 2)):
    labels = rng.integers(0, 2, n)
    a = {s: {"dev": (labels.copy(), labels)} for s in seeds}  # always right
    b = {s: {"dev": (np.where(rng.random(n) < 0.7, labels, 1 - labels), labels)} for s in seeds}
    return a, b


def test_bootstrap_system_better_on_every_example():
    a, b = _better_everywhere(np.random.default_rng(5))
    diff = paired_comparison(get_task("sst2"), a, b, n_boot=500)
    observed = np.mean([1 - np.mean(b[s]["dev"][0] == b[s]["dev"][1]) for s in b])
    assert diff.method == MIXED and diff.n_pairs == 3 and diff.n_boot == 500
    assert diff.mean == pytest.approx(observed)
    assert 0 < diff.low < diff.mean < diff.high
    assert diff.p < 0.01


def test_bootstrap_is_reproducible_for_a_seed():
    a, b = _better_everywhere(np.random.default_rng(6))
    sst2 = get_task("sst2")
    first = paired_comparison(sst2, a, b, n_boot=400, rng_seed=11)
    assert paired_comparison(sst2, a, b, n_boot=400, rng_seed=11) == first
    assert paired_comparison(sst2, a, b, n_boot=400, rng_seed=12) != first


def test_bootstrap_pairs_examples():
    # A equals B except 100 of 1000 examples that only A gets right, on both seeds alike (no seed
    # variance: the interval is the examples' alone, on t with 1 df).  Paired per-example differences are
    # 0/1 with mean 0.1, standard error 0.3 / sqrt(1000): 95 % width 2 * 12.71 * 0.0095 = 0.24.
    # Resampling A and B independently (pairing lost) would give about twice that.  1000 x 2000 cells
    # take two chunks.
    labels = np.arange(1000) % 2
    b_pred = np.where(np.arange(1000) < 700, labels, 1 - labels)  # 70 % right
    a_pred = np.where(np.arange(1000) < 800, labels, 1 - labels)  # those and 100 more
    a, b = ({s: {"dev": (pred, labels)} for s in (0, 1)} for pred in (a_pred, b_pred))
    diff = paired_comparison(get_task("rte"), a, b, n_boot=2000)
    assert diff.n_pairs == 2 and diff.mean == pytest.approx(0.1)
    assert diff.high - diff.low == pytest.approx(2 * stats.t.ppf(0.975, 1) * 0.3 / math.sqrt(1000), rel=0.08)


def test_one_seed_pair_gets_a_difference_and_no_test():
    a, b = _better_everywhere(np.random.default_rng(4), seeds=(0,))
    diff = paired_comparison(get_task("sst2"), a, b)
    assert diff.n_pairs == 1 and diff.mean > 0
    assert all(math.isnan(v) for v in (diff.low, diff.high, diff.p))


def test_seed_spread_comes_from_the_seeds():
    # Seed 0: A right and B wrong everywhere (difference 1 on any example resample); seed 1: A == B
    # (difference 0).  No example variance: the paired t test over the two seeds, t = 1 on 1 df, p = 0.5,
    # interval 0.5 +- 12.71 * 0.5.  (Resampling the two seeds instead gave the interval [0, 1].)
    labels = np.arange(50) % 2
    a = {0: {"dev": (labels, labels)}, 1: {"dev": (labels, labels)}}
    b = {0: {"dev": (1 - labels, labels)}, 1: {"dev": (labels, labels)}}
    diff = paired_comparison(get_task("sst2"), a, b, n_boot=2000)
    res = stats.ttest_rel([1.0, 1.0], [0.0, 1.0])
    ci = res.confidence_interval(0.95)
    assert (diff.mean, diff.low, diff.high, diff.p) == (0.5, pytest.approx(ci.low), pytest.approx(ci.high),
                                                        pytest.approx(res.pvalue))
    assert diff.p == pytest.approx(0.5)


def test_bootstrap_needs_the_same_examples_for_every_seed():
    a = {0: _accuracy_seed(60), 1: _accuracy_seed(60, n=90)}
    with pytest.raises(ValueError, match="seeds were scored on different labels"):
        paired_comparison(get_task("sst2"), a, a)
    with pytest.raises(ValueError, match="n_boot"):
        paired_comparison(get_task("sst2"), {0: _accuracy_seed(60)}, {0: _accuracy_seed(60)}, n_boot=1)


def test_bootstrap_mnli_is_the_mean_of_both_splits():
    mnli = get_task("mnli")
    labels = np.arange(300) % 3
    same = labels.copy()
    half_right = np.where(np.arange(300) < 150, labels, (labels + 1) % 3)
    # three seeds alike: width 2 * 4.30 (t, 2 df) * 0.5 / sqrt(300) / 2 (two splits, one moving) = 0.12
    a = {s: {"dev_matched": (same, labels), "dev_mismatched": (half_right, labels)} for s in range(3)}
    b = {s: {"dev_matched": (half_right, labels), "dev_mismatched": (half_right, labels)} for s in range(3)}
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
    a = {s: {"dev": (np.array([0.4, 1.7, 2.9, 4.4]), labels)} for s in (0, 1)}
    b = {s: {"dev": (np.array([1.0, 0.8, 3.5, 4.0]), labels)} for s in (0, 1)}
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


def test_holm_family_corrects_the_tests_it_ran():
    def test(i):
        if i == 0:
            return None  # no common seed
        return Diff(n_pairs=3, mean=0.1, low=0.05, high=0.15, p=[0.01, 0.04, 0.03, 0.005][i - 1], method=MIXED)

    diffs = holm_family(test, [(i,) for i in range(5)])
    assert diffs[0] is None
    np.testing.assert_allclose([d.p_holm for d in diffs[1:]], [0.03, 0.06, 0.06, 0.02])  # as test_holm_by_hand
    assert [d.p for d in diffs[1:]] == [0.01, 0.04, 0.03, 0.005]
