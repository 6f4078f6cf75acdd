"""``harness submit``: GLUE test predictions in the leaderboard's format, and the format check itself."""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pytest

from conftest import REAL_GLUE, harness_cli, needs_glue
from harness.glue_format import BY_NAME, check_submission, file_problems

RECIPE = """\
student: {init: teacher_layers, layers: [0]}
objective: [{term: ce}]
training: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_length: 40, max_train_examples: 32}
speed: {seq_len: 32, throughput_batch: 4, iters: 2}
"""


def board_text(name: str, value: str, rows: int | None = None) -> str:
    n = BY_NAME[name].rows if rows is None else rows
    return "index\tprediction\n" + "".join(f"{i}\t{value}\n" for i in range(n))


def zipped(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def test_format_check_accepts_the_leaderboard_format(tmp_path):
    good = {"WNLI.tsv": board_text("WNLI.tsv", "1"), "RTE.tsv": board_text("RTE.tsv", "not_entailment"),
            "STS-B.tsv": board_text("STS-B.tsv", "4.250"), "AX.tsv": board_text("AX.tsv", "neutral")}
    assert check_submission(zipped(tmp_path / "ok.zip", good)) == []


@pytest.mark.parametrize("name, text, problem", [
    ("RTE.tsv", board_text("RTE.tsv", "1"), "prediction '1' is not one of entailment, not_entailment"),
    ("CoLA.tsv", board_text("CoLA.tsv", "acceptable"), "is not one of 0, 1"),
    ("STS-B.tsv", board_text("STS-B.tsv", "5.5"), "score 5.5 is outside 0..5"),
    ("MNLI-m.tsv", board_text("MNLI-m.tsv", "not_entailment"), "is not one of entailment, neutral, contradiction"),
    ("WNLI.tsv", board_text("WNLI.tsv", "0", rows=145), "145 rows; GLUE's test set has 146"),
    ("WNLI.tsv", board_text("WNLI.tsv", "0").replace("\n0\t0\n", "\n1\t0\n", 1), "indices are not 0..145"),
    ("WNLI.tsv", "id\tlabel\n" + board_text("WNLI.tsv", "0").split("\n", 1)[1], "the header must be"),
    ("WNLI.tsv", board_text("WNLI.tsv", "0").replace("0\t0\n", "0\t0\textra\n", 1), "3 tab-separated fields"),
])
def test_format_check_names_each_problem(name, text, problem):
    assert any(problem in p for p in file_problems(BY_NAME[name], text)), file_problems(BY_NAME[name], text)


def test_format_check_of_the_zip_itself(tmp_path):
    files = {"glue/WNLI.tsv": board_text("WNLI.tsv", "0"), "wnli.tsv": board_text("WNLI.tsv", "0")}
    problems = check_submission(zipped(tmp_path / "bad.zip", files))
    assert any("glue/WNLI.tsv: not a file the leaderboard reads (files go at the zip's top level)" in p for p in problems)
    assert any(p.startswith("wnli.tsv: not a file the leaderboard reads") for p in problems)
    (tmp_path / "junk.zip").write_text("not a zip")
    assert "not a readable zip" in check_submission(tmp_path / "junk.zip")[0]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m harness ...`` in this process (submit starts no DeepSpeed): (exit code, stdout, stderr)."""
    from harness.__main__ import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_card):
    """Tiny no-KD students on WNLI (classification) and STS-B (regression), trained in one run."""
    tmp = tmp_path_factory.mktemp("submit")
    for task in ("wnli", "stsb"):
        (tmp / f"{task}.yaml").write_text(f"name: tiny-{task}\ntask: {task}\nteachers:\n  - card: {tiny_card}\n{RECIPE}")
    res = harness_cli("run", str(tmp / "wnli.yaml"), str(tmp / "stsb.yaml"), "--results-dir", str(tmp / "results"),
                      "--glue-dir", REAL_GLUE or "", "--no-tables")
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp / "results"


def indices_of(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return [r["index"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


@needs_glue
def test_submission_has_the_trained_tasks_and_lists_the_others(results, tmp_path, capsys):
    out = tmp_path / "glue_submission.zip"
    code, stdout, err = cli(capsys, "submit", str(results), "--out", str(out), "--glue-dir", REAL_GLUE)
    assert code == 0, err
    assert "wrote" in stdout and "2 of 11 leaderboard files" in stdout and "passes the format check" in stdout
    lines = {ln.split()[0]: ln for ln in stdout.splitlines() if ln.split() and ln.split()[0] in BY_NAME}
    assert set(lines) == set(BY_NAME)
    assert "146 rows  tiny-wnli seed 42" in lines["WNLI.tsv"] and "1379 rows  tiny-stsb seed 42" in lines["STS-B.tsv"]
    for name in ("CoLA.tsv", "QQP.tsv", "MNLI-m.tsv", "AX.tsv", "RTE.tsv"):
        assert "left out" in lines[name] and "no student record of" in lines[name]
    assert check_submission(out) == []
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["STS-B.tsv", "WNLI.tsv"]
        for name in zf.namelist():  # the test files' own indices, in order, one row each
            task = "STS-B" if name == "STS-B.tsv" else "WNLI"
            got = [r["index"] for r in csv.DictReader(io.StringIO(zf.read(name).decode()), delimiter="\t")]
            assert got == indices_of(Path(REAL_GLUE) / task / "test.tsv")
        scores = [float(r.split("\t")[1]) for r in zf.read("STS-B.tsv").decode().splitlines()[1:]]
        assert all(0.0 <= s <= 5.0 for s in scores)


@needs_glue
def test_a_task_without_a_test_file_is_listed_never_faked(results, tmp_path, capsys):
    glue = tmp_path / "glue"  # a GLUE folder whose STS-B has no test file
    for task in ("WNLI", "STS-B"):
        (glue / task).mkdir(parents=True)
        for f in (Path(REAL_GLUE) / task).glob("*.tsv"):
            if not (task == "STS-B" and f.name == "test.tsv"):
                (glue / task / f.name).symlink_to(f)
    out = tmp_path / "s.zip"
    code, stdout, err = cli(capsys, "submit", str(results), "--out", str(out), "--glue-dir", str(glue))
    assert code == 0, err
    assert "no test file: STS-B test data not found" in stdout and "1 of 11 leaderboard files" in stdout
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["WNLI.tsv"]
    code, _, err = cli(capsys, "submit", str(results), "--out", str(tmp_path / "n.zip"), "--glue-dir", REAL_GLUE,
                       "--row", "kd/*")
    assert code == 2 and "nothing to submit" in err and not (tmp_path / "n.zip").exists()
