"""Studies: grid expansion, the comparability rules on made-up records, the dirty-tree refusal, and the
real ``study`` CLI end to end on a tiny random BERT."""
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import FIXTURE_GLUE, harness_cli, harness_started, run_record, wait_for_line
from harness.metrics import compute_metrics
from harness.schema import ConfigError
from harness.study import load_study
from harness.study_build import build_table
from harness.study_cost import Speeds

KD = "objective:\n  - {term: hinton_kd, temperature: 2.0, alpha: 0.5}\n"
NOKD = "objective:\n  - {term: ce}\n"
COMMON = """\
student: {init: teacher_layers, layers: [0, 2]}
training: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_length: 48, max_train_examples: 64, log_every: 4}
speed: {seq_len: 32, throughput_batch: 4, iters: 2}
"""


def write_recipes(root: Path, card: Path, tasks=("sst2", "rte")) -> None:
    for task in tasks:
        for method, body in (("kd", KD), ("nokd", NOKD)):
            p = root / "recipes" / "glue" / task / method / "tiny.yaml"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"task: {task}\nteachers:\n  - card: {card}\n{COMMON}{body}")


def write_study(root: Path, body: str) -> Path:
    p = root / "studies" / "s.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"recipes: ['{root}/recipes/glue/{{task}}/*/tiny.yaml']\n{body}")
    return p


def test_grid_expands_every_recipe_and_axes_limited_to_rows(tmp_path, tiny_card):
    write_recipes(tmp_path, tiny_card)
    sp = load_study(write_study(tmp_path, """\
tasks: [sst2, rte]
seeds: [0, 1, 2]
per_task: {rte: ["training.max_length=32"]}
grid:
  training.lr: [1.0e-3, 1.0e-4]
  objective.0.temperature: {values: [1.0, 4.0], rows: ["kd/*"]}
baseline: "nokd/tiny [lr=0.001]"
"""))
    assert sp.name == "s"
    # kd: 2 lr x 2 temperatures; nokd: 2 lr (temperature is not one of its fields)
    assert sorted(sp.rows) == sorted(["kd/tiny [lr=0.001, temperature=1.0]", "kd/tiny [lr=0.001, temperature=4.0]",
                                      "kd/tiny [lr=0.0001, temperature=1.0]", "kd/tiny [lr=0.0001, temperature=4.0]",
                                      "nokd/tiny [lr=0.001]", "nokd/tiny [lr=0.0001]"])
    assert len(sp.cells) == 2 * 6
    by = {(c.row, c.task): c.plan for c in sp.cells}
    hot = by[("kd/tiny [lr=0.0001, temperature=4.0]", "rte")].recipe
    assert hot.objective[0].params.temperature == 4.0 and hot.training.lr == 1e-4 and hot.training.max_length == 32
    assert hot.training.seeds == [0, 1, 2]
    assert by[("nokd/tiny [lr=0.001]", "sst2")].recipe.training.max_length == 48  # per_task is rte's only
    assert len({p.name for p in by.values()}) == len(by)  # each cell its own record folder
    assert len({p.hash(0) for p in by.values()}) == len(by)


def test_grid_baseline_needs_a_row_and_typos_are_named(tmp_path, tiny_card):
    write_recipes(tmp_path, tiny_card)
    with pytest.raises(ConfigError, match="baseline: no row 'nokd/tiny'"):
        load_study(write_study(tmp_path, "tasks: [sst2]\nseeds: [0]\ngrid: {training.lr: [0.1]}\n"
                                         "baseline: nokd/tiny\n"))
    with pytest.raises(ConfigError, match="did you mean 'seeds'"):
        load_study(write_study(tmp_path, "tasks: [sst2]\nseed: [0]\nbaseline: nokd/tiny\n"))
    with pytest.raises(ConfigError, match="match no row"):
        load_study(write_study(tmp_path, "tasks: [sst2]\nseeds: [0]\nbaseline: nokd/tiny\n"
                                         "grid: {training.lr: {values: [0.1], rows: ['kdd/*']}}\n"))


def test_a_dirty_tree_is_refused_with_one_message(monkeypatch):
    from harness import study_cmd

    monkeypatch.setattr(study_cmd, "git_state", lambda repo: ("abc123", ("harness/distill.py",)))
    with pytest.raises(ConfigError, match=r"uncommitted changes \(harness/distill.py\).*--allow-dirty"):
        study_cmd.check_tree(False)
    assert study_cmd.check_tree(True) == "abc123+dirty"  # allowed, and never mistaken for the clean commit
    monkeypatch.setattr(study_cmd, "git_state", lambda repo: ("abc123", ()))
    assert study_cmd.check_tree(False) == "abc123"
    monkeypatch.setattr(study_cmd, "git_state", lambda repo: (None, ()))
    with pytest.raises(ConfigError, match="not a git checkout"):
        study_cmd.check_tree(False)
    assert study_cmd.check_tree(True) == "unknown"


# -- the rules on made-up records ------------------------------------------------------------------

LABELS = np.random.default_rng(0).integers(0, 2, 60)


