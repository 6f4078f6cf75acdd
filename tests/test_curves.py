"""Training curves: DeepSpeed's CSV monitor on by default, its files merged into the record's curves.csv,
``harness plot`` (and its fallback on records from before curves), the overall progress line of a
run over several recipes, and the monitor settings left out of every hash."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REAL_GLUE, REPO, harness_cli, needs_glue

TWO_PHASES = """\
student: {init: teacher_layers, layers: [0, 2]}
phases:
  - {name: a, objective: [{term: hinton_kd}], training: {epochs: 1}}
  - {name: b, objective: [{term: hinton_kd, alpha: 0.5}, {term: cosine_hidden}]}
training: {epochs: 2, batch_size: 16, lr: 1.0e-3, max_length: 48, max_train_examples: 64, log_every: 2}
speed: {seq_len: 32, throughput_batch: 4, iters: 2}
"""
NOKD = """\
student: {init: teacher_layers, layers: [0]}
objective: [{term: ce}]
training: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_length: 48, max_train_examples: 32, log_every: 1}
speed: {seq_len: 32, throughput_batch: 4, iters: 2}
"""


def test_monitor_settings_leave_every_hash_unchanged():
    """A committed record's hash is its stored recipe's, with its monitor settings, other ones or none
    (as records from before the field existed have)."""
    from harness.hashing import spec_hash
    from harness.records import read_record

    folder = REPO / "results" / "runs" / "glue" / "mrpc" / "kd" / "minilm3L_from_minilm" / "bf16" / "seed0"
    stored = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert spec_hash(stored) == read_record(folder).recipe_hash
    resolved = json.loads(json.dumps(stored))
    del resolved["deepspeed"]["monitor"]
    with_monitor = json.loads(json.dumps(resolved))
    with_monitor["deepspeed"]["monitor"] = {"csv": False, "tensorboard": "tb", "wandb": None}
    assert spec_hash(resolved) == spec_hash(with_monitor) == read_record(folder).recipe_hash
    with_monitor["deepspeed"]["zero_stage"] = 2  # a real setting still counts
    assert spec_hash(with_monitor) != spec_hash(resolved)


def test_a_recipe_with_monitors_set_is_the_same_run(tmp_path):
    """Switching the CSV monitor off (or TensorBoard on) reuses every cached model and record."""
    from harness.plan import load

    recipe = REPO / "recipes" / "quickstart.yaml"
    plain = load(recipe)
    off = load(recipe, ["deepspeed.monitor.csv=false"])
    assert off.recipe.deepspeed.monitor.csv is False and off.resolved(42) != plain.resolved(42)
    assert off.hash(42) == plain.hash(42) and off.teachers[0].folder(42) == plain.teachers[0].folder(42)


def test_monitor_config_and_a_missing_package_is_a_validation_error():
    import importlib.util

    from harness.curves import monitor_config
    from harness.recipe_parts import DeepSpeedSettings, Monitor

    assert DeepSpeedSettings().monitor.csv is True
    cfg = monitor_config(Monitor(), Path("/x/curves/stage0"), "task: 2L seed1")
    assert cfg == {"csv_monitor": {"enabled": True, "output_path": "/x/curves/stage0", "job_name": ""}}
    assert monitor_config(Monitor(csv=False), Path("/x"), "j") == {}
    assert monitor_config(Monitor(), None, "j") == {}  # no checkpoint folder: nowhere to keep CSV files
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ValueError, match="tensorboard package is not installed"):
            Monitor(tensorboard="tb")


def test_resumed_monitor_files_keep_the_later_value_and_skip_repeated_headers(tmp_path):
    from harness.curves import record_files

    stage = tmp_path / "curves" / "stage0"
    stage.mkdir(parents=True)
    # a stage killed after x=64 and resumed from x=32: DeepSpeed writes its header again and repeats x=64
    (stage / "Train_Samples_loss.csv").write_text("step,loss\n32,0.9\n64,0.8\nstep,loss\n64,0.7\n96,0.6\n")
    text = record_files(tmp_path, [("task", None)])["curves.csv"]
    rows = list(csv.DictReader(text.splitlines()))
    assert [(r["examples"], r["value"]) for r in rows] == [("32", "0.9"), ("64", "0.7"), ("96", "0.6")]
    assert record_files(tmp_path / "none", [("task", None)]) == {}


def curves(folder: Path) -> list[dict]:
    with open(folder / "curves.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_card):
    tmp = tmp_path_factory.mktemp("curves")
    teacher = f"teachers:\n  - {{card: {tiny_card}, finetune: {{max_train_examples: 32, epochs: 1}}}}\n"
    for name, body in (("phased", TWO_PHASES), ("nokd", NOKD)):
        (tmp / f"{name}.yaml").write_text(f"name: {name}\ntask: sst2\n{teacher}{body}")
    res = harness_cli("run", str(tmp / "phased.yaml"), str(tmp / "nokd.yaml"), "--results-dir", str(tmp / "results"),
                      "--glue-dir", REAL_GLUE or "", "--no-tables")
    return tmp, res


@needs_glue
def test_every_record_gets_its_curves_and_a_run_says_how_far_it_is(runs):
    tmp, res = runs
    assert res.returncode == 0, res.stderr[-3000:]
    assert "progress: 1 of 2 recipes done, 1 left; 32 training examples left, about" in res.stdout, res.stdout
    assert "examples/s measured so far" in res.stdout and "progress: 2 of 2 recipes done, 0 left" in res.stdout

    run = tmp / "results" / "runs" / "phased" / "seed42"
    m = json.loads((run / "metrics.json").read_text())
    rows = curves(run)
    by = lambda stage, name: [r for r in rows if r["stage"] == str(stage) and r["name"] == name]  # noqa: E731
    for i, phase in enumerate(m["train"]["phases"]):
        assert {r["phase"] for r in rows if r["stage"] == str(i)} == {phase["phase"]}
        # the loss points are the record's loss history, step by step (x = steps x batch of 16)
        assert [float(r["value"]) for r in by(i, "loss")] == pytest.approx([h["loss"] for h in phase["loss_history"]])
        assert [int(r["examples"]) for r in by(i, "loss")] == [16 * h["step"] for h in phase["loss_history"]]
        assert len(by(i, "lr")) == phase["steps"] and len(by(i, "examples_per_s")) == len(phase["loss_history"])
        weights = [float(r["value"]) for r in by(i, "teacher_weight_0")]
        assert weights == [w["mean"][0] for w in phase["teacher_weighting"]["per_epoch"]]
    terms_b = {r["name"] for r in rows if r["stage"] == "1" and r["name"].startswith("loss_")}
    assert terms_b == {"loss_hinton_kd", "loss_cosine_hidden"}
    teacher = next((tmp / "results" / "runs" / "teachers").rglob("metrics.json")).parent
    assert {r["phase"] for r in curves(teacher)} == {"finetune"} and by(0, "lr")


def plot(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m harness plot ...`` in this process (it starts no DeepSpeed): (exit code, stdout, stderr)."""
    from harness.__main__ import main

    code = main(["plot", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_glue
def test_plot_draws_curves_and_falls_back_on_the_loss_history(runs, tmp_path, capsys):
    tmp, res = runs
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp / "results" / "runs" / "phased" / "seed42"
    code, out, _ = plot(capsys, str(run), "--out", str(tmp_path / "c.png"))
    assert code == 0 and f"wrote {tmp_path / 'c.png'}" in out
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    old = tmp_path / "old"  # a record from before curves: no curves.csv
    shutil.copytree(run, old)
    (old / "curves.csv").unlink()
    code, out, _ = plot(capsys, str(old))
    assert code == 0 and "has no curves.csv" in out and (old / "curves.png").is_file()
    m = json.loads((old / "metrics.json").read_text())
    for phase in m["train"]["phases"]:
        phase["loss_history"], phase["teacher_weighting"] = [], None
    m["train"]["loss_history"] = []
    (old / "metrics.json").write_text(json.dumps(m))
    code, _, err = plot(capsys, str(old))
    assert code == 2 and "has no curves: no curves.csv" in err, err
    code, _, err = plot(capsys, str(run.parent))
    assert code == 2 and "plot one of its seeds" in err

