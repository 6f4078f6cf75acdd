"""General phases trained once per seed and shared by every task (harness.general_cache): which phases
qualify, that the encoder a task's student starts from does not depend on the task, and, through the
CLI, that a second task reuses the first one's entry and gets exactly what training them again gives."""
import json
import shutil

import pytest
import torch

from conftest import REAL_GLUE, REPO, harness_cli, needs_glue
from harness.general_cache import general_count


def _plan(tmp_path, tiny_card, body: str):
    from harness.plan import load

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: rte\nteachers: [{{card: {tiny_card}}}]\nstudent: {{init: teacher_layers, layers: [1, 3]}}\n"
                      + body)
    return load(recipe)


def test_only_leading_phases_on_text_of_no_task_are_shared(tmp_path, tiny_card):
    tinybert = _plan(tmp_path, tiny_card, f"defaults: {REPO / 'recipes/glue/_methods/tinybert.yaml'}\n")
    assert [p.name for _, p in tinybert.recipe.named_phases()] == ["general", "intermediate", "prediction"]
    assert general_count(tinybert) == 1
    phases = ("phases:\n  - {{name: g, corpus: {corpus}, objective: [{{term: hidden_mse}}]}}\n"
              "  - {{name: t, objective: [{{term: ce}}]}}\n")
    assert general_count(_plan(tmp_path, tiny_card, phases.format(corpus="{glue: [mrpc]}"))) == 1
    assert general_count(_plan(tmp_path, tiny_card, phases.format(corpus="{}"))) == 0  # the task's own text
    assert general_count(_plan(tmp_path, tiny_card, "objective: [{term: ce}]\n")) == 0


