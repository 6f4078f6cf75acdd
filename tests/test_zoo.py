"""The baseline zoo end to end: intermediate features from real BERT and MPNet modules, every method's
recipe run through the real CLI on a tiny BERT, recipe defaults and overrides, progressive freezing."""
import json
from pathlib import Path

import pytest
import torch

from conftest import REAL_GLUE, REPO, harness_cli, needs_glue
from harness.features import Need, forward_features, mixed_forward

METHODS = ["nokd", "kd", "pkd", "distilbert", "tinybert", "minilm", "minilmv2", "mobilebert", "mixkd"]


def _tiny(kind: str):
    from transformers import BertConfig, BertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    common = dict(vocab_size=120, hidden_size=24, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=64, num_labels=2, attn_implementation="eager")
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(**common)).eval()
    return MPNetForSequenceClassification(MPNetConfig(**common)).eval()


def _inputs():
    ids = torch.randint(5, 120, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    ids[1, 4:] = 1  # pad id of both configs
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_hooked_attention_matches_the_models_own(kind):
    """Scores rebuilt from the hooked Q/K (+ MPNet's relative position bias) give the attention
    probabilities the model itself returns with output_attentions, on every real query row."""
    model, inputs = _tiny(kind), _inputs()
    with torch.no_grad():
        feats = forward_features(model, inputs, Need(hidden=True, qkv=frozenset({0, 2})))
        ref = model(**inputs, output_attentions=True, output_hidden_states=True)
    assert set(feats.q) == set(feats.k) == set(feats.v) == {0, 2}
    assert (feats.position_bias is not None) == (kind == "mpnet")
    for block in (0, 2):
        probs = feats.log_probs(block).exp()  # [B, h, T, T]
        rows = inputs["attention_mask"].bool()
        torch.testing.assert_close(probs[0], ref.attentions[block][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(probs[1][:, rows[1]][..., rows[1]], ref.attentions[block][1][:, rows[1]][..., rows[1]],
                                   atol=1e-5, rtol=1e-4)
    assert len(feats.hidden) == 4
    for a, b in zip(feats.hidden, ref.hidden_states):
        torch.testing.assert_close(a, b)


def test_nothing_captured_unless_asked():
    model, inputs = _tiny("bert"), _inputs()
    feats = forward_features(model, inputs, Need())
    assert feats.hidden is None and not feats.q and feats.position_bias is None
    assert not any(m._forward_hooks for m in model.modules())  # hooks are removed after every forward


def test_mixed_forward_is_plain_forward_when_lambda_is_one():
    model, inputs = _tiny("mpnet"), _inputs()
    with torch.no_grad():
        plain = model(**inputs).logits
        mixed = mixed_forward(model, inputs, torch.tensor([1, 0]), torch.ones(2)).logits
    # lam = 1 keeps each example's own embeddings; row 0 has no padding, so its union mask is its own
    # (row 1 now attends to its pad positions, the union with row 0's mask)
    torch.testing.assert_close(mixed[0], plain[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(mixed[1], plain[1], atol=1e-6)


def testprogressive_scale_freezes_below_and_above():
    from harness.recipe_parts import Progressive
    from harness.phases import progressive_scale

    freeze = progressive_scale(1, Progressive(lower="freeze"))
    assert freeze("bert.encoder.layer.1.attention.self.query.weight") == 1.0
    assert freeze("bert.encoder.layer.0.output.dense.weight") == 0.0
    assert freeze("bert.embeddings.word_embeddings.weight") == 0.0
    assert freeze("bert.encoder.layer.2.output.dense.weight") == 0.0
    assert freeze("classifier.weight") == 0.0
    reduced = progressive_scale(2, Progressive(lower="reduced_lr", lr_scale=0.1))
    assert reduced("mpnet.encoder.layer.0.attention.attn.q.weight") == 0.1
    assert reduced("mpnet.encoder.relative_attention_bias.weight") == 0.1  # shared by all blocks
    assert reduced("mpnet.encoder.layer.2.attention.attn.q.weight") == 1.0


def _zoo_recipes(tmp: Path, card: Path) -> list[Path]:
    """Each method's real partial (recipes/glue/_methods) on a tiny base: what the zoo runs, small."""
    base = tmp / "_base.yaml"
    base.write_text(f"task: sst2\nteachers:\n  - card: {card}\nstudent: {{init: teacher_layers, layers: [0, 2]}}\n"
                    "training: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_length: 32, max_train_examples: 64, log_every: 1}\n"
                    "speed: {seq_len: 16, throughput_batch: 2, iters: 1}\n")
    paths = []
    for m in METHODS:
        p = tmp / f"{m}.yaml"
        p.write_text(f"defaults: [_base.yaml, {REPO / 'recipes/glue/_methods' / m}.yaml]\nname: zoo-{m}\n")
        paths.append(p)
    return paths


@needs_glue
def test_every_method_runs_end_to_end(tmp_path, tiny_card):
    results = tmp_path / "results"
    paths = _zoo_recipes(tmp_path, tiny_card)
    # general distillation on a text file (one sentence a line), then the task
    (tmp_path / "corpus.txt").write_text("".join(f"sentence number {i} of a small corpus .\n" for i in range(50)))
    general = tmp_path / "general-files.yaml"
    general.write_text("defaults: _base.yaml\nname: general-files\nphases:\n"
                       "  - {name: general, corpus: {files: [corpus.txt], max_examples: 40}, training: {epochs: 2},\n"
                       "     objective: [{term: mlm}, {term: hidden_mse, layer_map: [1, 3]}]}\n"
                       "  - {name: task, objective: [{term: ce}]}\n")
    res = harness_cli("run", *map(str, paths), str(general), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "teacher-output cache: teachers ran over" in res.stdout  # the end-of-run summary
    runs = {m: json.loads((results / "runs" / f"zoo-{m}" / "seed42" / "metrics.json").read_text()) for m in METHODS}
    assert runs["mixkd"]["train"]["teacher_cache"]["status"].startswith("off: MixKD")
    assert runs["kd"]["train"]["teacher_cache"]["status"] in ("built", "hit")
    expected_terms = {"nokd": ["ce"], "kd": ["hinton_kd"], "pkd": ["hinton_kd", "pkd"],
                      "distilbert": ["mlm", "cosine_hidden", "ce"],
                      "tinybert": ["embedding_mse", "attention_mse", "hidden_mse", "hinton_kd"],
                      "minilm": ["minilm", "ce"], "minilmv2": ["minilmv2", "ce"],
                      "mobilebert": ["hidden_mse", "attention_kl", "ce"], "mixkd": ["ce", "mixkd"]}
    for m, rec in runs.items():
        assert rec["terms"] == expected_terms[m], m
        phases = rec["train"].get("phases", [rec["train"]])
        for ph in phases:
            parts = [h["terms"] for h in ph["loss_history"]]
            assert all(torch.isfinite(torch.tensor(p)).all() for p in parts), (m, ph["phase"])
        # the saved student is the plain 2-block student: projections and MLM heads are not in it
        assert rec["params"]["total"] == runs["nokd"]["params"]["total"], m
    # MobileBERT's progressive phase ran once per student block, then the task phase
    assert [(p["phase"], p["block"]) for p in runs["mobilebert"]["train"]["phases"]] == [
        ("progressive", 0), ("progressive", 1), ("finetune", None)]
    # ... with one teacher-output cache for all its blocks: built for the first (or found), then read
    progressive = [p["teacher_cache"]["status"] for p in runs["mobilebert"]["train"]["phases"][:2]]
    assert progressive[1] == "hit", progressive
    assert [p["phase"] for p in runs["tinybert"]["train"]["phases"]] == ["general", "intermediate", "prediction"]
    g = json.loads((results / "runs" / "general-files" / "seed42" / "metrics.json").read_text())["train"]["phases"]
    assert g[0]["phase"] == "general" and g[0]["train_examples"] == 40 and g[0]["steps"] == 6  # 2 epochs of 40 / 16
    mlm = [h["terms"][0] for h in g[0]["loss_history"]]
    assert mlm[-1] < mlm[0], mlm  # the MLM head and student learn the little corpus
    assert harness_cli("verify", "--results-dir", str(results)).returncode == 0
    table = (results / "glue.md").read_text()
    assert all(f"zoo-{m}" in table for m in METHODS)


def test_committed_zoo_recipes_validate_with_shared_defaults():
    res = harness_cli("validate", "recipes/glue/*/*/6L_from_mpnet.yaml")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 5 * len(METHODS)  # partials under _methods/ and _zoo.yaml are not recipes
    assert all("teacher(s)" in ln for ln in lines)
    tiny = harness_cli("validate", "recipes/glue/rte/kd/6L_from_mpnet.yaml", "--set", "training.max_train_examples=100",
                       "--set", "teachers.0.finetune={max_train_examples: 100}")
    assert tiny.returncode == 0, tiny.stderr
    bad = harness_cli("validate", "recipes/glue/rte/kd/6L_from_mpnet.yaml", "--set", "training.max_train_exampels=1")
    assert bad.returncode == 2 and "did you mean 'max_train_examples'" in bad.stderr


def test_defaults_merge_and_circularity(tmp_path):
    from harness.includes import read_with_defaults
    from harness.schema import ConfigError

    (tmp_path / "a.yaml").write_text("training: {lr: 1.0, epochs: 2}\nobjective: [{term: ce}]\n")
    (tmp_path / "b.yaml").write_text("defaults: a.yaml\ntraining: {lr: 2.0}\n")
    merged = read_with_defaults(tmp_path / "b.yaml")
    assert merged == {"training": {"lr": 2.0, "epochs": 2}, "objective": [{"term": "ce"}]}
    (tmp_path / "c.yaml").write_text("defaults: d.yaml\n")
    (tmp_path / "d.yaml").write_text("defaults: c.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        read_with_defaults(tmp_path / "c.yaml")


def test_stage_trains_student_and_terms_never_the_teacher(tmp_path):
    """One real DeepSpeed stage in this process with intermediate terms and MixKD (the teacher runs on
    mixed embeddings inside the step): the teacher ends with no gradients and unchanged weights."""
    import datasets

    from harness.distill import Teacher, train_stage
    from harness.losses import TERMS, Shape
    from harness.recipe_parts import DeepSpeedSettings, Training
    from harness.engine import init_distributed

    init_distributed()
    teacher, student = _tiny("bert"), _tiny("bert")
    student.bert.encoder.layer = student.bert.encoder.layer[:2]
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in student.state_dict().items()}
    s_shape, t_shape = Shape(2, 24, 4), Shape(3, 24, 4)
    specs = [("hidden_mse", {"layer_map": "uniform"}), ("attention_kl", {"layer_map": "uniform"}),
             ("minilmv2", {"relation_heads": 6}), ("mixkd", {}), ("hinton_kd", {})]
    terms = [(TERMS.get(n)(TERMS.get(n).Params(**p), s_shape, [t_shape]), 1.0) for n, p in specs]
    g = torch.Generator().manual_seed(0)
    rows = [{"idx": i, "input_ids": torch.randint(5, 120, (n,), generator=g).tolist(), "attention_mask": [1] * n,
             "label": i % 2, "length": n} for i, n in enumerate([5, 7, 6, 4, 7, 3, 5, 6])]
    ds = datasets.Dataset.from_list(rows)
    training = Training(epochs=2, batch_size=4, lr=1e-3, warmup_ratio=0.0, log_every=1)
    # fp32: in bf16 the stage casts the teacher to bf16, which is not training it but changes its bits
    engine, stats = train_stage(student, [Teacher(teacher, 1.0)], terms, ds, False, training,
                                DeepSpeedSettings(precision="fp32"), pad_id=1, seed=0, desc="test")
    assert stats["steps"] == 4 and all(torch.isfinite(torch.tensor(h["terms"])).all() for h in stats["loss_history"])
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before_t[k]) for k, v in teacher.state_dict().items())
    after_s = engine.module.student.state_dict()
    assert not torch.equal(after_s["bert.encoder.layer.0.attention.self.query.weight"],
                           before_s["bert.encoder.layer.0.attention.self.query.weight"])