def fake(folder: Path, commit="c1", changed=(), preds=None, **fields) -> None:
    """A record folder as the harness writes one; predictions give its score."""
    preds = LABELS if preds is None else preds
    folder.mkdir(parents=True)
    (folder / "predictions").mkdir()
    with open(folder / "predictions" / "dev.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "prediction", "label"])
        w.writerows(zip(range(len(preds)), preds, LABELS))
    dev = {"dev": compute_metrics("sst2", preds, LABELS)}
    m = run_record(dev=dev, score=dev["dev"]["accuracy"], **fields)
    (folder / "metrics.json").write_text(json.dumps(m.to_json()))
    (folder / "env.json").write_text(json.dumps({"git_commit": commit, "git_dirty": bool(changed),
                                                 "git_changed": list(changed), "device": "cpu"}))


def flip(share: float, seed: int) -> np.ndarray:
    """The labels with a share of them wrong: a student of known accuracy."""
    p = LABELS.copy()
    idx = np.random.default_rng(seed).choice(len(p), int(share * len(p)), replace=False)
    p[idx] = 1 - p[idx]
    return p


@pytest.fixture
def study(tmp_path, tiny_card):
    write_recipes(tmp_path, tiny_card, ("sst2",))
    sp = load_study(write_study(tmp_path, "tasks: [sst2]\nseeds: [0, 1, 2]\nbaseline: nokd/tiny\n"))
    return sp, tmp_path / "results"


def populate(sp, results: Path, kd_reads=("T1", "T1", "T1"), kd_commit=("c1", "c1", "c1"), kd_changed=((), (), ()),
             kd_data=("d1", "d1", "d1"), commit="c1"):
    root = sp.folder(results) / "runs"
    plans = {c.row: c.plan for c in sp.cells}
    for instance in ("T1", "T2"):
        fake(root / "teachers" / "tiny-bert" / "sst2" / instance, kind="teacher", name="teacher/tiny-bert",
             model="tiny-bert", instance=instance, preds=flip(0.05, 9), data="d1", commit=commit)
    for seed in range(3):
        base, kd = plans["nokd/tiny"], plans["kd/tiny"]
        fake(root / base.name / f"seed{seed}", name=base.name, seed=seed, recipe_hash=base.hash(seed),
             teachers=[{"card": "tiny-bert", "weight": 1.0}], preds=flip(0.30, seed), data="d1", commit=commit)
        fake(root / kd.name / f"seed{seed}", name=kd.name, seed=seed, recipe_hash=kd.hash(seed),
             terms=["hinton_kd"], commit=kd_commit[seed], changed=kd_changed[seed], data=kd_data[seed],
             teachers=[{"card": "tiny-bert", "weight": 1.0, "instance": kd_reads[seed]}], preds=flip(0.10, seed + 3))


def test_clean_study_gives_stats_retention_and_marks(study):
    sp, results = study
    populate(sp, results)
    t = build_table(sp, results)
    kd, base = t.row("kd/tiny").cells["sst2"], t.row("nokd/tiny").cells["sst2"]
    assert kd.n == 3 and base.n == 3 and not kd.excluded and not t.dirty
    assert kd.mean == pytest.approx(0.9) and base.mean == pytest.approx(0.7)
    assert kd.retention == pytest.approx(100 * 0.9 / 0.95)
    assert kd.vs_baseline.mean == pytest.approx(0.2) and kd.vs_baseline.low > 0 and kd.vs_baseline.p_holm < 0.05
    assert kd.mark == "best" and base.mark is None
    teachers = [r for r in t.rows if r.kind == "teacher"]
    assert len(teachers) == 1  # T2 is read by no student: left out, and said so
    assert any("T2" in n and "another instance" in n for n in t.notes)


def test_other_teacher_instance_commit_and_dirty_tree_are_left_out(study):
    sp, results = study
    populate(sp, results, kd_reads=("T1", "T1", "T2"))
    kd = build_table(sp, results).row("kd/tiny").cells["sst2"]
    assert kd.seeds == (0, 1)
    assert "instance T2" in kd.excluded[0].reason and "another instance of this teacher" in kd.excluded[0].reason
    kd_seed(sp, results, 2)  # reads T1 now
    kd_seed(sp, results, 0, commit="c0")
    kd = build_table(sp, results).row("kd/tiny").cells["sst2"]
    assert kd.seeds == (1, 2) and "from commit c0" in kd.excluded[0].reason


def test_a_record_under_other_package_versions_is_left_out_and_a_run_refuses_them(study):
    """torch, transformers and DeepSpeed are held as the commit is: a record trained under other versions
    is left out, the table names the study's, and `study run` refuses to add records under others."""
    from harness.records import STACK, installed
    from harness.study_cmd import check_stack
    from harness.study_render import notes
    from harness.study_style import MARKDOWN

    sp, results = study
    populate(sp, results)
    here, kd0 = installed(STACK), sp.folder(results) / "runs" / {c.row: c.plan for c in sp.cells}["kd/tiny"].name
    older = here | {"transformers": "5.0.0+local"}
    for env_file in (sp.folder(results) / "runs").rglob("env.json"):
        env = json.loads(env_file.read_text())
        ours = env_file.parent == kd0 / "seed0"
        env_file.write_text(json.dumps(env | {"packages": here if ours else older}))
    t = build_table(sp, results)
    kd = t.row("kd/tiny").cells["sst2"]
    assert kd.seeds == (1, 2) and t.row("nokd/tiny").cells["sst2"].n == 3
    assert kd.excluded[0].reason == (f"trained under torch {here['torch']}, transformers {here['transformers']}, "
                                     f"deepspeed {here['deepspeed']}; the study's records under torch "
                                     f"{here['torch']}, transformers 5.0.0+local, deepspeed {here['deepspeed']}")
    assert "transformers 5.0.0+local" in t.stack
    assert any("trained under torch" in n for n in notes(t, MARKDOWN))
    with pytest.raises(ConfigError, match=r"pip install transformers==5\.0\.0\)"):
        check_stack(sp, results)
    for env_file in (sp.folder(results) / "runs").rglob("env.json"):  # the study under these versions
        env_file.write_text(json.dumps(json.loads(env_file.read_text()) | {"packages": here}))
    check_stack(sp, results)  # no error: a run may go on


def test_stray_records_do_not_choose_the_study_commit(study):
    sp, results = study
    populate(sp, results)
    for i in range(9):  # more records than the study's own, from another commit, in no cell
        fake(sp.folder(results) / "runs" / "glue" / "sst2" / "old" / f"seed{i}", commit="c9", name="glue/sst2/old",
             seed=i, data="d1")
    t = build_table(sp, results)
    assert t.commit == "c1" and t.row("kd/tiny").cells["sst2"].n == 3
    assert any(n.startswith("9 records under the study's folder belong to no cell") for n in t.notes)


def test_a_record_of_other_task_data_is_left_out(study):
    """The full MNLI and the bundled 10k sample are both 'MNLI': their records never share a cell."""
    sp, results = study
    populate(sp, results, kd_data=("d1", "d2", "d1"))
    kd = build_table(sp, results).row("kd/tiny").cells["sst2"]
    assert kd.seeds == (0, 2)
    assert [e.reason for e in kd.excluded] == ["it read other SST-2 data (d2); the study's records read d1"]


def test_dirty_records_need_allow_dirty_and_then_say_so(study):
    sp, results = study
    populate(sp, results, kd_changed=((), ("harness/distill.py",), ()))
    strict = build_table(sp, results)
    assert strict.row("kd/tiny").cells["sst2"].seeds == (0, 2) and not strict.dirty
    assert "dirty tree" in strict.row("kd/tiny").cells["sst2"].excluded[0].reason
    loose = build_table(sp, results, allow_dirty=True)
    assert loose.row("kd/tiny").cells["sst2"].seeds == (0, 1, 2) and loose.dirty


def test_collapsed_seed_is_flagged_and_kept_out_of_claims(study):
    sp, results = study
    populate(sp, results)
    seed1 = sp.folder(results) / "runs" / next(c.plan.name for c in sp.cells if c.row == "kd/tiny") / "seed1"
    shutil.rmtree(seed1)
    kd_plan = next(c.plan for c in sp.cells if c.row == "kd/tiny")
    fake(seed1, name=kd_plan.name, seed=1, recipe_hash=kd_plan.hash(1), terms=["hinton_kd"],
         teachers=[{"card": "tiny-bert", "weight": 1.0, "instance": "T1"}], preds=np.ones(60, dtype=int), data="d1")
    kd = build_table(sp, results).row("kd/tiny").cells["sst2"]
    assert [f.seed for f in kd.flags] == [1] and kd.flags[0].kind == "one class"
    assert kd.flags[0].share == pytest.approx(1.0)
    assert kd.vs_baseline.n_pairs == 2  # the collapsed seed takes no part in the comparison
    assert kd.clean_mean == pytest.approx(0.9) and kd.mean < kd.clean_mean


def test_one_clean_seed_pair_gets_a_difference_and_no_claim(study):
    sp, results = study
    populate(sp, results)
    kd_plan = next(c.plan for c in sp.cells if c.row == "kd/tiny")
    for seed in (1, 2):  # two of kd's three seeds predict one class
        folder = sp.folder(results) / "runs" / kd_plan.name / f"seed{seed}"
        shutil.rmtree(folder)
        fake(folder, name=kd_plan.name, seed=seed, recipe_hash=kd_plan.hash(seed), terms=["hinton_kd"], data="d1",
             teachers=[{"card": "tiny-bert", "weight": 1.0, "instance": "T1"}], preds=np.ones(60, dtype=int))
    t = build_table(sp, results)
    kd = t.row("kd/tiny").cells["sst2"]
    assert kd.vs_baseline.n_pairs == 1 and kd.vs_baseline.mean == pytest.approx(0.2)
    assert np.isnan(kd.vs_baseline.p) and np.isnan(kd.vs_baseline.p_holm)
    # still first by its clean seed (90 against 70), but one run proves nothing: a tie, not bold
    assert kd.mark == "tie" and kd.mark_vs == "nokd/tiny" and t.row("nokd/tiny").cells["sst2"].mark == "tie"


def kd_seed(sp, results, seed, **fields) -> Path:
    """(Re)write one seed of the KD row; ``fields`` override the record's (teachers, train, commit ...)."""
    plan = next(c.plan for c in sp.cells if c.row == "kd/tiny")
    folder = sp.folder(results) / "runs" / plan.name / f"seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    args = dict(name=plan.name, seed=seed, recipe_hash=plan.hash(seed), terms=["hinton_kd"], data="d1",
                teachers=[{"card": "tiny-bert", "weight": 1.0, "instance": "T1"}], preds=flip(0.10, seed + 3))
    fake(folder, **(args | fields))
    return folder


