"""The three defects of the audit (issue 22, section 6): the MLM term on a micro-batch with no masked
token, uniform layer maps at depth ratios that are not integers, and one W_h per progressive phase."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from conftest import FIXTURE_GLUE
from harness.features import Features
from harness.losses import TERMS, Batch, Shape
from harness.losses.base import LAYER_MAP_HELP, MappedParams, layer_pairs


# -- 1. mlm with no masked token --------------------------------------------------------------------
class Embedder(nn.Module):
    """The least a student must be for the MLM term: word embeddings, and one hidden state per token."""

    def __init__(self, vocab=13, hidden=8):
        super().__init__()
        torch.manual_seed(1)
        self.emb = nn.Embedding(vocab, hidden)
        self.ids = torch.randint(0, vocab, (2, 4))

    def get_input_embeddings(self):
        return self.emb

    def features(self) -> Features:
        e = self.emb(self.ids)
        return Features(logits=torch.zeros(2, 2), mask=torch.ones(2, 4), heads=2, hidden=(e, torch.tanh(e)))


def mlm_term(student: Embedder):
    cls = TERMS.get("mlm")
    torch.manual_seed(2)
    term = cls(cls.Params(), student=Shape(layers=1, hidden=8, heads=2))
    term.bind(student)
    with torch.no_grad():
        term.bias.normal_()  # a zero bias would hide a decoder that forgot it
    return term


def test_mlm_without_masked_token_is_a_zero_that_backpropagates():
    student = Embedder()
    term = mlm_term(student)
    labels = torch.full((2, 4), -100)
    loss = term(Batch(student.features(), [], torch.ones(0), labels, regression=False))
    assert torch.isfinite(loss) and loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()  # the graph is kept: gradients exist (zero), nothing is NaN
    for p in [student.emb.weight, term.bias, *term.transform.parameters()]:
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p.grad))


def test_mlm_without_masked_token_in_bf16_stacks_with_other_terms():
    student = Embedder().to(torch.bfloat16)
    term = mlm_term(student).to(torch.bfloat16)
    loss = term(Batch(student.features(), [], torch.ones(0), torch.full((2, 4), -100), regression=False))
    torch.stack([loss, torch.tensor(1.0)])  # the stage stacks every term's float32 loss
    assert loss.dtype == torch.float32 and loss.item() == 0.0


def test_mlm_with_masked_tokens_is_the_mean_cross_entropy_of_those_tokens():
    student = Embedder()
    term = mlm_term(student)
    labels = torch.tensor([[-100, 3, -100, -100], [7, -100, -100, 12]])
    feats = student.features()
    loss = term(Batch(feats, [], torch.ones(0), labels, regression=False))
    with torch.no_grad():
        total = 0.0
        for b, t in [(0, 1), (1, 0), (1, 3)]:
            z = term.transform(feats.hidden[-1][b, t])
            logits = [float(student.emb.weight[v] @ z + term.bias[v]) for v in range(13)]
            top = max(logits)
            log_norm = top + math.log(sum(math.exp(x - top) for x in logits))
            total += log_norm - logits[int(labels[b, t])]
    assert math.isclose(loss.item(), total / 3, rel_tol=1e-5)


# -- 2. uniform layer maps ----------------------------------------------------------------------------
# 0-based teacher blocks for each student block, worked out by hand from j * n / m (j = 1..m) rounded
# half up, minus one: e.g. 4 -> 6 is 1.5, 3, 4.5, 6 -> 2, 3, 5, 6 -> [1, 2, 4, 5]
HAND = {
    (4, 6): [1, 2, 4, 5],  # round() gave [1, 2, 3, 5]: 1.5 went up, 4.5 down
    (3, 12): [3, 7, 11],
    (6, 12): [1, 3, 5, 7, 9, 11],
    (5, 12): [1, 4, 6, 9, 11],  # 2.4, 4.8, 7.2, 9.6, 12
    (2, 3): [1, 2],  # 1.5, 3
    (4, 10): [2, 4, 7, 9],  # 2.5, 5, 7.5, 10: round() gave [1, 4, 7, 9]
    (3, 4): [0, 2, 3],  # 1.33, 2.67, 4: no tie, as round() had it
    (4, 4): [0, 1, 2, 3],
    (1, 7): [6],
}


@pytest.mark.parametrize("m,n", sorted(HAND))
def test_uniform_map_by_hand(m, n):
    assert layer_pairs("uniform", m, n) == list(enumerate(HAND[(m, n)]))
    assert layer_pairs("skip", m, n) == list(enumerate(HAND[(m, n)]))[:-1]


def test_uniform_map_is_strictly_increasing_and_ends_on_the_top_block():
    for n in range(1, 25):
        for m in range(1, n + 1):
            blocks = [t for _, t in layer_pairs("uniform", m, n)]
            assert [s for s, _ in layer_pairs("uniform", m, n)] == list(range(m))
            assert all(a < b for a, b in zip(blocks, blocks[1:])), (m, n, blocks)
            assert blocks[0] >= 0 and blocks[-1] == n - 1, (m, n, blocks)
            # nearest teacher block to j * n / m, ties upward, in exact arithmetic
            assert blocks == [math.floor(Fraction(j * n, m) + Fraction(1, 2)) - 1 for j in range(1, m + 1)]


def test_layer_map_help_states_the_rounding():
    assert "half up" in LAYER_MAP_HELP
    assert MappedParams.model_fields["layer_map"].description == LAYER_MAP_HELP
    assert "half up" in layer_pairs.__doc__


# -- 3. one projection per progressive phase ----------------------------------------------------------
PROGRESSIVE = """\
name: progressive-wh
task: sst2
teachers:
  - card: {card}
