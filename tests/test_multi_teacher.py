"""Several teachers: per-example weighting schemes against hand-computed values, the two ways of
combining logit-level KD against direct formulas, per-example weights in intermediate terms, and
recipe validation of weighting and mixed tokenizers."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import REAL_GLUE, harness_cli, needs_glue
from harness.features import Features
from harness.losses import TERMS, Batch, Shape
from harness.plan import load
from harness.schema import ConfigError
from harness.weighting import WeightingSpec, teacher_weights

LN3 = math.log(3.0)
# teacher A is unsure on both examples (p = 0.5 / 0.5); teacher B puts 3:1 on class 0 for both
LOGITS = [torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([[LN3, 0.0], [LN3, 0.0]])]
LABELS = torch.tensor([0, 1])
EVEN = torch.tensor([0.5, 0.5])


def weights(scheme, static=EVEN, logits=LOGITS, labels=LABELS, regression=False, **kw):
    return teacher_weights(WeightingSpec(scheme=scheme, **kw), logits, labels, static, regression).numpy()


def test_mtbert_weights_by_hand():
    # example 0 (gold 0): CE_A = ln 2, CE_B = ln(4/3); example 1 (gold 1): CE_A = ln 2, CE_B = ln 4
    a0, b0 = 1 / (1 + math.log(2)), 1 / (1 + math.log(4 / 3))
    a1, b1 = 1 / (1 + math.log(2)), 1 / (1 + math.log(4))
    expect = np.array([[a0, b0], [a1, b1]])
    expect /= expect.sum(1, keepdims=True)
    assert np.allclose(weights("mtbert"), expect, atol=1e-6)
    # B is right on example 0 and wrong on example 1: it leads on the first only
    w = weights("mtbert")
    assert w[0, 1] > 0.5 > w[1, 1]


def test_mtbert_multiplies_static_weights_and_handles_regression():
    # static 3:1 times 1/(1+CE): example 0 -> 3 a0 : b0
    a0, b0 = 1 / (1 + math.log(2)), 1 / (1 + math.log(4 / 3))
    w = weights("mtbert", static=torch.tensor([0.75, 0.25]))
    assert w[0, 0] == pytest.approx(3 * a0 / (3 * a0 + b0), abs=1e-6)
    # regression: squared error to the gold score in place of CE; scores 1 and 3
    reg = [torch.tensor([[1.0], [1.0]]), torch.tensor([[3.0], [3.0]])]
    w = weights("mtbert", logits=reg, labels=torch.tensor([2.0, 1.0]), regression=True)
    assert np.allclose(w[0], [0.5, 0.5])  # errors 1 and 1
    assert np.allclose(w[1], [5 / 6, 1 / 6])  # errors 0 and 4: 1 : 1/5


def test_confidence_weights_by_hand():
    assert np.allclose(weights("confidence"), [[0.4, 0.6], [0.4, 0.6]])  # max probs 0.5 and 0.75
    # entropy: A is uniform (certainty 0, floored at 1e-6), B has certainty 1 - H(0.75, 0.25) / ln 2
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    cb = 1 - h / math.log(2)
    w = weights("confidence", confidence="entropy")
    assert w[0, 1] == pytest.approx(cb / (cb + 1e-6), abs=1e-6)


def test_uniform_ignores_static_and_static_broadcasts():
    assert np.allclose(weights("uniform", static=torch.tensor([0.9, 0.1])), 0.5)
    assert np.allclose(weights("static", static=torch.tensor([0.9, 0.1])), [[0.9, 0.1], [0.9, 0.1]])


def _feats(logits, hidden=None, mask=None):
    return Features(logits=logits, mask=mask, heads=1, hidden=hidden)


def _kd(combine, regression=False):
    term = TERMS.get("hinton_kd")(TERMS.get("hinton_kd").Params(temperature=2.0, alpha=1.0, combine=combine))
    return term


def test_hinton_mixture_and_sum_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    s, t0, t1 = (torch.randn(3, 4, generator=g) for _ in range(3))
    w = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])
    batch = Batch(_feats(s), [_feats(t0), _feats(t1)], w, torch.zeros(3, dtype=torch.long), regression=False)
    T = 2.0

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    q = softmax(s.numpy() / T)
    p0, p1 = softmax(t0.numpy() / T), softmax(t1.numpy() / T)
    wn = w.numpy()
    mix = wn[:, :1] * p0 + wn[:, 1:] * p1
    kl = lambda p: (p * (np.log(p) - np.log(q))).sum(-1)  # noqa: E731  [B]
    assert _kd("mixture")(batch).item() == pytest.approx(kl(mix).mean() * T * T, rel=1e-5)
    assert _kd("sum")(batch).item() == pytest.approx((wn[:, 0] * kl(p0) + wn[:, 1] * kl(p1)).mean() * T * T, rel=1e-5)
    # one teacher: the two agree
    one = Batch(_feats(s), [_feats(t0)], torch.ones(1), torch.zeros(3, dtype=torch.long), regression=False)
    assert _kd("mixture")(one).item() == pytest.approx(_kd("sum")(one).item(), rel=1e-6)


def test_hinton_regression_mixture_and_sum():
    s, t0, t1 = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [4.0]]), torch.tensor([[2.0], [2.0]])
    w = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    batch = Batch(_feats(s), [_feats(t0), _feats(t1)], w, torch.zeros(2), regression=True)
    # mixture targets 1.0 and 2.5 -> errors 0 and 0.25; sum: (0.5*1 + 0.5*1) and (0.25*4 + 0.75*0)
    assert _kd("mixture")(batch).item() == pytest.approx((0 + 0.25) / 2)
    assert _kd("sum")(batch).item() == pytest.approx((1.0 + 1.0) / 2)


def test_per_example_weights_in_an_intermediate_term():
    """hidden_mse with [B, K] weights = sum_k sum_b w_bk * (b's squared error summed over real tokens
    and dims) / (real tokens * dims), checked against a loop."""
    g = torch.Generator().manual_seed(1)
    B, T, H = 2, 3, 4
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    hs = [torch.randn(B, T, H, generator=g) for _ in range(2)]
    ht = [[torch.randn(B, T, H, generator=g) for _ in range(2)] for _ in range(2)]
    term = TERMS.get("hidden_mse")(TERMS.get("hidden_mse").Params(layer_map=[0]), Shape(1, H, 1),
                                   [Shape(1, H, 1), Shape(1, H, 1)])
    w = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    batch = Batch(_feats(torch.zeros(B, 2), hs, mask), [_feats(torch.zeros(B, 2), h, mask) for h in ht], w,
                  torch.zeros(B, dtype=torch.long), regression=False)
    expect = 0.0
    for k in range(2):
        num = sum(w[b, k].item() * ((hs[1][b, t] - ht[k][1][b, t]) ** 2).sum().item()
                  for b in range(B) for t in range(T) if mask[b, t])
        expect += num / (mask.sum().item() * H)
    assert term(batch).item() == pytest.approx(expect, rel=1e-5)


TWO = """
task: {task}
teachers:
  - card: all-MiniLM-L6-v2
  - card: all-mpnet-base-v2
