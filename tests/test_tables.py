"""Tables from records written the way runs write them: reruns of a teacher or assistant stage are
separate rows (never averaged as if they were seeds), a classifier that predicts one class for every dev
example is marked, and speed-ups name the teacher they are against."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from conftest import run_record
from harness.records import write_record
from harness.results import build_tables

ENV = {"device": "cpu"}


def speed(latency_ms: float) -> dict:
    return {"seq_len": 128, "throughput_batch": 32,
            "cpu": {"device": "x86_64", "dtype": "float32", "latency_ms": latency_ms, "throughput": 1.0, "threads": 2}}


def record(results: Path, where: str, *, kind: str, name: str, model: str, score: float, seed: int = 42,
           teachers: list | None = None, teacher_speed: dict | None = None, latency: float = 10.0,
           resolved: dict | None = None, predictions: list | None = None, task: str = "sst2",
           terms: list | None = None) -> None:
    metrics = run_record(kind=kind, name=name, task=task, model=model, lineage=[model],
                         teachers=[t | {"weight": 1.0} for t in teachers or []], terms=terms or ["ce"], seed=seed,
                         dev={"dev": {"accuracy": score}}, score=score, speed=speed(latency),
                         teacher_speed=teacher_speed)
    rows = predictions or [[0, 1, 1], [1, 0, 0]]
    write_record(results / "runs" / where, resolved or {"teacher_checkpoints": []}, metrics, {"dev": rows}, ENV)


def teacher(results: Path, spec: str, score: float, latency: float = 100.0) -> None:
    record(results, f"teachers/big/sst2/{spec}", kind="teacher", name="teacher/big", model="big", score=score,
           latency=latency, resolved={"finetune": {"max_train_examples": 2000}})


def rows(results: Path) -> pd.DataFrame:
    build_tables(results)
    return pd.read_csv(results / "glue.csv")


def test_two_fine_tunes_of_one_teacher_and_seed_are_two_rows_not_a_mean(tmp_path):
    teacher(tmp_path, "aaaaaa111111", 0.90)
    teacher(tmp_path, "bbbbbb222222", 0.92)
    long = rows(tmp_path)
    assert sorted(long.row) == ["teacher (fine-tuned, cap 2000): big [aaaaaa]",
                                "teacher (fine-tuned, cap 2000): big [bbbbbb]"]
    table = [line for line in (tmp_path / "glue.md").read_text().splitlines() if line.startswith("|")]
    assert not any("±" in line for line in table)
    assert any("90.0 (2.0k, 2 ep)" in line for line in table) and any("92.0 (2.0k, 2 ep)" in line for line in table)


def test_one_fine_tune_keeps_its_plain_row_and_seeds_still_average(tmp_path):
    teacher(tmp_path, "aaaaaa111111", 0.90)
    for seed, score in ((42, 0.80), (43, 0.82)):
        record(tmp_path, f"glue/sst2/kd/small/seed{seed}", kind="student", name="glue/sst2/kd/small",
               model="small", score=score, seed=seed, teachers=[{"card": "big"}], teacher_speed=speed(100.0))
    assert sorted(set(rows(tmp_path).row)) == ["kd/small", "teacher (fine-tuned, cap 2000): big"]
    assert "81.0 ± 1.4 (2.0k, 2 ep)" in (tmp_path / "glue.md").read_text()


def test_assistant_stages_of_two_specs_are_two_rows(tmp_path):
    for spec, score in (("cccccc333333", 0.85), ("dddddd444444", 0.86)):
        record(tmp_path, f"stages/sst2/6L/{spec}/seed42", kind="stage", name="stages/sst2/6L", model="6L",
               score=score, teachers=[{"card": "big"}], teacher_speed=speed(100.0))
    assert sorted(rows(tmp_path).row) == ["assistant stage: 6L [cccccc]", "assistant stage: 6L [dddddd]"]


def test_speed_up_is_per_teacher_it_is_measured_against(tmp_path):
    record(tmp_path, "glue/sst2/kd/s_from_big/seed42", kind="student", name="glue/sst2/kd/s_from_big",
           model="s", score=0.8, teachers=[{"card": "big"}], teacher_speed=speed(100.0), latency=25.0)
    record(tmp_path, "glue/sst2/kd/s_from_mid/seed42", kind="student", name="glue/sst2/kd/s_from_mid",
           model="s", score=0.8, teachers=[{"card": "mid"}], teacher_speed=speed(20.0), latency=25.0)
    record(tmp_path, "glue/sst2/ta/s_via_a/seed42", kind="student", name="glue/sst2/ta/s_via_a",
           model="s", score=0.8, teachers=[{"stage": "6L"}], teacher_speed=speed(50.0), latency=25.0)
    build_tables(tmp_path)
    sp = pd.read_csv(tmp_path / "speed.csv")
    assert sorted(sp["CPU speed-up vs teacher"]) == ["0.80x vs mid", "2.00x vs 6L", "4.00x vs big"]


def test_a_student_predicting_one_class_everywhere_is_marked(tmp_path):
    record(tmp_path, "glue/sst2/kd/a/seed42", kind="student", name="glue/sst2/kd/a", model="a", score=0.5,
           predictions=[[0, 1, 1], [1, 1, 0], [2, 1, 0]])
    record(tmp_path, "glue/sst2/kd/b/seed42", kind="student", name="glue/sst2/kd/b", model="b", score=0.5,
           predictions=[[0, 1, 1], [1, 0, 0], [2, 1, 0]])
    long = rows(tmp_path).set_index("row")
    assert long.single_class.to_dict() == {"kd/a": True, "kd/b": False}
    cells = {line.split("|")[1].strip(): line.split("|")[3].strip()
             for line in (tmp_path / "glue.md").read_text().splitlines() if line.startswith("| kd/")}
    assert cells == {"kd/a": "50.0 (2.0k, 2 ep) †", "kd/b": "50.0 (2.0k, 2 ep)"}


def test_avg_says_when_a_row_lacks_some_of_the_tables_tasks(tmp_path):
    for task, score in (("sst2", 0.80), ("cola", 0.40)):
        record(tmp_path, f"glue/{task}/kd/a/seed42", kind="student", name=f"glue/{task}/kd/a", model="a",
               score=score, task=task)
    record(tmp_path, "glue/sst2/kd/b/seed42", kind="student", name="glue/sst2/kd/b", model="b", score=0.70)
    avg = {line.split("|")[1].strip(): line.split("|")[-4].strip()
           for line in (build_tables(tmp_path) and (tmp_path / "glue.md").read_text()).splitlines()
           if line.startswith("| kd/")}
    assert avg == {"kd/a": "60.0", "kd/b": "70.0 (1 of 2)"}


def test_a_row_whose_cells_have_different_seed_counts_says_each_cells_count(tmp_path):
    for task, seed, score in (("sst2", 42, 0.80), ("sst2", 43, 0.82), ("sst2", 44, 0.84), ("cola", 42, 0.40)):
        record(tmp_path, f"glue/{task}/kd/a/seed{seed}", kind="student", name=f"glue/{task}/kd/a", model="a",
               score=score, seed=seed, task=task)
    for task in ("sst2", "cola"):
        record(tmp_path, f"glue/{task}/kd/b/seed42", kind="student", name=f"glue/{task}/kd/b", model="b",
               score=0.5, task=task)
    build_tables(tmp_path)
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[3:-1]]
             for line in (tmp_path / "glue.md").read_text().splitlines() if line.startswith("| kd/")}
    # columns: CoLA, SST-2, Avg, Seeds, Device
    assert lines["kd/a"][:2] == ["40.0 (1 seed; 2.0k, 2 ep)", "82.0 ± 2.0 (3 seeds; 2.0k, 2 ep)"]
    assert lines["kd/a"][3] == "1–3"
    assert lines["kd/b"][:2] == ["50.0 (2.0k, 2 ep)", "50.0 (2.0k, 2 ep)"] and lines["kd/b"][3] == "1"


def taught_by(cap: int | None) -> dict:
    """A student's resolved recipe as runs write it: its card teacher and the cap it was fine-tuned with."""
    return {"teacher_checkpoints": [{"card": "big", "source": {}, "finetune": {"max_train_examples": cap}}]}