student: {{init: config, layers: 2, hidden: 24, heads: 4, ffn: 48}}
phases:
  - name: progressive
    progressive: {{lower: freeze}}
    objective:
      - {{term: hidden_mse, layer_map: uniform}}
      - {{term: attention_kl, layer_map: uniform}}
  - name: task
    training: {{max_steps: 1}}
    objective: [{{term: ce}}]
training: {{max_steps: 3, batch_size: 2, lr: 1.0e-2, warmup_ratio: 0.0, max_length: 16, log_every: 1}}
deepspeed: {{zero_stage: {zero}, precision: fp32}}
"""


@pytest.mark.parametrize("zero", [0, 3])
def test_progressive_blocks_share_and_train_one_projection(tmp_path, tiny_card, monkeypatch, zero):
    """A 2-block width-24 student under the 4-block width-48 tiny teacher: block 0 and block 1 train the
    same W_h of hidden_mse, each starting where the previous block left it (under ZeRO-3 the module is
    rebuilt between stages, since its weights were sharded, but the values carry on)."""
    import deepspeed

    from harness import phases
    from harness.distill import Teacher
    from harness.engine import init_distributed
    from harness.models import build_student, load_classifier
    from harness.options import Options
    from harness.plan import load

    init_distributed()
    recipe = tmp_path / "progressive.yaml"
    recipe.write_text(PROGRESSIVE.format(card=tiny_card, zero=zero))
    plan = load(recipe)
    teacher = Teacher(load_classifier(plan.teachers[0].card.pretrained_path(), plan.task), 1.0)
    model, tok, label = build_student(plan.recipe.student, plan.student_card, plan.task, seed=0)

    seen = []  # per stage: (the hidden_mse projection, its weight before the stage, after it)
    real_stage = phases.train_stage

    def recording_stage(student, teachers, terms, *args, **kwargs):
        mse = [t for t, _ in terms if isinstance(t, TERMS.get("hidden_mse"))]
        if not mse:  # the closing task phase
            return real_stage(student, teachers, terms, *args, **kwargs)
        proj = mse[0].proj[0]
        assert isinstance(proj, nn.Linear) and proj.weight.shape == (48, 24)  # widths differ: a real W_h
        before = proj.weight.detach().clone()
        engine, stats = real_stage(student, teachers, terms, *args, **kwargs)
        with deepspeed.zero.GatheredParameters([proj.weight], modifier_rank=None):
            seen.append((proj, before, proj.weight.detach().to(torch.float32).clone()))
        return engine, stats

    monkeypatch.setattr(phases, "train_stage", recording_stage)
    opts = Options(results_dir=tmp_path / "results", glue_dir=FIXTURE_GLUE, teacher_cache=False)
    _, stats = phases.train_phases(plan, model, tok, [teacher], 0, label, opts)

    assert [(s["phase"], s["block"]) for s in stats] == [("progressive", 0), ("progressive", 1), ("task", None)]
    assert len(seen) == 2
    (proj0, start0, end0), (proj1, start1, end1) = seen
    if zero == 0:
        assert proj1 is proj0  # one module for the whole phase, not one per block
    torch.testing.assert_close(start1, end0, rtol=0, atol=0)  # block 1 goes on from block 0's W_h
    assert not torch.equal(end0, start0)  # trained with block 0 ...
    assert not torch.equal(end1, start1)  # ... and still in the optimizer with block 1