teacher_weighting: {{scheme: {scheme}}}
student: {{init: teacher_layers, card: all-MiniLM-L6-v2, layers: [0, 2, 4]}}
objective:
  - {{term: {term}}}
"""


def _installed(card):
    from harness.teachers import find_card, load_card
    return load_card(find_card(card)).local_checkpoint()


# where `harness teachers install` put them, looked up before the test session's own cache is set
MINILM, MPNET = _installed("all-MiniLM-L6-v2"), _installed("all-mpnet-base-v2")
needs_both = pytest.mark.skipif(not (MINILM and MPNET),
                                reason="python -m harness teachers install all-MiniLM-L6-v2 all-mpnet-base-v2")


@pytest.fixture
def mpnet_in_cache(cache):
    """The assembled MPNet split zip, seen from this test session's own cache (where split zips live)."""
    models = cache / "models" / "all-mpnet-base-v2"
    if not models.exists():
        models.parent.mkdir(parents=True, exist_ok=True)
        models.symlink_to(MPNET.parent, target_is_directory=True)
    return models


@needs_both
def test_intermediate_terms_across_tokenizers_fail_validation(tmp_path, mpnet_in_cache):
    p = tmp_path / "r.yaml"
    p.write_text(TWO.format(task="sst2", scheme="mtbert", term="hidden_mse"))
    with pytest.raises(ConfigError, match=r"objective\[0\]: hidden_mse .* all-mpnet-base-v2 tokenizes text "
                                          r"differently"):
        load(p).recipe
    p.write_text(TWO.format(task="sst2", scheme="mtbert", term="hinton_kd"))
    assert load(p).recipe.teacher_weighting.scheme == "mtbert"  # logit-level: fine


