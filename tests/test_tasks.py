"""harness.tasks and harness.glue_files: the task registry and the GLUE TSV loader.

Fixtures in tests/fixtures/glue mimic the official files, including what the shared offline copy
lacks (filled MNLI ids/parses, annotator labels, QQP ids) and the awkward parts (BOM, no header,
no final newline, unbalanced quotes).  Real-data checks run only when GLUE_DIR is set.
"""
from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

import pytest

from harness.registry import UnknownName
from harness.tasks import TASKS, GlueDataError, Task, get_task
from harness.glue_files import from_hub_layout, load_split, resolve_glue_dir

FIXTURES = Path(__file__).parent / "fixtures" / "glue"


def rows(ds):
    return ds.to_list()


# --- the task table -----------------------------------------------------------------------------

def test_nine_tasks_with_hub_label_order():
    assert TASKS.names() == sorted(["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"])
    assert get_task("mnli").labels == ("entailment", "neutral", "contradiction")
    assert get_task("qnli").labels == get_task("rte").labels == ("entailment", "not_entailment")
    for name in ("cola", "sst2", "mrpc", "qqp", "wnli"):
        assert get_task(name).labels == ("0", "1")
    stsb = get_task("stsb")
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.labels is None
    assert get_task("mnli").num_labels == 3 and not get_task("mnli").is_regression
    assert get_task("mnli").dev_splits == ("dev_matched", "dev_mismatched")
    assert all(get_task(n).dev_splits == ("dev",) for n in TASKS if n != "mnli")


@pytest.mark.parametrize("alias,key", [("sst2", "sst2"), ("SST-2", "sst2"), ("sst-2", "sst2"),
                                        ("STS-B", "stsb"), ("CoLA", "cola"), (" MNLI ", "mnli")])
def test_get_task_aliases(alias, key):
    task = get_task(alias)
    assert isinstance(task, Task) and task.name == key


def test_folder_and_display_names():
    task = get_task("sst2")
    assert (task.folder, task.display, task.hub_config) == ("SST-2", "SST-2", "sst2")
    assert get_task("stsb").folder == "STS-B"


def test_unknown_task_suggests():
    with pytest.raises(UnknownName, match="Did you mean 'mnli'"):
        get_task("mnlii")


# --- parsing each fixture -----------------------------------------------------------------------

def test_cola_headerless_and_no_final_newline():
    train = load_split("cola", "train", FIXTURES)
    assert train.column_names == ["idx", "text_a", "label"]
    assert train["label"] == [1, 0, 1, 0]
    assert train[2]["text_a"] == 'She said "maybe and then left.'  # unbalanced quote kept as is
    dev = load_split("cola", "dev", FIXTURES)
    assert len(dev) == 3 and dev[2]["text_a"] == "John talked to Bill about himself."


def test_sst2_keeps_text_verbatim():
    ds = load_split(get_task("SST-2"), "train", FIXTURES)
    assert ds.column_names == ["idx", "text_a", "label"]
    assert rows(ds)[1] == {"idx": 1, "text_a": 'the plot is " nothing new , and the jokes fall flat ', "label": 0}
    assert ds.features["label"].names == ["0", "1"]


def test_mrpc_bom_header():
    ds = load_split("mrpc", "train", FIXTURES)
    assert ds.column_names == ["idx", "text_a", "text_b", "label"]
    assert ds["label"] == [1, 0, 1]
    assert ds[1]["text_b"] == 'Analysts said the results were "mixed.'


def test_stsb_float_scores():
    ds = load_split("stsb", "dev", FIXTURES)
    assert ds["label"] == [5.0, 3.8, 0.0]
    assert ds[2]["text_a"] == 'Markets fall on "fears'


def test_qqp_ignores_id_columns():
    ds = load_split("qqp", "train", FIXTURES)
    assert rows(ds)[0] == {"idx": 0, "text_a": "How do I learn Python quickly?",
                           "text_b": "What is the fastest way to learn Python?", "label": 1}
    assert ds["label"] == [1, 0, 1]


