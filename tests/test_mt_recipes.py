"""MT-BERT's shipped recipes (issue 22, item 4): three co-finetuned copies of one card told apart by their
dropout seeds (each its own cached model and record), and heterogeneous teachers where only logit terms
apply; validation of copies and widths, the per-teacher dropout streams, and both recipes end to end on
tiny models through the real CLI."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REAL_GLUE, REPO, harness_cli, needs_glue
from harness.losses import TERMS
from harness.plan import load
from harness.schema import ConfigError

COFT = [REPO / f"recipes/glue/{t}/mt_mtbert_coft/minilm3L_from_minilm_x3.yaml" for t in ("sst2", "mrpc")]
HETERO = [REPO / f"recipes/glue/{t}/mt_mtbert/minilm3L_from_mpnet_minilm.yaml" for t in ("sst2", "mrpc")]
SMALL = ["--set", "training={max_train_examples: 48, max_length: 32, epochs: 1, batch_size: 16, seed: 3, "
                  "log_every: 1}",
         "--set", "speed={seq_len: 16, throughput_batch: 2, iters: 1}",
         "--set", "student.layers=[0, 2, 3]"]  # 3 blocks of the 4-block tiny BERT
# tiny models gain nothing from a second thread, and on 2 cores shared with other runs its spin-waits
# made evaluation 10x slower
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _installed(card):
    from harness.teachers import find_card, load_card
    return load_card(find_card(card)).local_checkpoint()


MPNET = _installed("all-mpnet-base-v2")  # before the session's own cache is set


@pytest.mark.parametrize("path", COFT, ids=lambda p: p.parts[-3])
def test_cofinetuned_copies_recipe(path):
    plan = load(path)
    r = plan.recipe
    assert [t.card.name for t in plan.teachers] == ["all-MiniLM-L6-v2"] * 3
    assert plan.cofinetune_seeds() == [1, 2, 3] and r.cofinetune is not None
    assert r.teacher_weighting.scheme == "mtbert"
    assert [(t.term, t.params.model_dump().get("combine")) for t in r.objective] == [("hinton_kd", "sum"),
                                                                                      ("hidden_mse", None)]
    # 3 blocks of the 6-block teacher, same width: no projection between them
    assert plan.student_shape.layers == 3 < plan.teachers[0].card.layers
    assert plan.student_shape.hidden == plan.teachers[0].card.hidden


@pytest.mark.parametrize("path", HETERO, ids=lambda p: p.parts[-3])
def test_heterogeneous_recipe_has_only_logit_terms(path):
    plan = load(path)
    assert [t.card.name for t in plan.teachers] == ["all-mpnet-base-v2", "all-MiniLM-L6-v2"]
    assert plan.recipe.cofinetune is None and plan.recipe.teacher_weighting.scheme == "mtbert"
    assert all(TERMS.get(t.term).level == "logits" for t in plan.recipe.objective)
    assert plan.student_card.name == "all-MiniLM-L6-v2"  # not cut from MPNet, the first teacher
    assert all(plan.student_shape.layers < t.card.layers for t in plan.teachers)


def test_student_is_smaller_than_every_teacher():
    from harness.models import build_student, load_classifier

    def count(m):
        return sum(p.numel() for p in m.parameters())
    plan = load(HETERO[0])
    student = count(build_student(plan.recipe.student, plan.student_card, plan.task, 0)[0])
    minilm = count(load_classifier(plan.teachers[1].card.pretrained_path(), plan.task))
    assert student == 17_390_594 and minilm == 22_713_986  # the figures the recipes' comments give
    assert plan.teachers[0].card.hidden == 768 and plan.teachers[0].card.layers == 12  # MPNet: 109.5M


@pytest.mark.parametrize("edits, match", [
    ([("{seed: 3}", "{seed: 1}")], r"teachers\[2\]: all-MiniLM-L6-v2 with dropout seed 1, as teachers\[0\]"),
    # a copy with no seed of its own runs on the joint run's seed (the card's 42), which another copy names
    ([(", finetune: {seed: 3}", ""), ("{seed: 2}", "{seed: 42}")],
     r"teachers\[2\]: all-MiniLM-L6-v2 with dropout seed 42, as teachers\[1\]"),
    ([("{seed: 3}", "{seed: 3, epochs: 1}")], r"cofinetune: .* \(which may hold only a seed"),
    ([("{seed: 3}", "{seed: [3, 4]}")], r"teachers\[2\]\.finetune\.seed: one seed per co-finetuned teacher"),
])
def test_copies_need_seeds_of_their_own(tmp_path, edits, match):
    text = (REPO / "recipes/glue/_methods/mt_mtbert_coft.yaml").read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    p = tmp_path / "r.yaml"
    p.write_text(text + "task: sst2\nstudent: {init: teacher_layers, layers: [0, 2, 4]}\n")
    with pytest.raises(ConfigError, match=match):
        load(p)


def test_copies_without_any_seed_are_one_model(tmp_path):
    p = tmp_path / "r.yaml"
    text = (REPO / "recipes/glue/_methods/mt_mtbert_coft.yaml").read_text()
    for s in (1, 2, 3):
        text = text.replace(f", finetune: {{seed: {s}}}", "")
    p.write_text(text + "task: sst2\nstudent: {init: teacher_layers, layers: [0, 2, 4]}\n")
    with pytest.raises(ConfigError, match=r"teachers\[1\]: all-MiniLM-L6-v2 with the joint run's seed, as teachers\[0\]"):
        load(p)


def test_separately_finetuned_copies_are_other_instances(tmp_path):
    """Without co-finetuning, a seed in finetune is part of each teacher's cache key already."""
    p = tmp_path / "r.yaml"
    p.write_text((REPO / "recipes/glue/_methods/mt_mtbert_coft.yaml").read_text().replace("cofinetune: {}", "")
                 + "task: sst2\nstudent: {init: teacher_layers, layers: [0, 2, 4]}\n")
    plan = load(p)
    folders = {t.folder(0) for t in plan.teachers}
    assert len(folders) == 3 and len({t.record_dir(tmp_path, 0) for t in plan.teachers}) == 3


