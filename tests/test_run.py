"""The real CLI end to end on a tiny random BERT: teacher fine-tuning, distillation, records, tables,
skipping, several ranks.  No mocks: DeepSpeed, transformers and datasets all run for real."""
import csv
import json
from pathlib import Path

import pytest

from conftest import FIXTURE_GLUE, REAL_GLUE, harness_cli, needs_glue


def recipe(tmp: Path, name: str, card: Path, task: str, body: str) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(f"name: {name}\ntask: {task}\nteachers:\n  - card: {card}\n{body}")
    return p


KD = """\
student: {init: teacher_layers, layers: [0, 2]}
objective:
  - {term: hinton_kd, temperature: 2.0, alpha: 0.5}
training: {epochs: 2, batch_size: 16, lr: 1.0e-3, max_length: 48, max_train_examples: 192, log_every: 4}
speed: {seq_len: 32, throughput_batch: 4, iters: 2}
"""


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@needs_glue
def test_kd_run_writes_records_and_tables_then_skips(tmp_path, tiny_card):
    r = recipe(tmp_path, "tiny-kd", tiny_card, "sst2", KD)
    results = tmp_path / "results"
    res = harness_cli("run", str(r), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    assert res.returncode == 0, res.stderr[-3000:]

    run = results / "runs" / "tiny-kd" / "seed42"
    m = json.loads((run / "metrics.json").read_text())
    assert m["kind"] == "student" and m["task"] == "sst2" and m["lineage"] == ["tiny-bert", "2L-from-tiny-bert"]
    assert m["train"]["train_examples"] == 192 and m["train"]["steps"] == 24
    assert m["size_bytes"] > 4 * m["params"]["total"]  # fp32 safetensors: 4 bytes a parameter + header
    assert set(m["speed"]["cpu"]) >= {"latency_ms", "throughput"}
    hist = m["train"]["loss_history"]
    assert hist[-1]["loss"] < hist[0]["loss"], hist  # it learns something from the teacher

    preds = read_tsv(run / "predictions" / "dev.tsv")
    assert [int(p["index"]) for p in preds] == list(range(872))
    assert (run / "recipe.yaml").exists()
    env = json.loads((run / "env.json").read_text())
    assert env["packages"]["deepspeed"] and env["packages"]["torch"] and env["device"] == "cpu"

    teacher_runs = list((results / "runs" / "teachers" / "tiny-bert" / "sst2").iterdir())
    assert len(teacher_runs) == 1
    tm = json.loads((teacher_runs[0] / "metrics.json").read_text())
    assert tm["kind"] == "teacher" and tm["train"]["train_examples"] == 256
    assert m["params"]["non_embedding"] < tm["params"]["non_embedding"]  # 2 of the teacher's 4 layers
    assert m["teacher_speed"] == tm["speed"]

    glue_md = (results / "glue.md").read_text()
    assert "tiny-kd" in glue_md and "teacher (fine-tuned, cap 256): tiny-bert" in glue_md and "SST-2" in glue_md
    speed_md = (results / "speed.md").read_text()
    assert "2L-from-tiny-bert" in speed_md and "tiny-bert" in speed_md

    ver = harness_cli("verify", "--results-dir", str(results))
    assert ver.returncode == 0 and "2 of 2 records follow the schema and match their predictions" in ver.stdout, ver.stdout

    rt = harness_cli("retime", "--results-dir", str(results))
    assert rt.returncode == 0 and "re-timed 2 records" in rt.stdout, rt.stdout + rt.stderr
    again_m = json.loads((run / "metrics.json").read_text())
    assert "retimed" in again_m["speed"] and again_m["dev"] == m["dev"]
    assert again_m["teacher_speed"] == json.loads((teacher_runs[0] / "metrics.json").read_text())["speed"]

    again = harness_cli("run", str(r), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped: record exists" in again.stdout
    assert "train " not in again.stderr  # no training progress bar: nothing was trained

    # a changed recipe is a different run: not skipped
    r.write_text(r.read_text().replace("alpha: 0.5", "alpha: 0.6"))
    changed = harness_cli("run", str(r), "--results-dir", str(results), "--glue-dir", REAL_GLUE, "--no-tables")
    assert changed.returncode == 0 and "skipped" not in changed.stdout


@needs_glue
def test_two_cpu_ranks_score_every_dev_example_once(tmp_path, tiny_card):
    body = KD.replace("max_train_examples: 192", "max_train_examples: 128")
    r = recipe(tmp_path, "tiny-kd-2proc", tiny_card, "sst2", body)
    results = tmp_path / "results"
    res = harness_cli("run", str(r), "--results-dir", str(results), "--glue-dir", REAL_GLUE, "--nprocs", "2",
                      "--master-port", "29561")
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    run = results / "runs" / "tiny-kd-2proc" / "seed42"
    m = json.loads((run / "metrics.json").read_text())
    assert m["train"]["world_size"] == 2
    idx = [int(p["index"]) for p in read_tsv(run / "predictions" / "dev.tsv")]
    assert idx == list(range(872))
    assert harness_cli("verify", "--results-dir", str(results)).returncode == 0


def test_mnli_two_dev_splits_and_stsb_regression_on_fixtures(tmp_path, tiny_card):
    tiny = "training: {epochs: 1, batch_size: 2, lr: 1.0e-3, max_length: 48}\nspeed: {seq_len: 16, throughput_batch: 2, iters: 1}\n"
    mnli = recipe(tmp_path, "mnli-nokd", tiny_card, "mnli",
                  "student: {init: config, layers: 1, hidden: 16, heads: 2, ffn: 32}\nobjective: [{term: ce}]\n" + tiny)
    stsb = recipe(tmp_path, "stsb-kd", tiny_card, "stsb",
                  "student: {init: teacher_layers, layers: [3]}\nobjective: [{term: hinton_kd}]\n" + tiny)
    results = tmp_path / "results"
    res = harness_cli("run", str(mnli), str(stsb), "--results-dir", str(results), "--glue-dir", str(FIXTURE_GLUE))
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((results / "runs" / "mnli-nokd" / "seed42" / "metrics.json").read_text())
    assert set(m["dev"]) == {"dev_matched", "dev_mismatched"}
    # no term reads the teacher: it is timed for the speed-up column but never fine-tuned
    assert not (results / "runs" / "teachers" / "tiny-bert" / "mnli").exists()
    assert m["teacher_scores"] == {} and m["teacher_speed"]["cpu"]["latency_ms"] > 0
    assert (results / "runs" / "teachers" / "tiny-bert" / "stsb").exists()  # the KD recipe's teacher is fine-tuned
    assert m["score"] == pytest.approx((m["dev"]["dev_matched"]["accuracy"] + m["dev"]["dev_mismatched"]["accuracy"]) / 2)
    s = json.loads((results / "runs" / "stsb-kd" / "seed42" / "metrics.json").read_text())
    assert set(s["dev"]["dev"]) == {"pearson", "spearmanr"}
    preds = read_tsv(results / "runs" / "stsb-kd" / "seed42" / "predictions" / "dev.tsv")
    assert all("." in p["prediction"] for p in preds)  # scores, not classes
    assert harness_cli("verify", "--results-dir", str(results)).returncode == 0
    table = (results / "glue.md").read_text()
    assert "MNLI" in table and "STS-B" in table


def test_zero_stages_train_and_save_full_students(tmp_path, tiny_card):
    body = ("student: {init: teacher_layers, layers: [1]}\nobjective: [{term: hinton_kd}]\n"
            "training: {epochs: 1, batch_size: 2, max_length: 32}\nspeed: {seq_len: 8, throughput_batch: 2, iters: 1}\n")
    paths = [recipe(tmp_path, f"zero{z}", tiny_card, "sst2", body + f"deepspeed: {{zero_stage: {z}}}\n") for z in (0, 1, 2, 3)]
    results = tmp_path / "results"
    res = harness_cli("run", *map(str, paths), "--results-dir", str(results), "--glue-dir", str(FIXTURE_GLUE))
    assert res.returncode == 0, res.stderr[-3000:]
    params = {z: json.loads((results / "runs" / f"zero{z}" / "seed42" / "metrics.json").read_text())["params"]["total"]
              for z in (0, 1, 2, 3)}
    assert len(set(params.values())) == 1 and params[0] > 0, params  # ZeRO-3 shards are gathered before saving


@pytest.mark.slow
def test_compiled_student_trains_like_the_eager_one(tmp_path, tiny_card):
    """training.compile: the student's forward runs through torch.compile, hooks for intermediate terms
    included.  Same weights and batch at step 1 as the eager run, and no dropout (compiled code would
    draw its masks from another generator), so the first loss agrees to rounding: a broken forward
    would not."""
    import shutil

    nodrop = tmp_path / "nodrop"
    shutil.copytree(tiny_card.parent, nodrop)
    cfg = json.loads((nodrop / "model" / "config.json").read_text())
    cfg |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (nodrop / "model" / "config.json").write_text(json.dumps(cfg))
    card = nodrop / "tiny-bert-nodrop.yaml"
    card.write_text(tiny_card.read_text().replace("name: tiny-bert\n", "name: tiny-bert-nodrop\n"))
    body = ("student: {init: teacher_layers, layers: [0, 2]}\n"
            "objective: [{term: hinton_kd}, {term: hidden_mse, layer_map: [1, 3]}]\n"
            "training: {epochs: 1, batch_size: 8, max_length: 32, max_train_examples: 32, log_every: 1, "
            "compile: COMPILE}\nspeed: {seq_len: 8, throughput_batch: 2, iters: 1}\n")
    paths = [recipe(tmp_path, f"c-{c}", card, "sst2", body.replace("COMPILE", c)) for c in ("false", "true")]
    results = tmp_path / "results"
    res = harness_cli("run", *map(str, paths), "--results-dir", str(results), "--glue-dir", str(FIXTURE_GLUE))
    assert res.returncode == 0, res.stderr[-3000:]
    eager, compiled = (json.loads((results / "runs" / f"c-{c}" / "seed42" / "metrics.json").read_text())["train"]
                       for c in ("false", "true"))
    assert compiled["compiled"] and not eager["compiled"] and compiled["attention"] == "sdpa"
    assert compiled["loss_history"][0]["loss"] == pytest.approx(eager["loss_history"][0]["loss"], rel=1e-3)


def test_loader_workers_give_the_same_run(tmp_path, tiny_card):
    """Batches collated in worker processes are the very batches of the in-process loop: same losses."""
    body = KD.replace("log_every: 4}", "log_every: 1, loader_workers: WORKERS}")
    paths = [recipe(tmp_path, f"w{w}", tiny_card, "sst2", body.replace("WORKERS", str(w))) for w in (0, 2)]
    results = tmp_path / "results"
    res = harness_cli("run", *map(str, paths), "--results-dir", str(results), "--glue-dir", str(FIXTURE_GLUE))
    assert res.returncode == 0, res.stderr[-3000:]
    hist = [json.loads((results / "runs" / f"w{w}" / "seed42" / "metrics.json").read_text())["train"]["loss_history"]
            for w in (0, 2)]
    assert len(hist[0]) > 1 and hist[0] == hist[1]


def test_a_run_on_other_task_files_retrains_teacher_and_student(tmp_path, tiny_card):
    """Cached teachers and kept records are keyed by what they learnt, not only by the recipe: pointed at
    other SST-2 files (a subsample, a full set), the harness trains both again and records the data."""
    import shutil

    from harness.glue_files import data_id

    other = tmp_path / "glue"
    shutil.copytree(FIXTURE_GLUE, other)
    with open(other / "SST-2" / "train.tsv", "a") as f:
        f.write("a new sentence that the fixture lacks\t1\n")
    r = recipe(tmp_path, "tiny-kd-data", tiny_card, "sst2", KD)
    results = tmp_path / "results"
    run = results / "runs" / "tiny-kd-data" / "seed42"
    for glue, again in ((FIXTURE_GLUE, False), (other, True)):
        res = harness_cli("run", str(r), "--results-dir", str(results), "--glue-dir", str(glue))
        assert res.returncode == 0, res.stderr[-3000:]
        assert ("trained on other data" in res.stdout) == again, res.stdout
        assert ("rerunning: a record exists but it read other data" in res.stdout) == again, res.stdout
        m = json.loads((run / "metrics.json").read_text())
        assert m["data"] == data_id("sst2", glue) and m["train"]["train_examples"] == 3 + again
        teacher = next((results / "runs" / "teachers" / "tiny-bert" / "sst2").iterdir())
        tm = json.loads((teacher / "metrics.json").read_text())
        assert tm["data"] == m["data"] and tm["train"]["train_examples"] == 3 + again
    assert data_id("sst2", FIXTURE_GLUE) != data_id("sst2", other)