def test_a_cell_says_when_its_teacher_was_fine_tuned_on_fewer_examples_than_the_full_set(tmp_path):
    for method, cap, terms in (("kd", 2000, ["hinton_kd"]), ("kd_full", None, ["hinton_kd"]),
                               ("kd_cap_above_full", 100_000, ["hinton_kd"]), ("nokd", 2000, ["ce"])):
        record(tmp_path, f"glue/sst2/{method}/s/seed42", kind="student", name=f"glue/sst2/{method}/s",
               model="s", score=0.8, teachers=[{"card": "big"}], teacher_speed=speed(100.0),
               resolved=taught_by(cap), terms=terms)
    long = rows(tmp_path).set_index("row")
    # no-KD lists the zoo's teacher but no term of it reads one: its cell names no teacher
    assert long.teacher_train_cap.fillna(0).astype(int).to_dict() == {"kd/s": 2000, "kd_full/s": 0,
                                                                       "kd_cap_above_full/s": 100000, "nokd/s": 0}
    cells = {line.split("|")[1].strip(): line.split("|")[3].strip()
             for line in (tmp_path / "glue.md").read_text().splitlines() if line.startswith("| ")}
    assert cells["kd/s"] == "80.0 (2.0k, 2 ep; teacher 2.0k)"
    assert cells["kd_full/s"] == cells["kd_cap_above_full/s"] == cells["nokd/s"] == "80.0 (2.0k, 2 ep)"


def test_git_dirty_means_code_changed_not_the_record_a_rerun_rewrites(tmp_path):
    import subprocess

    from harness.records import env_info, git_state

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "x.py").write_text("a = 1\n")
    (tmp_path / "results" / "runs").mkdir(parents=True)
    (tmp_path / "results" / "runs" / "metrics.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    (tmp_path / "results" / "runs" / "metrics.json").unlink()  # what a rerun does to its own record
    (tmp_path / "untracked.txt").write_text("scratch\n")
    git_state.cache_clear()
    env = env_info(tmp_path)
    assert env["git_commit"] and len(env["git_commit"]) == 40
    assert env["git_dirty"] is False and env["git_changed"] == []
    (tmp_path / "harness" / "x.py").write_text("a = 2\n")
    assert env_info(tmp_path)["git_dirty"] is False  # read once per process: the code the run started with
    git_state.cache_clear()
    env = env_info(tmp_path)
    assert env["git_dirty"] is True and env["git_changed"] == ["harness/x.py"]
    git_state.cache_clear()
