"""harness.metrics against values worked out by hand on tiny inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics import (GlueMetric, compute_metrics, headline, headline_name, metric_names,
                             task_headline)
from harness.registry import UnknownName
from harness.tasks import get_task

# One 2x2 confusion matrix used throughout: TP=3, FN=1, FP=2, TN=4 (10 examples).
REFS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PREDS = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
TP, FN, FP, TN = 3, 1, 2, 4


def test_confusion_matrix_is_what_the_comment_says():
    pairs = list(zip(REFS, PREDS))
    assert (pairs.count((1, 1)), pairs.count((1, 0)), pairs.count((0, 1)), pairs.count((0, 0))) == (TP, FN, FP, TN)


def test_cola_mcc_by_hand():
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 - 2) / sqrt(5*4*6*5) = 10 / sqrt(600)
    expected = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert expected == pytest.approx(10 / math.sqrt(600))
    out = compute_metrics(get_task("cola"), PREDS, REFS)
    assert out == {"matthews_correlation": pytest.approx(expected)}
    assert type(out["matthews_correlation"]) is float


def test_mrpc_f1_and_accuracy_by_hand():
    # precision 3/5, recall 3/4 -> F1 = 2PR/(P+R) = 2*TP/(2*TP+FP+FN) = 6/9; accuracy 7/10
    out = compute_metrics(get_task("mrpc"), PREDS, REFS)
    assert out == {"f1": pytest.approx(6 / 9), "accuracy": pytest.approx(0.7)}
    assert headline("mrpc", out) == pytest.approx((6 / 9 + 0.7) / 2)


def test_f1_is_for_the_positive_class():
    # Swapping the classes changes F1 (now of the old negatives: 2*4/(2*4+1+2) = 8/11), not accuracy.
    out = compute_metrics("qqp", [1 - p for p in PREDS], [1 - r for r in REFS])
    assert out == {"f1": pytest.approx(8 / 11), "accuracy": pytest.approx(0.7)}


def test_f1_never_predicting_positive_is_zero():
    assert compute_metrics("mrpc", [0, 0, 0], [1, 0, 0])["f1"] == 0.0


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte", "wnli", "mnli"])
def test_accuracy_tasks(task):
    out = compute_metrics(task, [0, 1, 2, 1] if task == "mnli" else [0, 1, 1, 1],
                          [0, 1, 1, 0] if task == "mnli" else [0, 1, 0, 0])
    assert out == {"accuracy": 0.5}
    assert headline(task, out) == 0.5
    assert headline_name(task) == ("Acc, mean of matched/mismatched" if task == "mnli" else "Acc")


def test_stsb_pearson_spearman_by_hand():
    pred = [1.0, 2.0, 3.0, 4.0]
    ref = [1.0, 2.0, 3.0, 5.0]
    # Pearson: deviations of pred (-1.5,-.5,.5,1.5), of ref (-1.75,-.75,.25,2.25):
    # cross-products 2.625 + .375 + .125 + 3.375 = 6.5, squares 5 and 8.75 -> 6.5 / sqrt(43.75).
    # Ranks agree exactly -> Spearman 1.
    out = compute_metrics("stsb", pred, ref)
    assert out["pearson"] == pytest.approx(6.5 / math.sqrt(5 * 8.75))
    assert out["spearmanr"] == pytest.approx(1.0)
    assert headline("stsb", out) == pytest.approx((6.5 / math.sqrt(43.75) + 1.0) / 2)
    # A regression head's (n, 1) output is accepted as is.
    assert compute_metrics("stsb", np.array(pred)[:, None], ref) == out


def test_headline_names():
    assert [headline_name(t) for t in ("cola", "mrpc", "qqp", "stsb", "mnli")] == \
        ["MCC", "F1/Acc", "F1/Acc", "Pearson/Spearman", "Acc, mean of matched/mismatched"]
    assert metric_names("stsb") == ("pearson", "spearmanr")


def test_headline_needs_all_metrics():
    with pytest.raises(KeyError, match="accuracy"):
        headline("mrpc", {"f1": 0.9})


def test_mnli_task_headline_averages_both_dev_sets():
    by_split = {"dev_matched": {"accuracy": 0.84}, "dev_mismatched": {"accuracy": 0.82}}
    assert task_headline("mnli", by_split) == pytest.approx(0.83)
    with pytest.raises(KeyError, match="dev_mismatched"):
        task_headline("mnli", {"dev_matched": {"accuracy": 0.84}})


def test_task_headline_single_split():
    assert task_headline("mrpc", {"dev": {"f1": 0.9, "accuracy": 0.8}}) == pytest.approx(0.85)


def test_input_checks():
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        compute_metrics("sst2", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="argmax"):
        compute_metrics("sst2", [[0.2, 0.8], [0.9, 0.1]], [1, 0])
    with pytest.raises(ValueError, match="class ids"):
        compute_metrics("sst2", [0.2, 0.8], [1, 0])
    with pytest.raises(ValueError, match="zero examples"):
        compute_metrics("sst2", [], [])


def test_glue_metric_mirrors_evaluate():
    metric = GlueMetric("mrpc")
    out = metric.compute(predictions=PREDS, references=REFS)
    assert out == compute_metrics("mrpc", PREDS, REFS)
    assert set(out) == {"f1", "accuracy"}
    assert GlueMetric("mnli_mismatched").compute(predictions=[0, 2], references=[0, 1]) == {"accuracy": 0.5}
    assert GlueMetric("stsb").compute(predictions=np.array([0.0, 1.0, 2.5]), references=[0.0, 1.0, 2.5]) == \
        {"pearson": pytest.approx(1.0), "spearmanr": pytest.approx(1.0)}
    with pytest.raises(TypeError):
        metric.compute(PREDS, REFS)  # keyword-only, as in evaluate
    with pytest.raises(UnknownName):
        GlueMetric("hans")