def test_hidden_term_across_widths_names_the_teacher():
    over = ["objective=[{term: hinton_kd, combine: sum}, {term: hidden_mse, projection: false}]"]
    with pytest.raises(ConfigError, match=r"objective\[1\]\.projection: student hidden width 384 differs from teacher "
                                          r"hidden width 768; .*\(hidden_mse\); it cannot be built for teachers\[0\] "
                                          r"\(all-mpnet-base-v2\)$"):
        load(HETERO[0], over)


@pytest.mark.skipif(not MPNET, reason="python -m harness teachers install all-mpnet-base-v2")
def test_hidden_term_across_tokenizers_is_rejected(cache):
    models = cache / "models" / "all-mpnet-base-v2"  # the split zip, seen from the session's own cache
    if not models.exists():
        models.parent.mkdir(parents=True, exist_ok=True)
        models.symlink_to(MPNET.parent, target_is_directory=True)
    with pytest.raises(ConfigError, match=r"objective\[1\]: hidden_mse compares the models token by token, but "
                                          r"all-mpnet-base-v2 tokenizes text differently"):
        load(HETERO[1], ["objective=[{term: hinton_kd, combine: sum}, {term: hidden_mse}]"])


def _tiny_bert(seed: int):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32))


def test_dropout_streams_set_copies_apart():
    """Two copies of one model co-finetuned on the same batches: with one seed each they end apart,
    with the same seed they end identical (the stream depends on nothing else), and a rerun repeats
    the first bit for bit."""
    import datasets

    import harness.cofinetune as co
    from harness.engine import init_distributed
    from harness.recipe_parts import Training

    init_distributed()
    g = torch.Generator().manual_seed(0)
    rows = [{"idx": i, "input_ids": torch.randint(5, 60, (n,), generator=g).tolist(), "attention_mask": [1] * n,
             "label": i % 2, "length": n} for i, n in enumerate([5, 7, 6, 4, 7, 3, 5, 6] * 2)]
    ds = datasets.Dataset.from_list(rows)
    training = Training(epochs=1, batch_size=8, lr=1e-2, warmup_ratio=0.0, log_every=1)

    def run(seeds):
        models, _ = co.cofinetune([_tiny_bert(0), _tiny_bert(0)], [ds, ds], [0, 0], False, training, 0, "joint",
                                  teacher_seeds=seeds)
        return [m.bert.encoder.state_dict() for m in models], models

    (a, b), models = run([1, 2])
    assert not all(torch.equal(a[k], b[k]) for k in a)
    assert models[0].classifier is models[1].classifier  # still one shared head
    same_a, same_b = run([1, 1])[0]
    assert all(torch.equal(same_a[k], same_b[k]) for k in same_a)
    again_a, again_b = run([1, 2])[0]
    assert all(torch.equal(a[k], again_a[k]) and torch.equal(b[k], again_b[k]) for k in a)