def reasons(t, row="kd/tiny"):
    return {e.seed: e.reason for e in t.row(row).cells["sst2"].excluded}


def test_seeds_and_recipes_outside_the_study_get_no_vote(study):
    """Four records of seeds the study does not list, read T2 at commit c0: they outnumber its own
    three, but neither the commit nor the teacher instance follows them."""
    sp, results = study
    populate(sp, results)
    for seed in range(3, 7):
        kd_seed(sp, results, seed, commit="c0", teachers=[{"card": "tiny-bert", "weight": 1.0, "instance": "T2"}])
    kd_seed(sp, results, 2, recipe_hash="f" * 12)  # a stale recipe: left out, no vote either
    t = build_table(sp, results)
    assert t.commit == "c1" and t.row("kd/tiny").cells["sst2"].seeds == (0, 1)
    assert all("not one of the study's" in reasons(t)[s] for s in range(3, 7))
    assert "resolved recipe differs" in reasons(t)[2]
    assert [r.cells["sst2"].n for r in t.rows if r.kind == "teacher"] == [1]


def test_the_teacher_most_students_read_is_the_studys_whatever_the_folder_order(study):
    sp, results = study
    populate(sp, results, kd_reads=("T2", "T2", "T1"))  # T1's folder sorts first; T2 is read more
    t = build_table(sp, results)
    assert t.row("kd/tiny").cells["sst2"].seeds == (0, 1)
    assert "instance T1" in reasons(t)[2]


def test_votes_that_tie_choose_nothing_and_say_so(study):
    sp, results = study
    populate(sp, results, kd_reads=("T1", "T2", "T3"))  # one read each; T3 has no teacher record at all
    t = build_table(sp, results)
    r = reasons(t)
    assert t.row("kd/tiny").cells["sst2"].n == 0
    assert "split evenly between instances" in r[0] and "split evenly between instances" in r[1]
    assert "no record of that instance is in the study" in r[2]
    assert not [row for row in t.rows if row.kind == "teacher"]


def test_a_teacher_entry_without_instance_is_left_out(study):
    sp, results = study
    populate(sp, results)
    kd_seed(sp, results, 1, teachers=[{"card": "tiny-bert", "weight": 1.0}])
    assert "names no teacher instance" in reasons(build_table(sp, results))[1]


def train(examples: int, epochs: float) -> dict:
    return {"train_examples": examples, "steps": 10, "epochs": epochs, "examples_seen": int(examples * epochs),
            "wall_time_s": 1.0, "samples_per_s": 1.0, "world_size": 1, "precision": "float32", "loss_history": []}


def test_one_budget_per_cell_and_a_split_cell_keeps_none(study):
    sp, results = study
    populate(sp, results)
    kd_seed(sp, results, 1, train=train(1000, 2.0))
    t = build_table(sp, results)
    assert t.row("kd/tiny").cells["sst2"].seeds == (0, 2)
    assert "its budget (task 1.0k ex x 2 ep) differs from its cell's (task 2.0k ex x 2 ep)" in reasons(t)[1]
    kd_seed(sp, results, 2, train=train(3000, 2.0))  # three seeds, three budgets: no budget is the cell's
    t = build_table(sp, results)
    assert t.row("kd/tiny").cells["sst2"].n == 0
    assert all("split evenly between budgets" in reasons(t)[s] for s in range(3))


def stage(sp, results, instance: str, reads: str, commit="c1") -> None:
    """An assistant stage record (a chain's middle model) that read teacher instance ``reads``."""
    fake(sp.folder(results) / "runs" / "stages" / "sst2" / instance, commit=commit, kind="stage", terms=["hinton_kd"],
         name="stage/tiny", model="tiny-assistant", instance=instance, data="d1", train=train(500, 1.0),
         teachers=[{"card": "tiny-bert", "weight": 1.0, "instance": reads}])


def via(instance: str) -> list[dict]:
    return [{"stage": "stage/tiny", "weight": 1.0, "instance": instance}]


def test_a_chain_student_reads_its_assistants_teacher(study):
    """Every KD seed learns from an assistant that learned from T2: T2 is the study's teacher (read
    through the stage), retention is against it, and the row's budget counts the assistant's training."""
    sp, results = study
    populate(sp, results)
    stage(sp, results, "S1", reads="T2")
    for seed in range(3):
        kd_seed(sp, results, seed, teachers=via("S1"))
    t = build_table(sp, results)
    kd = t.row("kd/tiny").cells["sst2"]
    assert kd.seeds == (0, 1, 2) and kd.retention == pytest.approx(100 * 0.9 / 0.95)
    assert kd.budget == "assistant tiny-assistant (task 500 ex x 1 ep); task 2.0k ex x 2 ep"
    assert any("T1" in n and "another instance" in n for n in t.notes)


