"""Recipe validation: every malformed recipe is one clear message naming file and field, no traceback,
in under 5 seconds, and nothing in the YAML runs."""
import json
import time

import pytest

from conftest import REPO, harness_cli
from harness.hashing import spec_hash as recipe_hash
from harness.plan import load
from harness.schema import ConfigError

GOOD = """\
task: sst2
teachers:
  - card: all-MiniLM-L6-v2
student:
  init: teacher_layers
  layers: [0, 2, 4]
objective:
  - term: hinton_kd
    temperature: 2.0
    alpha: 0.5
training:
  lr: 5.0e-5
  batch_size: 32
"""

CONFIG_STUDENT = GOOD.replace("init: teacher_layers\n  layers: [0, 2, 4]",
                              "init: config\n  layers: 3\n  hidden: 256\n  heads: 4\n  ffn: 512").replace(
    "    alpha: 0.5\n", "    alpha: 0.5\n{extra}")
PHASES = GOOD.split("objective:")[0] + """phases:
  - name: general
    corpus: {}
    progressive: {lower: freeze}
    training: {}
    objective: [{general}]
  - name: task
    objective: [{term: ce}]
"""

BAD = {
    "unknown_key": (GOOD + "optimiser: adamw\n", r"\(top level\): unknown key 'optimiser'"),
    "misspelled_nested": (GOOD.replace("  lr: 5.0e-5", "  lrr: 5.0e-5"),
                          r"training: unknown key 'lrr' \(did you mean 'lr'\?\)"),
    "wrong_type": (GOOD.replace("batch_size: 32", "batch_size: lots"), r"training\.batch_size: .*integer.*'lots'"),
    "negative_lr": (GOOD.replace("lr: 5.0e-5", "lr: -1.0e-4"), r"training\.lr: Input should be greater than 0"),
    "missing_card": (GOOD.replace("card: all-MiniLM-L6-v2", "card: all-MiniLM-L6-v3"),
                     r"teachers\[0\]\.card: unknown teacher card 'all-MiniLM-L6-v3'\. Did you mean 'all-MiniLM-L6-v2'"),
    "yaml_syntax": (GOOD.replace("layers: [0, 2, 4]", "layers: [0, 2, 4"), r":\d+:\d+: YAML syntax error"),
    "python_tag": (GOOD + "evil: !!python/object/apply:os.system ['touch {marker}']\n",
                   r":\d+:\d+: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    "bad_term_param": (GOOD.replace("temperature: 2.0", "temprature: 2.0"),
                       r"objective\[0\]: hinton_kd: unknown key 'temprature' \(did you mean 'temperature'\?\)"),
    "unknown_term": (GOOD.replace("term: hinton_kd", "term: hinton"), r"objective\[0\]: unknown objective term 'hinton'"),
    "layer_past_depth": (GOOD.replace("[0, 2, 4]", "[0, 2, 6]"), r"student\.layers: \[6\] past the depth of all-MiniLM-L6-v2"),
    "missing_checkpoint": (GOOD.replace("init: teacher_layers\n  layers: [0, 2, 4]", "init: pretrained\n  checkpoint: ./nowhere"),
                           r"student\.checkpoint: no model folder \(config\.json\) at"),
    "unknown_task": (GOOD.replace("task: sst2", "task: sst3"), r"task: unknown task 'sst3'"),
    # layer maps, widths and heads are checked against the teacher card and the student's shape
    "layer_map_past_teacher_depth": (GOOD.replace("    alpha: 0.5\n", "    alpha: 0.5\n  - {term: hidden_mse, layer_map: [1, 3, 7]}\n"),
                                     r"objective\[1\]\.layer_map: teacher blocks \[7\] past the teacher's depth \(6 blocks"),
    "width_mismatch_no_projection": (CONFIG_STUDENT.replace("{extra}", "  - {term: hidden_mse, projection: false}\n"),
                                     r"objective\[1\]\.projection: student hidden width 256 differs from teacher hidden width 384"),
    "head_mismatch_attention": (CONFIG_STUDENT.replace("{extra}", "  - {term: attention_kl}\n"),
                                r"objective\[1\]\.term: .*the student has 4 heads and the teacher 12"),
    "objective_and_phases": (GOOD + "phases: [{name: a, objective: [{term: ce}]}]\n", r"give either 'objective'"),
    "logit_term_in_corpus_phase": (PHASES.replace("{general}", "{term: hinton_kd}"),
                                   r"phases\[0\]\.objective\[0\]: hinton_kd needs task labels or logits"),
    "progressive_without_layer_map": (PHASES.replace("{general}", "{term: minilmv2, relation_heads: 7}"),
                                      r"phases\[0\]\.objective\[0\]\.relation_heads: 7 does not divide"),
    "phase_training_typo": (PHASES.replace("{general}", "{term: hidden_mse}").replace("training: {}", "training: {epoch: 1}"),
                            r"phases\[0\]\.training: unknown key 'epoch' \(did you mean 'epochs'\?\)"),
    "student_init_typo": (GOOD.replace("  init: teacher_layers", "  initx: teacher_layers"),
                          r"student: missing 'init' \(how the student is built: one of teacher_layers, pretrained, "
                          r"config\); unknown key 'initx' \(did you mean 'init'\?\)"),
    "student_init_value": (GOOD.replace("init: teacher_layers", "init: teacher_layer"),
                           r"student: init: 'teacher_layer' is not a way to build a student \(did you mean "
                           r"'teacher_layers'\?\)"),
    "assistant_training_typo": (GOOD.replace("teachers:\n  - card: all-MiniLM-L6-v2\n", "assistants:\n  - name: ta\n"
                                             "    teachers: [{card: all-MiniLM-L6-v2}]\n    student: {init: teacher_layers, "
                                             "layers: [0, 2, 4]}\n    objective: [{term: hinton_kd}]\n    training: "
                                             "{epochz: 1}\nteachers: [{stage: ta}]\n").replace(
                                    "init: teacher_layers\n  layers", "init: teacher_layers\n  card: all-MiniLM-L6-v2\n  layers"),
                                r"assistants\[0\]\.training: unknown key 'epochz' \(did you mean 'epochs'\?\)"),
    "teacher_finetune_typo": (GOOD.replace("  - card: all-MiniLM-L6-v2\n", "  - card: all-MiniLM-L6-v2\n    finetune: {max_train: 9}\n"),
                              r"teachers\[0\]\.finetune: unknown key 'max_train' \(did you mean 'max_train_examples'\?\)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_is_rejected_in_one_message(case, tmp_path):
    marker = tmp_path / "executed"
    text, pattern = BAD[case]
    recipe = tmp_path / f"{case}.yaml"
    recipe.write_text(text.replace("{marker}", str(marker)))
    start = time.monotonic()
    res = harness_cli("validate", str(recipe))
    elapsed = time.monotonic() - start
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith(f"error: {recipe}")
    assert pytest.importorskip("re").search(pattern, res.stderr), res.stderr
    # a loose bound, not a speed goal: validation loads no model weights, so it never takes minutes
    # (the CLI's own start-up, torch and DeepSpeed imports, is seconds on a loaded 2-core machine)
    assert elapsed < 30, f"validation took {elapsed:.1f}s"
    assert not marker.exists(), "the YAML executed code"


def test_every_shipped_recipe_validates():
    recipes = sorted(str(p) for p in (REPO / "recipes").rglob("*.yaml")
                     if not any(part.startswith("_") for part in p.parts))  # partials: _zoo.yaml, _methods/
    res = harness_cli("validate", *recipes)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("ok  ") == len(recipes)


def test_resolved_recipe_fills_defaults(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(GOOD)
    r = load(p).recipe
    d = r.resolved()
    assert d["objective"][0] == {"term": "hinton_kd", "weight": 1.0, "params": {"temperature": 2.0, "alpha": 0.5, "combine": "mixture"}}
    assert d["deepspeed"]["zero_stage"] == 0 and d["training"]["warmup_ratio"] == 0.1
    # a resolved recipe loads back to the same thing
    from harness.recipe import Recipe

    assert Recipe.model_validate(d).resolved() == d


def test_hash_ignores_logging_and_loader_workers_only(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(GOOD)
    d = load(p).recipe.resolved()
    assert "log_every" in d["training"] and "loader_workers" in d["training"]
    h = recipe_hash(d)

    def changed(**training):
        e = json.loads(json.dumps(d))
        e["training"] |= training
        return recipe_hash(e)

    assert changed(log_every=3, loader_workers=2) == h
    assert changed(lr=1e-3) != h and changed(max_length=16) != h
    # the same inside a phase's partial overrides
    phase = {"phases": [{"name": "task", "training": {"log_every": 1}}]}
    other = {"phases": [{"name": "task", "training": {"log_every": 9}}]}
    assert recipe_hash(d | phase) == recipe_hash(d | other) != recipe_hash(d)


def test_operational_fields_are_hashed_at_the_schema_defaults():
    from harness.hashing import OPERATIONAL
    from harness.recipe_parts import Training

    assert OPERATIONAL == {k: Training.model_fields[k].default for k in OPERATIONAL}


def test_overrides_keep_their_values_as_written(tmp_path):
    """Typed overrides dump as written (epochs: 2 stays 2), so hashes of specs from before they were
    typed still match and nothing cached is retrained."""
    p = tmp_path / "r.yaml"
    p.write_text(GOOD.replace("  - card: all-MiniLM-L6-v2\n", "  - card: all-MiniLM-L6-v2\n    finetune: {epochs: 2}\n"))
    d = load(p).recipe.resolved()
    assert d["teachers"][0]["finetune"] == {"epochs": 2} and json.dumps(d["teachers"][0]["finetune"]) == '{"epochs": 2}'


def test_teacher_terms_need_a_teacher(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(GOOD.replace("teachers:\n  - card: all-MiniLM-L6-v2\n", "teachers: []\n"))
    with pytest.raises(ConfigError, match="need a teacher"):
        load(p).recipe


def test_glob_with_no_match_is_an_error(tmp_path):
    res = harness_cli("validate", str(tmp_path / "*.yaml"))
    assert res.returncode == 2 and "no recipe matches" in res.stderr
