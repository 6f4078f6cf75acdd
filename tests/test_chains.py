"""Teacher-assistant chains: validation of stage references, and a real 3-stage chain (MiniLM-L6 ->
4-block assistant -> 2-block student) on SST-2 whose second recipe reuses the cached assistant."""
import json

import pytest

from conftest import REAL_GLUE, harness_cli, needs_glue
from harness.plan import load
from harness.schema import ConfigError

CHAIN = """
task: sst2
assistants:
  - name: ta4
    teachers: [{card: all-MiniLM-L6-v2, finetune: {max_train_examples: 96, max_length: 32, epochs: 1}}]
    student: {init: teacher_layers, layers: [0, 2, 3, 5]}
    objective: [{term: hinton_kd, temperature: 2.0, alpha: 0.5}]
teachers: [{stage: ta4}]
student: {init: teacher_layers, card: all-MiniLM-L6-v2, layers: [0, 5]}
objective: [{term: hinton_kd, temperature: TEMP, alpha: 0.5}]
training: {max_train_examples: 96, max_length: 32, epochs: 1, batch_size: 16, seed: 3}
speed: {seq_len: 16, throughput_batch: 4, iters: 1}
"""


@pytest.mark.parametrize("edit, match", [
    (("teachers: [{stage: ta4}]", "teachers: [{stage: ta5}]"), r"teachers\[0\]\.stage: no assistant named 'ta5'"),
    (("card: all-MiniLM-L6-v2, layers: [0, 5]", "layers: [0, 5]"), "student.card: needed when the first teacher"),
    (("teachers: [{stage: ta4}]", "teachers: [{stage: ta4, card: all-MiniLM-L6-v2}]"), "either 'card' or 'stage'"),
    (("layers: [0, 2, 3, 5]", "layers: [0, 2, 3, 6]"), r"assistants\[0\]\.student\.layers: \[6\] past the depth"),
    # the 2-block student maps onto the 4-block assistant: block 3 of it exists, block 4 does not
    (("objective: [{term: hinton_kd, temperature: TEMP", "objective: [{term: hidden_mse, layer_map: [1, 4]}, "
      "{term: hinton_kd, temperature: TEMP"), r"objective\[0\]\.layer_map: teacher blocks \[4\] past the teacher's depth \(4"),
])
def test_chain_validation(tmp_path, edit, match):
    p = tmp_path / "chain.yaml"
    p.write_text(CHAIN.replace(*edit).replace("TEMP", "2.0"))
    with pytest.raises(ConfigError, match=match):
        load(p).recipe


def test_stage_recipe_keeps_only_what_it_builds_on(tmp_path):
    p = tmp_path / "chain.yaml"
    p.write_text(CHAIN.replace("TEMP", "2.0").replace("teachers: [{stage: ta4}]", """\
  - name: ta3
    teachers: [{stage: ta4}, {card: all-MiniLM-L6-v2}]
    student: {init: teacher_layers, card: all-MiniLM-L6-v2, layers: [0, 3, 5]}
    objective: [{term: hinton_kd}]
teachers: [{stage: ta3}]"""))
    r = load(p).recipe
    ta3 = r.stage_recipe("ta3")
    assert [a.name for a in ta3.assistants] == ["ta4"] and ta3.name == "stages/sst2/ta3"
    assert r.stage_recipe("ta4").assistants == []
    assert ta3.training.max_train_examples == 96  # the recipe's training, inherited


@pytest.mark.slow
@needs_glue
def test_three_stage_chain_on_sst2_reuses_its_assistant(tmp_path, cache):
    results = tmp_path / "results"
    first, second = tmp_path / "t2.yaml", tmp_path / "t4.yaml"
    first.write_text(CHAIN.replace("TEMP", "2.0"))
    second.write_text(CHAIN.replace("TEMP", "4.0"))  # another student recipe naming the same stage
    res = harness_cli("run", str(first), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "task: ta4" in res.stderr  # the assistant was trained (its progress bar)
    m = json.loads((results / "runs" / "t2" / "seed3" / "metrics.json").read_text())
    assert m["lineage"] == ["all-MiniLM-L6-v2", "ta4", "2L-from-all-MiniLM-L6-v2"]
    stage = json.loads(next((results / "runs" / "stages" / "sst2" / "ta4").rglob("metrics.json")).read_text())
    assert stage["kind"] == "stage" and stage["lineage"][0] == "all-MiniLM-L6-v2"
    assert m["lineage"][:-1] == stage["lineage"]
    # the assistant it read, by the hash of its weights: the stage record's own instance
    assert m["teachers"] == [{"stage": "ta4", "weight": 1.0, "instance": stage["instance"]}]

    res = harness_cli("run", str(second), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "reusing the trained assistant" in res.stdout
    assert "task: ta4" not in res.stderr  # no assistant training the second time
    glue = (results / "glue.md").read_text()
    assert "assistant stage: ta4" in glue and " → ".join(m["lineage"]) in glue
    assert harness_cli("verify", "--results-dir", str(results)).returncode == 0