@needs_glue
def test_cofinetuned_copies_end_to_end(tmp_path, tiny_card, cache):
    """Both shipped co-finetuning recipes with three copies of the tiny BERT: three cached models, each
    with its own record, one shared head and encoders apart; a student taught by all three."""
    results = tmp_path / "results"
    copies = ", ".join(f"{{card: {tiny_card}, finetune: {{seed: {s}}}}}" for s in (1, 2, 3))
    res = harness_cli("run", *map(str, COFT), "--results-dir", str(results), "--glue-dir", REAL_GLUE, *SMALL,
                      "--set", f"teachers=[{copies}]",
                      "--set", "cofinetune={max_train_examples: 48, max_length: 32, epochs: 1, batch_size: 16}",
                      env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-4000:]
    for task in ("sst2", "mrpc"):
        folders = sorted(cache.glob(f"teachers/tiny-bert/{task}/co-*"))
        assert [f.name[-6:] for f in folders] == ["-seed1", "-seed2", "-seed3"]
        assert len({f.name[:-6] for f in folders}) == 1  # one joint run
        models = [_load(f) for f in folders]
        assert all(torch.equal(models[0].classifier.weight, m.classifier.weight) for m in models)
        q = [m.bert.encoder.layer[0].attention.self.query.weight for m in models]
        assert not torch.equal(q[0], q[1]) and not torch.equal(q[1], q[2])
        records = [json.loads((results / "runs/teachers/tiny-bert" / task / f.name / "metrics.json").read_text())
                   for f in folders]
        assert [r["seed"] for r in records] == [1, 2, 3]
        assert records[0]["cofinetuned_with"] == ["tiny-bert (seed 2)", "tiny-bert (seed 3)"]
        m = json.loads((results / f"runs/glue/{task}/mt_mtbert_coft/minilm3L_from_minilm_x3/seed3/metrics.json")
                       .read_text())
        assert m["lineage"][0] == ("tiny-bert (co-ft, seed 1) + tiny-bert (co-ft, seed 2) + "
                                   "tiny-bert (co-ft, seed 3) (mtbert)")
        assert len(m["teacher_scores"]) == 3 and len({t["instance"] for t in m["teachers"]}) == 3
        assert m["terms"] == ["hinton_kd", "hidden_mse"]
        mean = m["train"]["teacher_weighting"]["per_epoch"][0]["mean"]
        assert len(mean) == 3 and sum(mean) == pytest.approx(1.0, abs=1e-3)
        parts = [h["terms"] for h in m["train"]["loss_history"]]
        assert all(torch.isfinite(torch.tensor(p)).all() for p in parts)
    assert harness_cli("verify", "--results-dir", str(results)).returncode == 0


def _load(folder: Path):
    from transformers import AutoModelForSequenceClassification
    return AutoModelForSequenceClassification.from_pretrained(folder)


