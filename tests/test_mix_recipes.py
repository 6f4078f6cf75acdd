"""The survey's mix baseline and its "soft is all you need" ablations (issue 22, item 5): what each shipped
recipe distils in which phase, that the ablations differ from the mix only where the survey says, that
the one offline gap (the teacher's masked-LM distribution) is refused by validation, and all six recipes
end to end on the tiny BERT through the real CLI."""
import json

import pytest
import torch

from conftest import REAL_GLUE, REPO, harness_cli, needs_glue
from harness.losses import TERMS
from harness.plan import load
from harness.schema import ConfigError

METHODS = ["mix", "mix_noattn", "mix_noattn_soft"]
RECIPES = {(t, m): REPO / f"recipes/glue/{t}/{m}/minilm3L_from_minilm.yaml"
           for t in ("sst2", "mrpc") for m in METHODS}
INTERMEDIATE = {"embedding_mse", "attention_mse", "attention_kl", "minilmv2", "hidden_mse"}
ATTENTION = {"attention_mse", "attention_kl"}  # the survey's "attention terms": scores and probabilities


def _phases(path):
    return [(p.name, p.corpus is not None, [t.term for t in p.objective], p.objective)
            for _, p in load(path).recipe.named_phases()]


@pytest.mark.parametrize("task", ["sst2", "mrpc"])
def test_mix_distils_every_signal_in_three_runs(task):
    plan = load(RECIPES[task, "mix"])
    (g, g_corpus, g_terms, _), (i, i_corpus, i_terms, _), (p, p_corpus, _, p_obj) = _phases(RECIPES[task, "mix"])
    assert (g, i, p) == ("general", "intermediate", "prediction") and (g_corpus, i_corpus, p_corpus) == (True, False, False)
    assert set(g_terms) == INTERMEDIATE | {"mlm"} and set(i_terms) == INTERMEDIATE
    assert [(t.term, t.params.alpha, t.params.temperature) for t in p_obj] == [("hinton_kd", 0.5, 2.0)]  # soft + hard
    general = plan.recipe.named_phases()[0][1]
    tinybert = load(RECIPES[task, "mix"].parents[1] / "tinybert" / "minilm3L_from_minilm.yaml")
    # the very text (same lines) of TinyBERT's and DistilBERT's general stages
    assert general.corpus == tinybert.recipe.named_phases()[0][1].corpus and general.corpus.max_examples == 4000
    # the student: 3 of the teacher's 6 blocks, same width and heads (the attention terms compare heads)
    teacher = plan.teachers[0].card
    assert teacher.name == "all-MiniLM-L6-v2" and plan.student_shape.layers == 3 < teacher.layers
    assert (plan.student_shape.hidden, plan.student_shape.heads) == (teacher.hidden, teacher.heads)


@pytest.mark.parametrize("task", ["sst2", "mrpc"])
def test_ablations_drop_only_what_the_survey_drops(task):
    mix, noattn, soft = (_phases(RECIPES[task, m]) for m in METHODS)
    for a, b in zip(mix, noattn):
        assert b[:2] == a[:2] and b[2] == [t for t in a[2] if t not in ATTENTION]
    assert noattn[2][3][0].params.alpha == 0.5 and mix[2][3] == noattn[2][3]
    for a, b in zip(noattn, soft):  # then the hard label goes: alpha 1 is the soft KL alone
        assert b[:3] == a[:3]
    assert [(t.params.alpha, t.params.temperature) for t in soft[2][3]] == [(1.0, 2.0)]
    # everything but the objectives is the same recipe: one budget, one teacher, one student
    recipes = [load(RECIPES[task, m]).recipe.model_dump() for m in METHODS]
    for r in recipes:
        r.pop("name")
        for p in r["phases"]:
            p.pop("objective")
    assert recipes[0] == recipes[1] == recipes[2]


def test_teacher_mlm_distribution_cannot_run_offline():
    """The pre-training "logit KL" (DistilBERT's soft targets over the teacher's masked-LM distribution)
    needs a teacher with an MLM head; the offline MiniLM card has none, and validation says so."""
    if "mlm_kd" not in TERMS:
        pytest.skip("no mlm_kd term in this checkout")
    with pytest.raises(ConfigError, match=r"teachers\[0\]: card all-MiniLM-L6-v2 declares no mlm_head"):
        load(RECIPES["sst2", "mix"], ["phases.0.objective=[{term: mlm}, {term: mlm_kd}, {term: hidden_mse}]"])


def test_attention_terms_need_the_teachers_head_count():
    over = ["student={init: config, tokenizer_card: all-MiniLM-L6-v2, layers: 3, hidden: 384, heads: 6, ffn: 768}"]
    with pytest.raises(ConfigError, match=r"phases\[0\]\.objective\[1\]\.term: compares attention .* student has 6 "
                                          r"heads and the teacher 12"):
        load(RECIPES["sst2", "mix"], over)
    assert load(RECIPES["sst2", "mix_noattn"], over).recipe.student.heads == 6  # no attention term: fine


@needs_glue
def test_mix_recipes_end_to_end(tmp_path, tiny_card):
    """All six recipes on the tiny BERT (3 of its 4 blocks as the student): the general phase on GLUE
    text, then both task phases; what each phase trained, and finite losses throughout."""
    results = tmp_path / "results"
    res = harness_cli(
        "run", *map(str, RECIPES.values()), "--results-dir", str(results), "--glue-dir", REAL_GLUE,
        "--set", f"teachers=[{{card: {tiny_card}, finetune: {{max_train_examples: 48, epochs: 1}}}}]",
        "--set", "student.layers=[0, 2, 3]", "--set", "phases.0.corpus.max_examples=40",
        "--set", "training={max_train_examples: 48, max_length: 32, epochs: 1, batch_size: 16, seed: 5, log_every: 1}",
        "--set", "speed={seq_len: 16, throughput_batch: 2, iters: 1}",
        env={"OMP_NUM_THREADS": "1"})  # tiny models: a second thread only spins against other runs
    assert res.returncode == 0, res.stderr[-4000:]
    runs = {(t, m): json.loads((results / f"runs/glue/{t}/{m}/minilm3L_from_minilm/seed5/metrics.json").read_text())
            for t, m in RECIPES}
    for (task, method), m in runs.items():
        phases = m["train"]["phases"]
        assert [p["phase"] for p in phases] == ["general", "intermediate", "prediction"], (task, method)
        assert phases[0]["train_examples"] == 40  # the capped GLUE text, not the task's 48 examples
        assert phases[1]["train_examples"] == phases[2]["train_examples"] == 48
        expected = [t for t in ["embedding_mse", "attention_mse", "attention_kl", "minilmv2", "hidden_mse", "mlm"]
                    if method == "mix" or t not in ATTENTION]
        assert phases[0]["terms"] == expected and phases[1]["terms"] == expected[:-1]
        for p in phases:
            parts = [h["terms"] for h in p["loss_history"]]
            assert parts and all(torch.isfinite(torch.tensor(x)).all() for x in parts), (task, method, p["phase"])
        assert m["lineage"] == ["tiny-bert", "3L-from-tiny-bert"]
        teacher = json.loads(next((results / "runs/teachers/tiny-bert" / task).glob("*/metrics.json")).read_text())
        assert m["params"]["total"] < teacher["params"]["total"]  # the MLM head and projections are not kept
    assert harness_cli("verify", "--results-dir", str(results)).returncode == 0