def test_an_assistant_that_read_another_teacher_or_commit_is_left_out_with_its_students(study):
    sp, results = study
    populate(sp, results)  # seeds 0 and 1 read T1 directly: T1 is the study's
    stage(sp, results, "S1", reads="T2")
    kd_seed(sp, results, 2, teachers=via("S1"))
    t = build_table(sp, results)
    assert t.row("kd/tiny").cells["sst2"].seeds == (0, 1)
    assert "assistant stage stage/tiny (instance S1) is left out" in reasons(t)[2]
    assert "instance T2" in reasons(t)[2]
    stage(sp, results, "S2", reads="T1", commit="c0")
    kd_seed(sp, results, 2, teachers=via("S2"))
    assert "from commit c0" in reasons(build_table(sp, results))[2]
    kd_seed(sp, results, 2, teachers=via("S9"))  # no record of the stage at all
    assert "S9) is left out: no record of that instance" in reasons(build_table(sp, results))[2]


def test_cofinetuned_copies_of_one_card_are_three_teachers(study):
    """MT-BERT's three co-finetuned copies of one card: one teacher each (told apart by whom they were
    co-finetuned with), all read by every student, so all kept; a student that read a copy of another
    joint run is left out."""
    sp, results = study
    populate(sp, results)
    names = [f"tiny-bert (seed {i})" for i in range(3)]
    for i, instance in enumerate(("C0", "C1", "C2")):
        fake(sp.folder(results) / "runs" / "teachers" / "tiny-bert" / "sst2" / f"co-x-seed{i}", kind="teacher",
             name="teacher/tiny-bert", model="tiny-bert", instance=instance, data="d1", preds=flip(0.05 + i / 100, 9),
             cofinetuned_with=names[:i] + names[i + 1:], seed=i)
    joint = [{"card": "tiny-bert", "weight": 1 / 3, "instance": c} for c in ("C0", "C1", "C2")]
    for seed in range(3):
        kd_seed(sp, results, seed, teachers=joint if seed < 2 else joint[:2] + [joint[2] | {"instance": "C9"}])
    t = build_table(sp, results)
    assert t.row("kd/tiny").cells["sst2"].seeds == (0, 1) and "instance C9" in reasons(t)[2]
    co = [r for r in t.rows if r.kind == "teacher" and "co-finetuned" in r.key]
    first = "teacher: tiny-bert (seed 0, co-finetuned with tiny-bert (seed 1), tiny-bert (seed 2))"
    assert sorted(r.key for r in co)[0] == first  # each copy names its own seed too
    assert len(co) == 3 and t.row("kd/tiny").cells["sst2"].retention == pytest.approx(100 * 0.9 / 0.95)


def test_records_outside_git_count_as_dirty(study):
    sp, results = study
    populate(sp, results, kd_commit=(None, None, None), commit=None)
    strict = build_table(sp, results)
    assert strict.row("kd/tiny").cells["sst2"].n == 0 and "outside a git checkout" in reasons(strict)[0]
    loose = build_table(sp, results, allow_dirty=True)
    assert loose.row("kd/tiny").cells["sst2"].n == 3 and loose.dirty


def test_a_commit_vote_that_ties_keeps_nothing(study):
    sp, results = study
    populate(sp, results, kd_commit=("c2", "c2", "c2"))  # no-KD's three at c1, KD's three at c2
    t = build_table(sp, results)
    assert t.row("kd/tiny").cells["sst2"].n == 0 and t.row("nokd/tiny").cells["sst2"].n == 0
    assert "split evenly between commits" in reasons(t)[0]


def test_a_package_vote_that_ties_keeps_nothing(study):
    """No-KD's three seeds under one transformers, KD's under another: neither is the study's."""
    from harness.records import STACK, installed

    sp, results = study
    populate(sp, results)
    kd = {c.row: c.plan for c in sp.cells}["kd/tiny"].name
    for env_file in (sp.folder(results) / "runs").rglob("env.json"):
        other = kd in str(env_file.relative_to(results))
        packages = installed(STACK) | ({"transformers": "0.1"} if other else {})
        env_file.write_text(json.dumps(json.loads(env_file.read_text()) | {"packages": packages}))
    t = build_table(sp, results)
    assert t.row("kd/tiny").cells["sst2"].n == 0 and t.row("nokd/tiny").cells["sst2"].n == 0
    assert "split evenly between torch" in reasons(t)[0] and "transformers 0.1" in reasons(t)[0]
    assert t.stack is None and any(n.startswith("no package versions are the study's") for n in t.notes)