@needs_glue
@pytest.mark.skipif(not MPNET, reason="python -m harness teachers install all-mpnet-base-v2")
def test_heterogeneous_teachers_end_to_end(tmp_path, tiny_card, cache):
    """Both shipped heterogeneous recipes with a tiny MPNet (MPNet's ids, wider) and the tiny BERT, each
    fine-tuned alone, teaching a student cut from the tiny BERT by MT-BERT's weights on the logits."""
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    tok = AutoTokenizer.from_pretrained(MPNET)
    torch.manual_seed(0)
    MPNetModel(MPNetConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=96, max_position_embeddings=130)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    mpnet = tmp_path / "tiny-mpnet.yaml"
    mpnet.write_text("name: tiny-mpnet\narchitecture: mpnet\nlayers: 2\nhidden: 64\nheads: 4\n"
                     "checkpoint: {path: model}\n"
                     "finetune: {epochs: 1, lr: 1.0e-3, batch_size: 16, max_length: 32}\n")
    results = tmp_path / "results"
    small_ft = "finetune: {max_train_examples: 48}"
    res = harness_cli("run", *map(str, HETERO), "--results-dir", str(results), "--glue-dir", REAL_GLUE, *SMALL,
                      "--set", f"teachers=[{{card: {mpnet}, {small_ft}}}, {{card: {tiny_card}, {small_ft}}}]",
                      "--set", f"student.card={tiny_card}", env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-4000:]
    for task in ("sst2", "mrpc"):
        m = json.loads((results / f"runs/glue/{task}/mt_mtbert/minilm3L_from_mpnet_minilm/seed3/metrics.json")
                       .read_text())
        assert m["lineage"] == ["tiny-mpnet + tiny-bert (mtbert)", "3L-from-tiny-bert"]
        mean = m["train"]["teacher_weighting"]["per_epoch"][0]["mean"]
        assert len(mean) == 2 and mean[0] != 0.5  # per example, not the static halves
        assert len(m["teacher_scores"]) == 2 and m["terms"] == ["hinton_kd"]


@needs_glue
def test_plan_cost_counts_cofinetuned_teachers_until_their_joint_folders_are_cached(tmp_path, monkeypatch):
    """The plan's estimate looks for co-finetuned teachers where co-finetuning puts them (their joint
    folders), not where a lone fine-tune would: once there at this commit, they cost nothing."""
    from harness.paths import REPO_ROOT
    from harness.records import git_state
    from harness.study_cost import Speeds, cell_cost
    from harness.teacher_prep import joint_spec

    monkeypatch.setenv("KD_HARNESS_CACHE", str(tmp_path / "cache"))
    plan, speeds = load(COFT[1]), Speeds(tmp_path / "results")
    folders = [f for f, _ in joint_spec(plan, tmp_path / "results").entries]
    assert len(set(folders)) == 3 and all(f.name.startswith("co-") for f in folders)
    costs = []
    for n_cached in range(4):
        for f in folders[:n_cached]:
            (f / "record").mkdir(parents=True, exist_ok=True)
            (f / "record" / "metrics.json").write_text("{}")
            (f / "record" / "env.json").write_text(json.dumps({"git_commit": git_state(REPO_ROOT)[0],
                                                               "git_changed": list(git_state(REPO_ROOT)[1])}))
        costs.append(cell_cost(plan, [0], speeds, Path(REAL_GLUE)).examples)
    # each cached copy takes one fine-tune (MRPC's 3,668 pairs x its epochs) off the estimate
    steps = {a - b for a, b in zip(costs, costs[1:])}
    epochs = plan.teachers[0].card.finetune_for("mrpc", plan.recipe.cofinetune).epochs
    assert steps == {3668 * epochs}


@needs_glue
def test_plan_cost_of_cofinetuned_teachers_follows_the_recipes_joint_settings(tmp_path, monkeypatch):
    """SST-2's joint run is capped at 8,000 examples by the recipe's `cofinetune`, whatever the cards'
    own fine-tunes say: the estimate counts each teacher at that cap (it once counted all 67k)."""
    from harness.study_cost import Speeds, cell_cost

    monkeypatch.setenv("KD_HARNESS_CACHE", str(tmp_path / "cache"))
    plan = load(COFT[0])
    student = plan.recipe.training.max_train_examples * plan.recipe.training.epochs
    cost = cell_cost(plan, [0], Speeds(tmp_path / "results"), Path(REAL_GLUE)).examples
    joint = yaml.safe_load(COFT[0].read_text())["cofinetune"]
    assert joint["max_train_examples"] == 8000
    assert cost == student + 3 * 8000 * joint["epochs"]