def test_weighting_validation(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(TWO.format(task="stsb", scheme="confidence", term="hinton_kd"))
    with pytest.raises(ConfigError, match="teacher_weighting.scheme: confidence needs class distributions"):
        load(p).recipe
    p.write_text(TWO.format(task="sst2", scheme="mt-bert", term="hinton_kd"))
    with pytest.raises(ConfigError, match="Did you mean 'mtbert'"):
        load(p).recipe
    p.write_text(TWO.format(task="sst2", scheme="mtbert", term="hinton_kd") + "cofinetune: {}\n")
    with pytest.raises(ConfigError, match=r"cofinetune: the shared pooling and prediction layer need one hidden "
                                          r"width, but the teachers have \{'all-MiniLM-L6-v2': 384, 'all-mpnet-base-v2': 768\}"):
        load(p).recipe
    p.write_text(TWO.format(task="sst2", scheme="mtbert", term="hinton_kd").replace(
        "card: all-mpnet-base-v2", "card: all-MiniLM-L6-v2") + "cofinetune: {epochs: 0}\n")
    with pytest.raises(ConfigError, match="cofinetune: .*epochs"):
        load(p).recipe


@pytest.mark.slow
@needs_glue
@needs_both
def test_two_teachers_with_different_tokenizers_end_to_end(tmp_path, cache, mpnet_in_cache):
    """MiniLM (BERT vocabulary) and MPNet (its own ids) teach a 3-block MiniLM student on real SST-2,
    each reading the text through its own tokenizer, weighted per example by MT-BERT's rule."""
    p = tmp_path / "two.yaml"
    p.write_text(TWO.format(task="sst2", scheme="mtbert", term="hinton_kd").replace(
        "  - card: all-MiniLM-L6-v2\n  - card: all-mpnet-base-v2\n",
        "  - {card: all-MiniLM-L6-v2, finetune: {max_train_examples: 96, max_length: 32, epochs: 1}}\n"
        "  - {card: all-mpnet-base-v2, finetune: {max_train_examples: 96, max_length: 32, epochs: 1}}\n")
        + "training: {max_train_examples: 96, max_length: 32, epochs: 2, batch_size: 16, seed: 7}\n"
          "speed: {seq_len: 16, throughput_batch: 4, iters: 1}\n")
    results = tmp_path / "results"
    res = harness_cli("run", str(p), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads(next((results / "runs").glob("two/seed7/metrics.json")).read_text())
    assert m["lineage"] == ["all-MiniLM-L6-v2 + all-mpnet-base-v2 (mtbert)", "3L-from-all-MiniLM-L6-v2"]
    per_epoch = m["train"]["teacher_weighting"]["per_epoch"]
    assert [e["epoch"] for e in per_epoch] == [1, 2]
    for e in per_epoch:  # two teachers' mean weights, summing to 1, not stuck at the static 0.5
        assert sum(e["mean"]) == pytest.approx(1.0, abs=1e-3) and e["mean"][0] != 0.5
    assert len(m["teacher_scores"]) == 2
    glue = (results / "glue.md").read_text()
    assert "all-MiniLM-L6-v2 + all-mpnet-base-v2 (mtbert) → 3L-from-all-MiniLM-L6-v2" in glue


@pytest.mark.slow
@needs_glue
@needs_both
def test_cofinetuned_teachers_share_one_head(tmp_path, tiny_card, cache):
    """MT-BERT co-finetuning of a tiny BERT (bert-base vocabulary) and a tiny MPNet (MPNet's ids) of the
    same width: after the joint run both saved classifiers hold the same pooling and prediction
    weights, each scores the dev set from its own tokenization, and a student learns from the two."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, MPNetConfig, MPNetModel

    tok = AutoTokenizer.from_pretrained(MPNET)
    torch.manual_seed(0)
    MPNetModel(MPNetConfig(vocab_size=len(tok), hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=96, max_position_embeddings=130)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    mpnet_card = tmp_path / "tiny-mpnet.yaml"
    mpnet_card.write_text("name: tiny-mpnet\narchitecture: mpnet\nlayers: 2\nhidden: 48\nheads: 4\n"
                          "checkpoint: {path: model}\n")
    p = tmp_path / "co.yaml"
    p.write_text(f"""
task: sst2
teachers: [{{card: {tiny_card}}}, {{card: {mpnet_card}}}]
cofinetune: {{epochs: 2, max_train_examples: 128, max_length: 32}}
teacher_weighting: {{scheme: confidence}}
student: {{init: config, tokenizer_card: {tiny_card}, layers: 1, hidden: 32, heads: 2, ffn: 64}}
objective: [{{term: hinton_kd}}]
training: {{max_train_examples: 128, max_length: 32, epochs: 1, batch_size: 16, seed: 5}}
speed: {{seq_len: 16, throughput_batch: 4, iters: 1}}
""")
    results = tmp_path / "results"
    res = harness_cli("run", str(p), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "co-finetune tiny-bert + tiny-mpnet on SST-2" in res.stderr  # its progress bar
    # this pair's co-finetuned folders (the session's cache holds other tests' co-finetuned teachers too)
    folders = sorted(f for f in cache.glob("teachers/*/sst2/co-*") if json.loads(
        (f / "record" / "metrics.json").read_text())["cofinetuned_with"] in (["tiny-bert"], ["tiny-mpnet"]))
    assert [f.parts[-3] for f in folders] == ["tiny-bert", "tiny-mpnet"]
    bert, mpnet = (AutoModelForSequenceClassification.from_pretrained(f) for f in folders)
    assert torch.equal(bert.bert.pooler.dense.weight, mpnet.classifier.dense.weight)
    assert torch.equal(bert.classifier.weight, mpnet.classifier.out_proj.weight)
    m = json.loads((results / "runs" / "co" / "seed5" / "metrics.json").read_text())
    assert m["lineage"][0] == "tiny-bert (co-ft) + tiny-mpnet (co-ft) (confidence)"
    glue = (results / "glue.md").read_text()
    assert "teacher (co-finetuned with tiny-mpnet, cap 128): tiny-bert" in glue
    assert harness_cli("verify", "--results-dir", str(results)).returncode == 0  # each teacher's predictions
    # a second run reuses the pair (no co-finetuning)
    res = harness_cli("run", str(p), "--results-dir", str(results), "--glue-dir", REAL_GLUE, "--force")
    assert res.returncode == 0 and "co-finetune" not in res.stderr
