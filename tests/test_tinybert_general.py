"""TinyBERT in its two stages: the general corpus (every GLUE training set, capped), the pretrained
teachers of a corpus phase, and the shipped tinybert recipe (general distillation, then task
intermediate layers, then prediction layer) run end to end through the CLI on a tiny BERT."""
import json
import math

import pytest
import torch

from conftest import REAL_GLUE, REPO, harness_cli, needs_glue
from harness.data import corpus_cap, corpus_dataset, corpus_lines, corpus_tasks
from harness.recipe_parts import Corpus, Phase, Training
from harness.glue_files import load_split

GLUE_TASKS = {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}


def test_corpus_all_is_every_glue_task_and_dumps_as_written():
    assert {t.name for t in corpus_tasks(Corpus(glue="all"))} == GLUE_TASKS
    assert [t.name for t in corpus_tasks(Corpus(glue=["SST-2", "mrpc"]))] == ["sst2", "mrpc"]
    assert Corpus(glue="all").model_dump()["glue"] == "all"
    # a corpus written before 'all' existed dumps as it did, so its recipe keeps its hash
    assert Corpus().model_dump() == {"files": [], "glue": [], "max_examples": None, "mlm_probability": 0.15}
    with pytest.raises(ValueError, match="glue: unknown task 'sst3'"):
        Corpus(glue=["sst3"])
    with pytest.raises(ValueError):
        Corpus(glue="everything")


def test_corpus_cap_is_the_smaller_of_its_own_and_the_phases():
    assert corpus_cap(Corpus(max_examples=4000), Training()) == 4000
    assert corpus_cap(Corpus(max_examples=4000), Training(max_train_examples=64)) == 64
    assert corpus_cap(Corpus(), Training(max_train_examples=64)) == 64
    assert corpus_cap(Corpus(), Training()) is None


@needs_glue
def test_glue_corpus_reads_every_training_set_plus_files(tmp_path, tiny_card):
    from pathlib import Path

    from harness.models import load_tokenizer

    tok = load_tokenizer(tiny_card.parent / "model")
    (tmp_path / "extra.txt").write_text("a sentence of my own .\n\n  another one  \n")
    corpus = Corpus(files=["extra.txt"], glue="all")
    lines = corpus_lines([tmp_path / "extra.txt"], corpus_tasks(corpus), Path(REAL_GLUE))
    # the files first (stripped, blank lines dropped), then one line per sentence of every task's train file,
    # both sides of a pair: SST-2 alone has 67k of them
    assert lines[:2] == ["a sentence of my own .", "another one"] and len(lines) > 150_000
    sst2, mnli = load_split("sst2", "train", REAL_GLUE), load_split("mnli", "train", REAL_GLUE)
    assert {sst2[0]["text_a"], mnli[0]["text_a"], mnli[0]["text_b"]} <= set(lines)
    capped = corpus_dataset(corpus, tok, Training(max_length=32, max_train_examples=50), tmp_path, Path(REAL_GLUE))
    assert len(capped) == 50 and max(capped["length"]) <= 32
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        corpus_dataset(Corpus(files=["missing.txt"]), tok, Training(), tmp_path, Path(REAL_GLUE))


def test_corpus_phase_teachers_are_the_pretrained_encoders(tmp_path, tiny_card):
    from transformers import BertModel

    from harness.corpus_teachers import general_teachers
    from harness.plan import load

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"defaults: {REPO / 'recipes/glue/_methods/tinybert.yaml'}\ntask: rte\n"
                      f"teachers: [{{card: {tiny_card}, weight: 2.0}}]\nstudent: {{init: teacher_layers, layers: [1, 3]}}\n")
    plan = load(recipe)
    general = plan.recipe.phases[0]
    assert general.corpus == Corpus(glue="all", max_examples=4000)
    (teacher,) = general_teachers(plan, general, finetuned=["the fine-tuned teacher"])
    pretrained = BertModel.from_pretrained(tiny_card.parent / "model")
    for name, p in pretrained.state_dict().items():
        if not name.startswith("pooler."):
            torch.testing.assert_close(teacher.model.bert.state_dict()[name], p)
    assert teacher.weight == 2.0 and str(teacher.source) == str(tiny_card.parent / "model")


def test_mlm_kd_needs_a_corpus_phase():
    from harness.recipe import Recipe

    with pytest.raises(ValueError, match="mlm_kd belongs in a corpus phase"):
        Recipe.model_validate({"task": "sst2", "teachers": [{"card": "x"}], "student": {"init": "teacher_layers",
                               "layers": [0]}, "phases": [Phase(name="t", objective=[{"term": "mlm_kd"}]).model_dump(),
                                                          {"name": "f", "objective": [{"term": "ce"}]}]})


@needs_glue
def test_shipped_tinybert_recipe_runs_both_stages(tmp_path, tiny_card):
    base = tmp_path / "_base.yaml"
    base.write_text(f"task: mrpc\nteachers:\n  - {{card: {tiny_card}, finetune: {{max_train_examples: 32, epochs: 1}}}}\nstudent: {{init: teacher_layers, layers: [0, 2]}}\n"
                    "training: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_length: 32, max_train_examples: 64, "
                    "log_every: 1}\nspeed: {seq_len: 16, throughput_batch: 2, iters: 1}\n")
    recipe = tmp_path / "tinybert.yaml"
    recipe.write_text(f"defaults: [_base.yaml, {REPO / 'recipes/glue/_methods/tinybert.yaml'}]\nname: tiny-tinybert\n")
    results = tmp_path / "results"
    res = harness_cli("run", str(recipe), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    assert res.returncode == 0, res.stderr[-4000:]
    rec = json.loads((results / "runs" / "tiny-tinybert" / "seed42" / "metrics.json").read_text())
    phases = rec["train"]["phases"]
    assert [p["phase"] for p in phases] == ["general", "intermediate", "prediction"]
    general = phases[0]
    assert general["train_examples"] == 64 and general["steps"] == 8  # min(4000, 64) lines, 2 epochs of 16
    assert general["teacher_cache"]["status"] in ("built", "hit")  # unmasked text: the teacher runs once
    assert general["terms"] == ["embedding_mse", "attention_mse", "hidden_mse"]
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in general["loss_history"])
    assert phases[1]["train_examples"] == 64  # the task stage runs on the task's (capped) training set