def test_study_cli_end_to_end_on_a_tiny_bert(tmp_path, tiny_card):
    write_recipes(tmp_path, tiny_card, ("sst2",))
    s = write_study(tmp_path, "tasks: [sst2]\nseeds: [1, 2]\nbaseline: nokd/tiny\n")
    results = tmp_path / "results"
    args = ("--results-dir", str(results), "--glue-dir", str(FIXTURE_GLUE))
    plan = harness_cli("study", "plan", str(s), *args)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "2 rows x 1 tasks x 2 seeds" in plan.stdout and "0/2 seeds" in plan.stdout
    run = harness_cli("study", "run", str(s), *args, "--allow-dirty", "--threads", "1", "--rounds", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "study s: 4 student seeds in 2 cells, 0 of them short of the study's 2 seeds;" in run.stdout
    out = results / "studies" / "s"
    for name in ("table.md", "table.csv", "table.tex", "pareto.png", "pareto.csv", "speed.json", "speed.md", "speed.csv"):
        assert (out / name).stat().st_size > 0, name
    cells = pd.read_csv(out / "table.csv")
    students = cells[cells.kind == "student"]
    assert sorted(students.n) == [2, 2] and students.latency_ms.notna().all()
    speed = json.loads((out / "speed.json").read_text())
    assert len(speed["archs"]) == 2  # the 4-block teacher and the 2-block student, once each
    lines = [ln for ln in (out / "speed.md").read_text().splitlines() if ln.startswith("| bert")]
    # one row each, deepest first (a loaded machine may leave them marked ⚠: timing is not what this checks)
    assert [ln.split("|")[1].strip().removesuffix(" ⚠") for ln in lines] == ["bert 4L-48", "bert 2L-48"]
    assert "CPU fp32 b1 L128 ms [IQR]" in (out / "speed.md").read_text()  # the columns say what was measured
    dev = speed["settings"]["dev_lengths"]["sst2"]  # and the notes, what the dev rows' lengths came from
    assert dev["split"] == "dev" and dev["tokenizer"] == "tiny-bert" and dev["examples"] > 0
    assert "Dev lengths: SST-2 dev" in (out / "speed.md").read_text()
    assert all(e["interop_threads"] == 1 and len(e["cpus"]) == 1 for e in speed["archs"].values())
    measured = (out / "speed.json").read_bytes()
    again = harness_cli("study", "run", str(s), *args, "--allow-dirty", "--threads", "1", "--rounds", "1")
    assert again.returncode == 0 and again.stdout.count("skipped: this study's record exists") == 4
    assert "already measured every architecture" in again.stdout  # speed is not taken twice by `run`
    assert (out / "speed.json").read_bytes() == measured
    # a second study sharing the KD row copies its records (same recipe hash, same commit), teachers too
    t = tmp_path / "studies" / "t.yaml"
    t.write_text(f"recipes: ['{tmp_path}/recipes/glue/{{task}}/kd/tiny.yaml']\ntasks: [sst2]\nseeds: [1, 2]\n"
                 "baseline: kd/tiny\n")
    plan = harness_cli("study", "plan", str(t), *args)
    assert plan.returncode == 0 and "2 seeds to copy from another study" in plan.stdout, plan.stdout
    assert "left to train: 0 examples" in plan.stdout
    shared = harness_cli("study", "run", str(t), *args, "--allow-dirty", "--threads", "1", "--rounds", "1")
    assert shared.returncode == 0, shared.stderr[-3000:]
    assert shared.stdout.count("copied: study s ran this very recipe") == 2, shared.stdout
    kd_runs = Path("runs/glue/sst2/kd/tiny")
    for seed in (1, 2):
        copied, source = results / "studies" / "t" / kd_runs / f"seed{seed}", out / kd_runs / f"seed{seed}"
        assert (copied / "metrics.json").read_bytes() == (source / "metrics.json").read_bytes()
    teachers = sorted(p.relative_to(results / "studies" / "t") for p in (results / "studies" / "t" / "runs" /
                                                                          "teachers").rglob("metrics.json"))
    assert teachers == sorted(p.relative_to(out) for p in (out / "runs" / "teachers").rglob("metrics.json"))
    t_cells = pd.read_csv(results / "studies" / "t" / "table.csv")
    assert sorted(t_cells[t_cells.kind == "student"].n) == [2]
    _lost_teacher_is_trained_again_as_its_record_was(s, out, args)


def test_a_seed_another_process_trains_is_left_to_it_until_the_end(tmp_path, tiny_card):
    """Several processes may run one study: a seed whose record another one holds is not waited for,
    the others go on, and the study comes back to it at the end (here the holder stops without a
    record, so this process trains it then)."""
    from filelock import FileLock

    from harness.integrity import lock_path

    write_recipes(tmp_path, tiny_card, ("sst2",))
    s = write_study(tmp_path, "tasks: [sst2]\nseeds: [1, 2]\nbaseline: nokd/tiny\n")
    results, log = tmp_path / "results", tmp_path / "run.log"
    runs = results / "studies" / "s" / "runs" / "glue" / "sst2"
    held = FileLock(str(lock_path(runs / "nokd" / "tiny" / "seed1")))
    held.acquire()
    proc = harness_started("study", "run", str(s), "--results-dir", str(results), "--glue-dir", str(FIXTURE_GLUE),
                           "--allow-dirty", "--threads", "1", "--rounds", "1", log=log)
    try:
        wait_for_line(log, proc, "back to nokd/tiny on sst2 (seeds 1)")
        meanwhile = log.read_text()
    finally:
        held.release()
    wait_for_line(log, proc, "[glue/sst2/nokd/tiny seed 1] sst2 score")
    proc.terminate()  # what is left is the study's tables and speed, which other tests check
    proc.wait(timeout=60)
    assert "another harness process is training seed(s) 1 of this cell: left to it for now" in meanwhile
    for row, seed in (("nokd", 2), ("kd", 1), ("kd", 2)):  # trained while seed 1 of no-KD was held
        assert f"[glue/sst2/{row}/tiny seed {seed}] sst2 score" in meanwhile
        assert (runs / row / "tiny" / f"seed{seed}" / "metrics.json").exists()
    assert "[glue/sst2/nokd/tiny seed 1] sst2 score" not in meanwhile
    assert log.read_text().count("[glue/sst2/nokd/tiny seed 1] sst2 score") == 1
    assert (runs / "nokd" / "tiny" / "seed1" / "metrics.json").exists()


def _lost_teacher_is_trained_again_as_its_record_was(s: Path, out: Path, args: tuple) -> None:
    """Its cache lost, a study's teacher is trained again for a new seed in a process of another thread
    count: with its record's threads for the while, so it comes out the very instance the first students
    read, and the kept record stays as it was.  (The other count is a lower one where it can be: a
    process asking for more threads than the CPUs it has runs on as many as it has.)"""
    [teacher] = (out / "runs" / "teachers").rglob("metrics.json")
    kept, threads = teacher.read_bytes(), json.loads((teacher.parent / "env.json").read_text())["cpu_threads"]
    entry = Path(os.environ["KD_HARNESS_CACHE"]) / "teachers" / teacher.parent.relative_to(out / "runs" / "teachers")
    shutil.rmtree(entry)  # the cache keeps a teacher where the study keeps its record, by the same name
    s.write_text(s.read_text().replace("seeds: [1, 2]", "seeds: [1, 2, 3]"))
    other = threads - 1 if threads > 1 else threads + 1
    again = harness_cli("study", "run", str(s), *args, "--allow-dirty", "--threads", "1", "--rounds", "1",
                        env={"OMP_NUM_THREADS": str(other)})
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"again with {threads} threads (now {other}), as its record was" in again.stdout, again.stdout
    # the seeds recorded before seed 3 was asked for are the same runs (a run is hashed with its own seed)
    assert again.stdout.count("skipped: this study's record exists") == 4, again.stdout
    assert teacher.read_bytes() == kept
    seed3 = json.loads((out / "runs" / "glue" / "sst2" / "kd" / "tiny" / "seed3" / "metrics.json").read_text())
    assert seed3["teachers"][0]["instance"] == json.loads(kept)["instance"]


def test_a_runs_hash_is_of_its_own_seed_and_old_records_are_read_so(tmp_path, tiny_card):
    """A run is hashed with its own seed alone: studies asking for other seed lists share it.  A
    version-1 record (hashed with the whole list) is read with the version-2 hash, and ``records
    migrate`` rewrites it so, its recipe.yaml as the run was."""
    import yaml

    from harness.hashing import spec_hash
    from harness.records import read_record

    write_recipes(tmp_path, tiny_card, ("sst2",))
    def plans(seeds: str) -> list:
        return [c.plan for c in load_study(write_study(tmp_path, f"tasks: [sst2]\nseeds: {seeds}\nbaseline: nokd/tiny\n")).cells]

    three, two = plans("[0, 1, 2]"), plans("[0, 1]")
    assert [p.hash(1) for p in three] == [p.hash(1) for p in two] and three[0].hash(0) != three[0].hash(1)
    assert three[0].resolved(1)["training"]["seed"] == 1
    plan, folder = three[0], tmp_path / "results" / "runs" / "old" / "seed1"
    old = plan.resolved(1) | {"training": plan.resolved(1)["training"] | {"seed": [0, 1, 2]}}  # as 1 wrote it
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    raw = run_record(name=plan.name, seed=1, recipe_hash=spec_hash(old)).to_json() | {"schema_version": 1}
    (folder / "metrics.json").write_text(json.dumps(raw))
    assert read_record(folder).recipe_hash == plan.hash(1) != spec_hash(old)
    stale = raw | {"recipe_hash": "f" * 12}  # a hash its recipe.yaml does not give: kept, not made to match
    (folder / "metrics.json").write_text(json.dumps(stale))
    assert read_record(folder).recipe_hash == "f" * 12
    (folder / "metrics.json").write_text(json.dumps(raw))
    migrated = harness_cli("records", "migrate", "--results-dir", str(tmp_path / "results"))
    assert migrated.returncode == 0 and f"migrated {folder}" in migrated.stdout, migrated.stdout + migrated.stderr
    stored = json.loads((folder / "metrics.json").read_text())
    assert stored["schema_version"] == 2 and stored["recipe_hash"] == plan.hash(1)
    assert spec_hash(yaml.safe_load((folder / "recipe.yaml").read_text())) == plan.hash(1)


def test_a_chain_students_old_record_names_its_assistant_by_the_new_hash(tmp_path, tiny_card):
    """A version-1 chain student named its assistant stage by the stage's version-1 hash: it is read
    with the stage's version-2 hash (from the stage record's recipe.yaml beside it) and so matches its
    cell; ``records migrate`` rewrites both records and both recipe.yaml, and a second pass nothing."""
    import yaml

    from harness.hashing import spec_hash
    from harness.plan import load
    from harness.records import migrate, read_record

    chain = tmp_path / "recipes" / "glue" / "sst2" / "ta_chain" / "tiny.yaml"
    chain.parent.mkdir(parents=True)
    chain.write_text(f"task: sst2\nassistants:\n  - name: ta\n    teachers: [{{card: {tiny_card}}}]\n"
                     f"    student: {{init: teacher_layers, layers: [0, 1, 3]}}\n"
                     "    objective: [{term: hinton_kd, temperature: 2.0, alpha: 0.5}]\n"
                     f"teachers: [{{stage: ta}}]\nstudent: {{init: teacher_layers, card: {tiny_card}, layers: [0, 2]}}\n"
                     f"{KD}training: {{epochs: 1, seed: [0, 1, 2]}}\n")
    plan = load(chain)
    stage = plan.stages["ta"]

    def as_v1(resolved: dict) -> dict:  # how version 1 stored a run: the recipe's whole seed list
        return resolved | {"training": resolved["training"] | {"seed": [0, 1, 2]}}
    stage_v1 = as_v1(stage.resolved(1))
    student_v1 = as_v1(plan.resolved(1)) | {"teacher_checkpoints": [{"stage": "ta", "hash": spec_hash(stage_v1)}]}
    assert spec_hash(stage_v1) != stage.hash(1) and spec_hash(student_v1) != plan.hash(1)
    runs = tmp_path / "results" / "runs"
    folders = {"stage": runs / stage.name / spec_hash(stage_v1) / "seed1", "student": runs / plan.name / "seed1"}
    for (kind, folder), (name, old) in zip(folders.items(), ((stage.name, stage_v1), (plan.name, student_v1))):
        folder.mkdir(parents=True)
        (folder / "recipe.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
        raw = run_record(kind=kind, name=name, seed=1, recipe_hash=spec_hash(old)).to_json() | {"schema_version": 1}
        (folder / "metrics.json").write_text(json.dumps(raw))
    assert read_record(folders["stage"]).recipe_hash == stage.hash(1)
    assert read_record(folders["student"]).recipe_hash == plan.hash(1)
    assert sorted(migrate(tmp_path / "results")) == sorted(folders.values())
    for folder, p in ((folders["stage"], stage), (folders["student"], plan)):
        stored = json.loads((folder / "metrics.json").read_text())
        assert stored["schema_version"] == 2 and stored["recipe_hash"] == p.hash(1)
        assert spec_hash(yaml.safe_load((folder / "recipe.yaml").read_text())) == p.hash(1)
    assert migrate(tmp_path / "results") == []


def test_a_lost_teacher_is_not_trained_again_under_other_package_versions(tmp_path):
    """The thread count can be set for the while; torch, transformers, DeepSpeed cannot: the run refuses,
    naming both versions."""
    import torch

    from harness.cached import kept_conditions
    from harness.records import STACK, installed

    kept = tmp_path / "teacher"
    kept.mkdir()
    rec = run_record(kind="teacher", data="sha256:abc")
    (kept / "metrics.json").write_text(json.dumps(rec.to_json()))
    env = {"git_commit": "c" * 40, "git_dirty": False, "git_changed": [], "cpu_threads": 3,
           "packages": installed(STACK)}
    (kept / "env.json").write_text(json.dumps(env))
    entries, before = [(tmp_path / "cache", kept)], torch.get_num_threads()
    with kept_conditions(entries, "sha256:abc", "c" * 40):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    with kept_conditions(entries, "sha256:other", "c" * 40):  # another dataset: not this model's record
        assert torch.get_num_threads() == before
    for name in STACK:  # transformers and DeepSpeed as torch: a study's records share them
        (kept / "env.json").write_text(json.dumps(env | {"packages": installed(STACK) | {name: "1.0.0"}}))
        with pytest.raises(ConfigError, match=rf"under {name} .* \(the record's: 1\.0\.0\)"):
            with kept_conditions(entries, "sha256:abc", "c" * 40):
                pass


def test_run_keeps_a_speed_measurement_only_of_every_architecture_on_this_cpu_and_threads():
    from harness.archspeed import arch_key, cpu_model, default_threads
    from harness.study_cmd import speed_is_current

    small = {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2}
    big = small | {"num_hidden_layers": 4}
    result = {"archs": {arch_key(small): {}, arch_key(big): {}},
              "machine": {"cpu": cpu_model(), "threads": default_threads()}}
    assert speed_is_current(result, {"s": small, "t": big}, None)
    assert speed_is_current(result, {"s": small}, default_threads())
    assert not speed_is_current(result, {"s": small, "w": small | {"hidden_size": 64}}, None)  # a new one
    assert not speed_is_current(result, {"s": small}, default_threads() + 1)
    assert not speed_is_current(result | {"machine": {"cpu": "another CPU", "threads": default_threads()}},
                                {"s": small}, None)


def test_retention_is_against_the_strongest_teacher_read():
    from types import SimpleNamespace

    from harness.study_rules import Rules

    def teacher(score, instance):
        return SimpleNamespace(record=SimpleNamespace(score=score, instance=instance))

    teachers = {("mpnet", "sst2", ()): teacher(0.93, "M"), ("minilm", "sst2", ()): teacher(0.91, "L"),
                ("mpnet", "rte", ()): teacher(0.70, "R")}
    rules = SimpleNamespace(teachers=teachers)
    rules.card_reads = lambda m: Rules.card_reads(SimpleNamespace(_all_stages={}), m)
    both = run_record(teachers=[{"card": "minilm", "weight": 0.5, "instance": "L"},
                                {"card": "mpnet", "weight": 0.5, "instance": "M"}])
    assert Rules.teacher_for(rules, both) is teachers[("mpnet", "sst2", ())]  # not the first listed
    nokd = run_record(teachers=[{"card": "minilm", "weight": 1.0}])  # read none: the card fine-tuned alone
    assert Rules.teacher_for(rules, nokd) is teachers[("minilm", "sst2", ())]
    assert Rules.teacher_for(rules, run_record(task="rte", teachers=[{"card": "minilm", "weight": 1.0}])) is None


def test_two_architectures_under_one_model_label_are_refused(study, tmp_path):
    from harness.schema import ConfigError
    from harness.study_models import model_configs

    sp, results = study
    populate(sp, results)
    for layers, row in ((2, "nokd/tiny"), (3, "kd/tiny")):  # both students say model "m"
        ckpt = tmp_path / f"ckpt{layers}"
        ckpt.mkdir()
        (ckpt / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": layers,
                                                      "hidden_size": 32, "num_attention_heads": 2,
                                                      "intermediate_size": 64, "vocab_size": 100}))
        plan = next(c.plan for c in sp.cells if c.row == row)
        folder = sp.folder(results) / "runs" / plan.name / "seed0"
        record = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps(record | {"checkpoint": str(ckpt)}))
    with pytest.raises(ConfigError, match="share the model label 'm'"):
        model_configs(sp, results)