def test_mnli_train_twelve_columns():
    ds = load_split("mnli", "train", FIXTURES)
    assert ds["label"] == [0, 1, 2]  # entailment, neutral, contradiction
    assert ds[1]["text_a"] == 'you know " what'  # not the parse column next to it


def test_mnli_dev_drops_no_consensus_rows(caplog):
    with caplog.at_level(logging.INFO, logger="harness.glue_files"):
        ds = load_split("mnli", "dev_matched", FIXTURES)
    assert ds["idx"] == [0, 1, 3]  # row 2 (gold_label "-") dropped; idx still points into the file
    assert ds["label"] == [1, 2, 0]
    assert ds[0]["text_b"] == "Everyone really likes the newest benefits "
    assert "dropped 1 of 4 rows" in caplog.text
    mm = load_split("mnli", "dev_mismatched", FIXTURES)
    assert mm["label"] == [2, 1, 0] and mm["idx"] == [0, 1, 2]


def test_qnli_stray_quote_does_not_merge_rows():
    ds = load_split("qnli", "dev", FIXTURES)
    assert len(ds) == 3
    assert ds[1]["text_b"] == '"The opera premiered in Vienna in 1786.'
    assert ds["label"] == [0, 1, 0]


def test_rte_and_wnli():
    assert load_split("rte", "dev", FIXTURES)["label"] == [1, 0]
    assert load_split("wnli", "dev", FIXTURES)["label"] == [0, 1]


# --- gz, errors ---------------------------------------------------------------------------------

def test_gzipped_file(tmp_path):
    (tmp_path / "MRPC").mkdir()
    # MRPC, so the BOM has to survive decompression too.
    with gzip.open(tmp_path / "MRPC" / "train.tsv.gz", "wb") as f:
        f.write((FIXTURES / "MRPC" / "train.tsv").read_bytes())
    assert rows(load_split("mrpc", "train", tmp_path)) == rows(load_split("mrpc", "train", FIXTURES))


def test_plain_tsv_preferred_over_gz(tmp_path):
    shutil.copytree(FIXTURES / "SST-2", tmp_path / "SST-2")
    with gzip.open(tmp_path / "SST-2" / "train.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("sentence\tlabel\nonly in the gz \t1\n")
    assert len(load_split("sst2", "train", tmp_path)) == 3


def test_missing_file_names_expected_path(tmp_path):
    (tmp_path / "SST-2").mkdir()
    with pytest.raises(GlueDataError) as err:
        load_split("sst2", "train", tmp_path)
    assert f"{tmp_path / 'SST-2' / 'train.tsv'} (or train.tsv.gz)" in str(err.value)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(GlueDataError, match="folder .*RTE does not exist"):
        load_split("rte", "dev", tmp_path)


def test_bad_split_lists_valid_ones():
    with pytest.raises(GlueDataError, match="valid splits: train, dev_matched, dev_mismatched"):
        load_split("mnli", "dev", FIXTURES)
    with pytest.raises(GlueDataError, match="valid splits: train, dev"):
        load_split("sst2", "test", FIXTURES)


def test_bad_row_names_file_and_line(tmp_path):
    (tmp_path / "RTE").mkdir()
    path = tmp_path / "RTE" / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly three\tentailment\n")
    with pytest.raises(GlueDataError, match=rf"{path}, line 3: expected 4 .* found 3"):
        load_split("rte", "dev", tmp_path)


def test_bad_score_names_file_and_line(tmp_path):
    (tmp_path / "STS-B").mkdir()
    lines = (FIXTURES / "STS-B" / "dev.tsv").read_text().splitlines()
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\tabout four"
    (tmp_path / "STS-B" / "dev.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(GlueDataError, match=r"dev.tsv, line 3: score 'about four'"):
        load_split("stsb", "dev", tmp_path)


def test_missing_label_column(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tpolarity\nfine \t1\n")
    with pytest.raises(GlueDataError, match="no column 'label'"):
        load_split("sst2", "dev", tmp_path)


def test_resolve_glue_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    assert resolve_glue_dir(None) is None
    assert resolve_glue_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    assert resolve_glue_dir(None) == tmp_path
    assert resolve_glue_dir(str(FIXTURES)) == FIXTURES  # the CLI value wins
    with pytest.raises(GlueDataError, match="does not exist"):
        resolve_glue_dir(str(tmp_path / "nope"))
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "gone"))
    with pytest.raises(GlueDataError, match="GLUE_DIR"):
        resolve_glue_dir(None)


# --- Hub fallback: no network here, so the real loader must fail cleanly; the column mapping is
# checked on a split built in the Hub's layout ------------------------------------------------------

def test_hub_layout_is_mapped_to_harness_columns():
    import datasets

    hub = datasets.Dataset.from_dict(
        {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, 0], "idx": [0, 1]},
        features=datasets.Features({
            "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
            "idx": datasets.Value("int32")}))
    ds = from_hub_layout(get_task("mnli"), hub)
    assert ds.column_names == ["idx", "text_a", "text_b", "label"]
    assert rows(ds)[0] == {"idx": 0, "text_a": "p0", "text_b": "h0", "label": 2}


