"""One end-to-end run with the real pretrained all-MiniLM-L6-v2 teacher on an SST-2 subset."""
import json

import pytest

from conftest import REAL_GLUE, harness_cli, needs_glue
from test_regression import HERE


@pytest.mark.slow
@needs_glue
def test_real_teacher_and_kd_student_on_sst2_subset(tmp_path, cache):
    results = tmp_path / "results"
    res = harness_cli("run", str(HERE / "sst2_minilm_kd.yaml"), "--results-dir", str(results), "--glue-dir", REAL_GLUE,
                      timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    teacher = json.loads(next((results / "runs" / "teachers").rglob("metrics.json")).read_text())
    student = json.loads(next((results / "runs" / "regression").rglob("metrics.json")).read_text())
    # 1,000 examples, 2 epochs: far from the full-data 0.89, but clearly learned (chance is ~0.5)
    assert teacher["score"] > 0.75, teacher["score"]
    assert student["score"] > 0.72, student["score"]
    assert teacher["params"]["total"] == 22_713_986  # all-MiniLM-L6-v2 + a 2-class head
    assert student["params"]["total"] < teacher["params"]["total"]
    assert student["teacher_speed"]["cpu"]["latency_ms"] > 0
    assert harness_cli("verify", "--results-dir", str(results)).returncode == 0