def test_speed_measures_the_models_the_recipes_build_and_refuses_records_of_others(study, tmp_path):
    from harness.archspeed import arch_fields
    from harness.study_models import recipe_configs, speed_configs

    sp, results = study
    configs = recipe_configs(sp)  # no record, no checkpoint: the recipes and the card alone
    assert sorted(configs) == ["2L-from-tiny-bert", "tiny-bert"]
    student, teacher = arch_fields(configs["2L-from-tiny-bert"]), arch_fields(configs["tiny-bert"])
    assert student["num_hidden_layers"] == 2 and teacher["num_hidden_layers"] > 2
    assert {k: v for k, v in student.items() if k != "num_hidden_layers"} == \
        {k: v for k, v in teacher.items() if k != "num_hidden_layers"}  # cut from it: the same blocks
    assert speed_configs(sp, results) == configs
    populate(sp, results)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(configs["2L-from-tiny-bert"] | {"num_hidden_layers": 3}))
    folder = sp.folder(results) / "runs" / next(c.plan for c in sp.cells if c.row == "kd/tiny").name / "seed0"
    record = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps(record | {"checkpoint": str(ckpt), "model": "2L-from-tiny-bert"}))
    with pytest.raises(ConfigError, match="its recipe now builds a bert 2L"):
        speed_configs(sp, results)


