"""DistilBERT's soft-target term (mlm_kd) against the formula written out here, on tiny random BERTs;
the teacher's masked-LM head as a card declares it; the validation error for a card without one; and
a general phase with mlm + mlm_kd + cosine run end to end through the CLI."""
import json
import math

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from conftest import REAL_GLUE, harness_cli, needs_glue
from harness.checks import build_terms
from harness.features import Need, forward_features
from harness.losses import TERMS, Batch, Shape
from harness.recipe_parts import Phase
from harness.schema import ConfigError

V, H = 40, 16


def tiny(cls, seed: int):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32, attn_implementation="eager")
    return cls(cfg).eval()


def inputs():
    ids = torch.randint(5, V, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    labels = torch.full((3, 6), -100)
    labels[0, 1], labels[1, 3], labels[2, 0] = 7, 9, 11  # the masked positions (MLM labels)
    return {"input_ids": ids, "attention_mask": mask}, labels


def soft_term(temperature=2.0, positions="all", n_teachers=1):
    term = TERMS.get("mlm_kd")(TERMS.get("mlm_kd").Params(temperature=temperature, positions=positions),
                               Shape(2, H, 2), [Shape(2, H, 2)] * n_teachers)
    with torch.no_grad():  # a head far from its initialisation, so that every part of it shows
        for p in term.transform.parameters():
            p.normal_(0.2, 0.5)
    return term


def reference(term, s_hidden, teacher_logits, keep, weights, T):
    """T^2 * (1/N) sum over kept tokens of sum_k w_k KL(p_k || q), every step spelled out in float64."""
    lin, ln = term.transform[0], term.transform[2]
    h = s_hidden.double()[keep]  # [N, H]
    a = h @ lin.weight.double().T + lin.bias.double()
    g = 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))  # exact GELU
    mu, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
    z = ((g - mu) / torch.sqrt(var + ln.eps)) * ln.weight.double() + ln.bias.double()
    z_s = z @ term.embeddings.weight.double().T + term.bias.double()  # [N, V]
    log_q = z_s / T - torch.logsumexp(z_s / T, -1, keepdim=True)
    total = 0.0
    for k, zt in enumerate(teacher_logits):
        zt = zt.double()[keep] / T
        log_p = zt - torch.logsumexp(zt, -1, keepdim=True)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [N]
        w = weights[:, k][:, None].expand(keep.shape)[keep].double()
        total = total + (w * kl).sum() / keep.sum()
    return T * T * total


@pytest.mark.parametrize("positions", ["all", "masked"])
def test_soft_targets_match_the_formula(positions):
    student, teachers = tiny(BertForSequenceClassification, 0), [tiny(BertForMaskedLM, 1), tiny(BertForMaskedLM, 2)]
    x, labels = inputs()
    term = soft_term(3.0, positions, n_teachers=2)
    term.bind(student)
    s = forward_features(student, x, Need(hidden=True))
    with torch.no_grad():
        t = [forward_features(m, x, Need()) for m in teachers]
    assert t[0].logits.shape == (3, 6, V)
    weights = torch.tensor([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])  # per example (e.g. MT-BERT's)
    got = term(Batch(s, t, weights, labels, False))
    keep = labels != -100 if positions == "masked" else x["attention_mask"].bool()
    want = reference(term, s.hidden[-1].detach(), [f.logits for f in t], keep, weights, 3.0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # the padded tokens count for nothing: the same loss with other ids and teacher logits there
    t[1].logits[1, 4:] += 50.0
    again = term(Batch(s, t, weights, labels, False))
    torch.testing.assert_close(again, got)


def test_teacher_equal_to_student_distribution_gives_zero():
    student = tiny(BertForSequenceClassification, 0)
    x, labels = inputs()
    term = soft_term()
    term.bind(student)
    s = forward_features(student, x, Need(hidden=True))
    own = term.vocab_logits(s.hidden[-1]).detach()  # [B, T, V]: the student's own distribution as target
    batch = Batch(s, [forward_features(student, x, Need())], torch.tensor([1.0]), labels, False)
    batch.teachers[0].logits = own
    assert term(batch).abs().item() < 1e-5


def test_no_masked_token_is_a_zero_that_backpropagates():
    student = tiny(BertForSequenceClassification, 0)
    x, _ = inputs()
    term = soft_term(positions="masked")
    term.bind(student)
    s = forward_features(student, x, Need(hidden=True))
    t = forward_features(tiny(BertForMaskedLM, 1), x, Need())
    loss = term(Batch(s, [t], torch.tensor([1.0]), torch.full((3, 6), -100), False))
    loss.backward()
    assert loss.item() == 0.0 and term.bias.grad is not None and term.transform[0].weight.grad is not None


def test_a_classifier_teacher_is_refused():
    student = tiny(BertForSequenceClassification, 0)
    x, labels = inputs()
    term = soft_term()
    term.bind(student)
    s = forward_features(student, x, Need(hidden=True))
    with pytest.raises(ValueError, match="not masked-LM logits"):
        term(Batch(s, [forward_features(student, x, Need())], torch.tensor([1.0]), labels, False))


def test_mlm_and_mlm_kd_share_one_student_head():
    phase = Phase(name="general", corpus={}, objective=[{"term": "mlm_kd"}, {"term": "mlm"}])
    (soft, _), (mlm, _) = build_terms(phase, Shape(2, H, 2), [Shape(2, H, 2)])
    student = tiny(BertForSequenceClassification, 0)
    for term in (soft, mlm):  # the order of the objective: mlm_kd binds first
        term.bind(student)
    assert soft.transform is mlm.transform and soft.bias is mlm.bias
    both = torch.nn.ModuleList([soft, mlm])
    assert len(list(both.parameters())) == len(list(mlm.parameters()))  # optimised once
    x, labels = inputs()
    s = forward_features(student, x, Need(hidden=True))
    t = forward_features(tiny(BertForMaskedLM, 1), x, Need())
    soft(Batch(s, [t], torch.tensor([1.0]), labels, False)).backward()
    assert mlm.transform[0].weight.grad.abs().sum() > 0 and mlm.bias.grad.abs().sum() > 0
    alone = build_terms(Phase(name="g", corpus={}, objective=[{"term": "mlm_kd"}]), Shape(2, H, 2), [Shape(2, H, 2)])
    assert alone[0][0].owner is None  # without an mlm term it keeps its own head


# -- the teacher's head, as a card declares it ------------------------------------------------------
def write_card(tmp_path, name, checkpoint, mlm_head=None):
    extra = f"mlm_head: {{source: {mlm_head}}}\n" if mlm_head else ""
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\narchitecture: bert\nlayers: 2\nhidden: {H}\nheads: 2\n"
                 f"checkpoint: {{path: {checkpoint}}}\n{extra}")
    from harness.teachers import load_card
    return load_card(p)