def test_hub_failure_explains_what_to_set(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to fall back on
    with pytest.raises(GlueDataError, match="GLUE_DIR or pass --glue-dir"):
        load_split("sst2", "dev", None)


# --- real data (GLUE_DIR) -----------------------------------------------------------------------

REAL = os.environ.get("GLUE_DIR")
needs_real = pytest.mark.skipif(not REAL, reason="set GLUE_DIR to a GLUE download to check real files")

# Row counts from /work/shared/glue/README.md (MNLI, QQP, QNLI train are samples there).
EXPECTED_ROWS = {
    ("cola", "train"): 8551, ("cola", "dev"): 1043,
    ("sst2", "train"): 67349, ("sst2", "dev"): 872,
    ("mrpc", "train"): 3668, ("mrpc", "dev"): 408,
    ("stsb", "train"): 5749, ("stsb", "dev"): 1500,
    ("qqp", "train"): 8999, ("qqp", "dev"): 1000,
    ("mnli", "train"): 9999, ("mnli", "dev_matched"): 9815, ("mnli", "dev_mismatched"): 9832,
    ("qnli", "train"): 9999, ("qnli", "dev"): 5463,
    ("rte", "train"): 2490, ("rte", "dev"): 277,
    ("wnli", "train"): 635, ("wnli", "dev"): 71,
}


@needs_real
@pytest.mark.parametrize("task,split", sorted(EXPECTED_ROWS))
def test_real_row_counts(task, split):
    ds = load_split(task, split, REAL)
    assert len(ds) == EXPECTED_ROWS[task, split]
    assert ds["idx"] == list(range(len(ds)))  # nothing dropped in these files
    assert all(isinstance(t, str) and t for t in ds["text_a"])


@needs_real
def test_real_label_distributions():
    # Figures from the README: a wrong label mapping or a dropped row would show up here.
    mnli = load_split("mnli", "train", REAL)
    assert [mnli["label"].count(i) for i in range(3)] == [3408, 3313, 3278]
    qnli = load_split("qnli", "dev", REAL)
    assert [qnli["label"].count(i) for i in range(2)] == [2702, 2761]
    # The README's five QNLI dev sentences that open with a stray quote; with csv's default
    # quoting each would swallow the following rows into one field.
    for i in (694, 3428, 3479, 3529, 4080):
        assert qnli[i]["idx"] == i and qnli[i]["text_b"].startswith('" ')
    assert not any("\n" in t or "\t" in t for t in qnli["text_b"])


@needs_real
def test_real_stsb_scores_in_range():
    scores = load_split("stsb", "dev", REAL)["label"]
    assert min(scores) >= 0.0 and max(scores) <= 5.0 and len(set(scores)) > 10