def test_budget_sums_progressive_blocks_so_seeds_of_one_budget_agree():
    """Blocks sharing 3 epochs along one batch stream: which block gets an epoch's short last batch is
    the seed's draw (0.501 / 0.499 of an epoch); the phase's budget is their sum either way."""
    from harness.study_records import budget

    def stage(phase, seen, steps=134):
        return {"phase": phase, "train_examples": 8551, "steps": steps, "epochs": round(seen / 8551, 3),
                "examples_seen": seen, "wall_time_s": 1.0, "samples_per_s": 1.0, "world_size": 1,
                "precision": "float32", "loss_history": []}

    def rec(order):
        phases = [stage("progressive", n) for n in order] + [stage("final", 25653, 804)]
        return run_record(task="cola", train=stage(None, 25653, 1608) | {"phases": phases})

    a, b = rec([4288, 4263] * 3), rec([4263, 4288, 4288, 4263, 4288, 4263])
    assert budget(a, frozenset()) == budget(b, frozenset()) == \
        "progressive full ex x 3 ep over 6 blocks; final full ex x 3 ep"
    assert budget(rec([4288] * 6), frozenset()) != budget(a, frozenset())  # a block more is another budget
    # a phase on general text counts its corpus's lines, never "full": 8,551 lines are not CoLA's set
    assert budget(a, frozenset({"progressive"})) == "progressive 8.6k ex x 3 ep over 6 blocks; final full ex x 3 ep"


def test_code_state_keeps_dirty_and_unknown_records_apart_from_clean_ones(tmp_path):
    """A clean study run at c1 never reuses (skips, copies) a record a dirty run wrote at c1."""
    from harness.records import code_state, record_commit, twin_record

    assert code_state("c1", ()) == "c1" and code_state("c1", ("a.py",)) == "c1+dirty"
    assert code_state(None, ()) == "unknown"
    old = tmp_path / "old"
    old.mkdir()
    (old / "env.json").write_text(json.dumps({"git_commit": "c1", "git_dirty": True}))  # before git_changed
    assert record_commit(old) == "c1+dirty"
    fake(tmp_path / "studies" / "a" / "runs" / "r" / "seed0", changed=("harness/x.py",), data="d1")
    found = twin_record(tmp_path / "studies" / "b", Path("runs/r/seed0"), "0" * 12, "c1", "d1")
    assert found is None
    assert twin_record(tmp_path / "studies" / "b", Path("runs/r/seed0"), "0" * 12, "c1+dirty", "d1") is not None


def test_verify_checks_study_records_too(study):
    """`verify` recomputes every record's metrics from its predictions, the studies' included: a study
    record whose metrics were edited by hand is caught."""
    sp, results = study
    populate(sp, results)
    assert harness_cli("verify", "--results-dir", str(results)).returncode == 0
    m = sp.folder(results) / "runs" / next(c.plan.name for c in sp.cells if c.row == "kd/tiny") / "seed0" / "metrics.json"
    raw = json.loads(m.read_text())
    raw["dev"]["dev"]["accuracy"] += 0.01
    m.write_text(json.dumps(raw))
    bad = harness_cli("verify", "--results-dir", str(results))
    assert bad.returncode == 1 and "BAD" in bad.stdout and "kd" in bad.stdout


def test_plan_says_which_records_another_commit_wrote(study):
    """Records of another commit are not this commit's: the plan counts them as left to train, and says
    where they came from (a campaign running from a worktree of its commit, seen from main)."""
    from harness.study_cost import report

    sp, results = study
    populate(sp, results)  # every record at commit c1, which is not this checkout's
    text = report(sp, results, FIXTURE_GLUE)
    assert "0/3 seeds" in text and "3 seeds recorded at c1, not this code state" in text
    assert "recorded at another code state (c1: 6 seeds) than this checkout's" in text and "git worktree" in text