def test_masked_lm_teacher_from_its_checkpoint_or_another_folder(tmp_path):
    from harness.corpus_teachers import load_masked_lm

    ref = tiny(BertForMaskedLM, 3)
    ref.save_pretrained(tmp_path / "mlm")
    ref.bert.save_pretrained(tmp_path / "enc")  # the encoder alone, as a sentence-encoder card ships it
    x, _ = inputs()
    want = ref(**x).logits
    for card in (write_card(tmp_path, "own", "mlm", "checkpoint"), write_card(tmp_path, "graft", "enc", "./mlm")):
        torch.testing.assert_close(load_masked_lm(card).eval()(**x).logits, want)
    with pytest.raises(ConfigError, match="teacher bare: no masked-LM head weights at mlm_head.source checkpoint"):
        load_masked_lm(write_card(tmp_path, "bare", "enc", "checkpoint"))
    tiny(BertForMaskedLM, 4).save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match="teacher stranger: .*another encoder"):
        load_masked_lm(write_card(tmp_path, "stranger", "enc", "./other"))
    with pytest.raises(ConfigError, match="teacher none: its card declares no mlm_head"):
        load_masked_lm(write_card(tmp_path, "none", "mlm"))


def test_validate_names_the_card_without_a_head(tmp_path, tiny_card):
    from harness.plan import load

    recipe = tmp_path / "soft.yaml"
    recipe.write_text(f"task: sst2\nteachers: [{{card: {tiny_card}}}]\nstudent: {{init: teacher_layers, layers: [0, 2]}}\n"
                      "phases:\n  - {name: general, corpus: {}, objective: [{term: mlm}, {term: mlm_kd}]}\n"
                      "  - {name: task, objective: [{term: ce}]}\n")
    with pytest.raises(ConfigError, match=r"teachers\[0\]: card tiny-bert declares no mlm_head, so mlm_kd"):
        load(recipe)


@needs_glue
def test_general_phase_with_soft_targets_runs_end_to_end(tmp_path, tiny_card):
    """A tiny BERT teacher saved with its MLM head, declared by its card: DistilBERT's three general
    terms on GLUE text (every task's), then fine-tuning, through the real CLI."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_card.parent / "model")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertForMaskedLM(cfg).save_pretrained(tmp_path / "mlm-bert")
    tok.save_pretrained(tmp_path / "mlm-bert")
    (tmp_path / "mlm-bert.yaml").write_text(
        "name: mlm-bert\narchitecture: bert\nlayers: 2\nhidden: 32\nheads: 2\ncheckpoint: {path: mlm-bert}\n"
        "mlm_head: {source: checkpoint}\nfinetune: {epochs: 1, lr: 1.0e-3, batch_size: 16, max_length: 32, max_train_examples: 48}\n")
    recipe = tmp_path / "distil.yaml"
    recipe.write_text(
        "name: distil-soft\ntask: sst2\nteachers: [{card: mlm-bert.yaml}]\nstudent: {init: teacher_layers, layers: [1]}\n"
        "training: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_length: 32, max_train_examples: 48, log_every: 1}\n"
        "speed: {seq_len: 16, throughput_batch: 2, iters: 1}\n"
        "phases:\n  - name: general\n    corpus: {glue: all, max_examples: 4000}\n    training: {epochs: 2}\n"
        "    objective: [{term: mlm_kd, weight: 5.0, temperature: 2.0}, {term: mlm, weight: 2.0},"
        " {term: cosine_hidden}]\n  - {name: finetune, objective: [{term: ce}]}\n")
    results = tmp_path / "results"
    res = harness_cli("run", str(recipe), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    assert res.returncode == 0, res.stderr[-4000:]
    rec = json.loads((results / "runs" / "distil-soft" / "seed42" / "metrics.json").read_text())
    general = rec["train"]["phases"][0]
    assert rec["terms"] == ["mlm_kd", "mlm", "cosine_hidden", "ce"]
    assert general["train_examples"] == 48  # the corpus cap (4000) and the quick cap (48): the smaller
    assert general["teacher_cache"]["status"].startswith("off:")  # masked inputs: the teacher runs every step
    soft = [h["terms"][0] for h in general["loss_history"]]
    assert all(math.isfinite(v) and v > 0 for v in soft)
    assert soft[-1] < soft[0], soft  # the student's MLM distribution moves toward the teacher's
