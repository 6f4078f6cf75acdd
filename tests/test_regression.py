"""Regression suite (``tox -e regression``): small real recipes with the real all-MiniLM-L6-v2 teacher,
their dev scores compared with stored figures.  Update the figures on purpose only:
``KD_REGRESSION_UPDATE=1 tox -e regression`` rewrites tests/regression/expected.json."""
import json
import os
from pathlib import Path

import pytest

from conftest import REAL_GLUE, harness_cli, needs_glue

HERE = Path(__file__).parent / "regression"
EXPECTED = HERE / "expected.json"
TOLERANCE = 0.02  # CPU runs are seeded; this absorbs thread-order and library-version noise only


@pytest.mark.regression
@needs_glue
@pytest.mark.parametrize("recipe", sorted(p.name for p in HERE.glob("*.yaml")))
def test_recipe_matches_stored_figures(recipe, tmp_path, cache):
    results = tmp_path / "results"
    res = harness_cli("run", str(HERE / recipe), "--results-dir", str(results), "--glue-dir", REAL_GLUE, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    got = {}
    for f in (results / "runs").rglob("metrics.json"):
        m = json.loads(f.read_text())
        got[f"{m['kind']}:{m['name']}:{m['task']}"] = m["score"]
    expected = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {}
    if os.environ.get("KD_REGRESSION_UPDATE") == "1":
        EXPECTED.write_text(json.dumps(expected | got, indent=2, sort_keys=True) + "\n")
        return
    for key, score in got.items():
        assert key in expected, f"no stored figure for {key}; run with KD_REGRESSION_UPDATE=1"
        assert score == pytest.approx(expected[key], abs=TOLERANCE), key