def test_dirty_records_get_no_vote_without_allow_dirty(study):
    """Three clean no-KD records at c1 and three dirty KD records at c2: the dirty ones can never be
    kept, so they cannot make c2 (or a tie) the study's commit."""
    sp, results = study
    populate(sp, results, kd_commit=("c2",) * 3, kd_changed=(("harness/x.py",),) * 3)
    t = build_table(sp, results)
    assert t.commit == "c1" and t.row("nokd/tiny").cells["sst2"].n == 3
    assert all("from commit c2" in r for r in reasons(t).values())


def test_one_instance_recorded_twice_is_one_teacher(study):
    sp, results = study
    populate(sp, results)
    fake(sp.folder(results) / "runs" / "teachers" / "tiny-bert" / "sst2" / "T1-copy", kind="teacher",
         name="teacher/tiny-bert", model="tiny-bert", instance="T1", preds=flip(0.05, 9), data="d1")
    t = build_table(sp, results)
    assert t.row("kd/tiny").cells["sst2"].n == 3
    assert any("T1-copy" in n and "the same weights, recorded twice" in n for n in t.notes)


def test_teacher_instances_nobody_reads_tie(study):
    """No student reads a teacher (every KD seed re-recorded as plain fine-tuning): T1 and T2 tie at
    no reads, so neither is the study's, and nothing is measured against an arbitrary one."""
    sp, results = study
    populate(sp, results)
    for seed in range(3):
        kd_seed(sp, results, seed, terms=["ce"], teachers=[{"card": "tiny-bert", "weight": 1.0}])
    t = build_table(sp, results)
    assert not [r for r in t.rows if r.kind == "teacher"] and t.row("nokd/tiny").cells["sst2"].retention is None
    assert any("split evenly between instances T1 (read by 0), T2 (read by 0)" in n for n in t.notes)


def test_strays_do_not_choose_the_data_of_a_task_no_student_has(study):
    sp, results = study
    populate(sp, results)
    teacher = sp.folder(results) / "runs" / "teachers" / "tiny-bert" / "rte" / "R1"
    fake(teacher, kind="teacher", name="teacher/tiny-bert", model="tiny-bert", instance="R1", task="rte",
         data="r1", preds=flip(0.05, 9))
    for i in range(2):
        fake(sp.folder(results) / "runs" / "glue" / "rte" / "old" / f"seed{i}", name="glue/rte/old", task="rte",
             seed=i, data="r2")
    assert not [n for n in build_table(sp, results).notes if "teachers/tiny-bert/rte" in n and "left out" in n]


def test_corpus_phases_come_from_the_resolved_recipe():
    """Which phases read general text is in the recipe a record was trained from, whatever their names."""
    from harness.plan import load
    from harness.study_records import corpus_phases

    repo = Path(__file__).resolve().parents[1]
    joint = load(repo / "recipes/glue/mrpc/mobilebert_joint/mobilebert6L_from_minilm.yaml").recipe.resolved()
    tinybert = load(repo / "recipes/glue/rte/tinybert/minilm3L_from_minilm.yaml").recipe.resolved()
    kd = load(repo / "recipes/glue/rte/kd/minilm3L_from_minilm.yaml").recipe.resolved()
    assert corpus_phases(joint) == {"layerwise"} and corpus_phases(tinybert) == {"general"}
    assert corpus_phases(kd) == frozenset() and corpus_phases({"kind": "teacher", "card": "x"}) == frozenset()
    assert corpus_phases(None) == frozenset()


def test_capped_and_short_states():
    from harness.records import short_state
    from harness.study_records import capped

    def rec(task, examples, phase=None):
        stage = {"phase": phase, "train_examples": examples, "steps": 1, "epochs": 1.0, "examples_seen": examples,
                 "wall_time_s": 1.0, "samples_per_s": 1.0, "world_size": 1, "precision": "float32",
                 "loss_history": []}
        return run_record(task=task, train=stage | ({"phases": [stage]} if phase else {}))

    none = frozenset()
    assert capped(rec("sst2", 4000), none) and not capped(rec("rte", 2490), none)
    # a corpus phase's lines are no cap, whatever the phase is called (MobileBERT's is "layerwise")
    assert not capped(rec("cola", 8000, "layerwise"), frozenset({"layerwise"}))
    assert capped(rec("cola", 8000, "layerwise"), none)  # the same count on the task's data is a cap
    assert short_state("c1+dirty") == "c1+dirty" and short_state("0123456789abcdef+dirty") == "0123456789+dirty"
    assert short_state("0123456789abcdef") == "0123456789" and short_state(None) == "None"


def test_a_twin_that_read_another_teacher_instance_is_not_copied(study, monkeypatch):
    """Another study ran the very cell at this commit, but against a teacher since trained again (this
    cache holds T9, the twin read T1): its record is not copied, the cell trains here instead."""
    from harness import runner
    from harness.glue_files import data_id
    from harness.options import Options
    from harness.teacher_prep import ReadyTeacher

    sp, results = study
    plan = next(c.plan for c in sp.cells if c.row == "kd/tiny")
    twin = results / "studies" / "other" / "runs" / plan.name / "seed0"
    fake(twin, name=plan.name, seed=0, recipe_hash=plan.hash(0), terms=["hinton_kd"], commit="c1",
         data=data_id(plan.task, FIXTURE_GLUE), teachers=[{"card": "tiny-bert", "weight": 1.0, "instance": "T1"}])
    opts = Options(results_dir=sp.folder(results), glue_dir=FIXTURE_GLUE, study_commit="c1")
    out = sp.folder(results) / "runs" / plan.name / "seed0"

    def cache_holds(instance):
        ready = ReadyTeacher(Path("."), "tiny-bert", ["tiny-bert"], None, 0.9, instance)
        monkeypatch.setattr(runner, "ready_teachers", lambda plan, seed, opts: ([ready], []))

    cache_holds("T9")
    assert runner._copy_twin(plan, 0, out, opts) is False and not out.exists()
    cache_holds("T1")
    assert runner._copy_twin(plan, 0, out, opts) is True and (out / "metrics.json").is_file()


def test_plan_rates_prefer_records_at_this_thread_count(tmp_path):
    speeds = Speeds(tmp_path, threads=2)  # no records there: every rate comes from the lines below
    speeds.by["3L"] = [("rte", "bf16", 1, 30.0), ("rte", "bf16", 2, 50.0), ("cola", "bf16", 2, 90.0),
                       ("mrpc", "fp32", None, 20.0)]
    assert speeds.rate("3L", "rte", "bf16") == 50.0  # same task, precision and threads
    assert speeds.rate("3L", "mrpc", "bf16") == 70.0  # same precision and threads: median of 50 and 90
    assert speeds.rate("3L", "mrpc", "fp32") == 70.0  # a rate at these threads beats another count's
    speeds.threads = 1
    assert speeds.rate("3L", "cola", "bf16") == 30.0  # the one record at 1 thread, whatever its task
    speeds.threads = 4
    assert speeds.rate("3L", "mrpc", "fp32") == 20.0  # no record at 4 threads: task and precision decide
    assert speeds.rate("6L", "rte", "bf16") is None