@pytest.mark.parametrize("student", [
    {"init": "config", "layers": 2, "hidden": 32, "heads": 2, "ffn": 64},
    {"init": "config", "architecture": "mobilebert", "layers": 2, "hidden": 32, "bottleneck": 16, "heads": 2,
     "ffn": 24, "embedding": 8},
])
def test_a_students_encoder_starts_the_same_on_every_task(tiny_card, student):
    from harness.models import build_student
    from pydantic import TypeAdapter

    from harness.recipe_students import Student
    from harness.tasks import get_task
    from harness.teachers import load_card

    card, s = load_card(tiny_card), TypeAdapter(Student).validate_python(student)
    cola, _, _ = build_student(s, card, get_task("cola"), seed=3)
    stsb, _, _ = build_student(s, card, get_task("stsb"), seed=3)
    assert cola.config.num_labels == 2 and stsb.config.num_labels == 1
    a, b = cola.base_model.state_dict(), stsb.base_model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def _run(tmp_path, tiny_card, task: str, results) -> dict:
    base = tmp_path / f"_{task}.yaml"
    base.write_text(f"task: {task}\nteachers:\n  - {{card: {tiny_card}, finetune: {{max_train_examples: 32, epochs: 1}}}}\n"
                    "student: {init: config, layers: 2, hidden: 32, heads: 4, ffn: 64}\n"  # narrower: projections
                    "training: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_length: 32, max_train_examples: 48}\n"
                    "speed: {seq_len: 16, throughput_batch: 2, iters: 1}\n")
    recipe = tmp_path / f"tinybert_{task}.yaml"
    recipe.write_text(f"defaults: [_{task}.yaml, {REPO / 'recipes/glue/_methods/tinybert.yaml'}]\nname: gc-{task}\n")
    res = harness_cli("run", str(recipe), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    assert res.returncode == 0, res.stderr[-4000:]
    folder = results / "runs" / f"gc-{task}" / "seed42"
    return {"record": json.loads((folder / "metrics.json").read_text()), "out": res.stdout,
            "preds": sorted(p.read_text() for p in (folder / "predictions").iterdir())}


@needs_glue
def test_a_second_task_reuses_the_general_phase_and_gets_what_training_it_gives(tmp_path, tiny_card, cache):
    shutil.rmtree(cache / "general", ignore_errors=True)
    first = _run(tmp_path, tiny_card, "stsb", tmp_path / "a")  # a regression task: one label, where rte has two
    (entry,) = (cache / "general").iterdir()
    encoder = json.loads((entry / "manifest.json").read_text())["files"]["encoder.safetensors"]["sha256"]
    assert first["record"]["train"]["phases"][0].get("reused_from") is None
    reused = _run(tmp_path, tiny_card, "rte", tmp_path / "b")
    general = reused["record"]["train"]["phases"][0]
    assert general["reused_from"] == entry.name and "reused" in reused["out"]
    # its record still says what the phase cost: the stats of the run that trained it
    assert {k: v for k, v in general.items() if k != "reused_from"} == first["record"]["train"]["phases"][0]
    shutil.rmtree(entry)
    trained = _run(tmp_path, tiny_card, "rte", tmp_path / "c")
    assert trained["record"]["train"]["phases"][0].get("reused_from") is None and (cache / "general" / entry.name).is_dir()
    # the phase trained on rte's run came out the very weights stsb's did: nothing of the task reached them
    # (not the head's size, which draws from the random stream before the phase's projections do)
    assert json.loads((entry / "manifest.json").read_text())["files"]["encoder.safetensors"]["sha256"] == encoder
    # the same student either way: the task head is the fresh one, the encoder the same weights
    assert trained["preds"] == reused["preds"]
    assert trained["record"]["dev"] == reused["record"]["dev"]
    timing = ("wall_time_s", "samples_per_s", "teacher_cache")  # the second run of a task reads cached teacher outputs

    def later(run):
        return [{k: v for k, v in p.items() if k not in timing} for p in run["record"]["train"]["phases"][1:]]
    assert later(trained) == later(reused)


# the recipe's body (after its task) and the examples one seed's shared general phase trains on
GENERAL_IN = {
    "student": (f"defaults: {REPO / 'recipes/glue/_methods/tinybert.yaml'}\n"
                "teachers: [{{card: {card}}}]\nstudent: {{init: teacher_layers, layers: [1, 3]}}\n",
                40 * 2),  # 40 lines (the cap below), 2 epochs
    "assistant": ("assistants:\n  - name: a\n    teachers: [{{card: {card}}}]\n"
                  "    student: {{init: teacher_layers, layers: [1, 3]}}\n"
                  "    phases:\n      - {{name: g, corpus: {{glue: all, max_examples: 30}}, "
                  "objective: [{{term: hidden_mse}}]}}\n      - {{name: t, objective: [{{term: hinton_kd}}]}}\n"
                  "teachers: [{{stage: a}}]\nstudent: {{init: teacher_layers, card: {card}, layers: [1]}}\n"
                  "objective: [{{term: hinton_kd}}]\n",
                  30 * 3),  # 30 lines, 3 epochs (the default)
}


@needs_glue
@pytest.mark.parametrize("where", sorted(GENERAL_IN))
def test_a_study_plan_counts_a_shared_general_phase_once_per_seed(tmp_path, tiny_card, where):
    from pathlib import Path

    from harness.plan import load
    from harness.study_cost import SharedGeneral, Speeds, cell_cost

    body, general = GENERAL_IN[where]
    plans = []
    for task in ("mrpc", "rte"):
        recipe = tmp_path / f"{task}.yaml"
        recipe.write_text(f"task: {task}\ntraining: {{max_train_examples: 40}}\n" + body.format(card=tiny_card))
        plans.append(load(recipe))
    speeds, glue = Speeds(tmp_path / "results"), Path(REAL_GLUE)
    alone = [cell_cost(p, [0, 1], speeds, glue).examples for p in plans]
    shared = SharedGeneral(glue, None)
    together = [cell_cost(p, [0, 1], speeds, glue, shared).examples for p in plans]
    assert together == [alone[0], alone[1] - 2 * general]  # two seeds, each its own general phase
    assert cell_cost(plans[1], [0, 1], speeds, glue, shared).examples == alone[1] - 2 * general  # counted already
