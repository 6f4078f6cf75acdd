"""``harness compare``: two table rows paired by task and seed, each task weighed once, ties out of the
sign test.  The expected figures are worked out by hand in the comments."""
from __future__ import annotations

import pytest
from conftest import harness_cli
from test_tables import record

from harness.compare import report
from harness.schema import ConfigError

# (row, task, seed, score)
RUNS = [("a", "sst2", 42, 0.80), ("a", "sst2", 43, 0.82), ("a", "sst2", 44, 0.84),
        ("b", "sst2", 42, 0.79), ("b", "sst2", 43, 0.83), ("b", "sst2", 44, 0.80),
        ("a", "cola", 42, 0.40), ("b", "cola", 42, 0.30),
        ("a", "cola", 43, 0.36), ("b", "cola", 43, 0.36),  # a tie
        ("a", "rte", 42, 0.60)]  # b never ran RTE


@pytest.fixture
def results(tmp_path):
    for row, task, seed, score in RUNS:
        record(tmp_path, f"glue/{task}/{row}/s/seed{seed}", kind="student", name=f"glue/{task}/{row}/s",
               model=f"s-{row}", score=score, seed=seed, task=task)
    return tmp_path


def body(text: str) -> dict[str, list[str]]:
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Task")}


def test_pairs_by_task_and_seed_and_weighs_each_task_once(results):
    text = report(results, "a/s", "b/s")
    rows = body(text)
    # columns: Seeds, a/s, b/s, Difference, Wins–losses
    # CoLA: a 40, 36 -> 38.0; b 30, 36 -> 33.0; differences +10, 0
    assert rows["CoLA"] == ["42, 43", "38.0", "33.0", "+5.0 ± 7.1", "1–0"]
    # SST-2: differences +1, -1, +4: mean 4/3, std sqrt(((1/3)^2 + (7/3)^2 + (8/3)^2) / 2) = 2.52
    assert rows["SST-2"] == ["42, 43, 44", "82.0", "80.7", "+1.3 ± 2.5", "2–1"]
    # each task once: a (38 + 82) / 2 = 60.0, b (33 + 80.67) / 2 = 56.8, difference (5 + 1.33) / 2 = 3.2
    assert rows["Mean over 2 tasks"] == ["5 pairs", "60.0", "56.8", "+3.2", "3–1"]
    # 3 wins in the 4 pairs that differ: P(X >= 3) = (4 + 1) / 16, two-sided 0.625
    assert "(1 ties left out): a/s scores higher in 3; two-sided p = 0.625." in text
    assert "Unpaired records, left out: a/s: RTE seed 42." in text
    assert "RTE" not in rows


def test_swapping_the_rows_flips_the_signs_not_the_p_value(results):
    rows = body(text := report(results, "b/s", "a/s"))
    assert rows["Mean over 2 tasks"] == ["5 pairs", "56.8", "60.0", "-3.2", "1–3"]
    assert "two-sided p = 0.625." in text


def test_an_unknown_row_is_an_error_with_a_suggestion(results):
    with pytest.raises(ConfigError, match="Did you mean 'a/s'"):
        report(results, "a/t", "b/s")
    out = harness_cli("compare", "a/s", "c/s", "--results-dir", str(results))
    assert out.returncode == 2 and "no table row 'c/s'" in out.stderr


def test_rows_sharing_no_task_and_seed_are_an_error(tmp_path):
    record(tmp_path, "glue/sst2/a/s/seed42", kind="student", name="glue/sst2/a/s", model="s-a", score=0.8)
    record(tmp_path, "glue/sst2/b/s/seed43", kind="student", name="glue/sst2/b/s", model="s-b", score=0.8, seed=43)
    with pytest.raises(ConfigError, match="share no task and seed"):
        report(tmp_path, "a/s", "b/s")
