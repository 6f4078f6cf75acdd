"""Objective terms against direct formulas written out here, on small tensors."""
import math

import torch

from harness.features import Features
from harness.losses import TERMS, Batch


def batch(s, ts, w, y, regression):
    """A Batch holding only logits, as a logit-level term sees it."""
    feats = lambda x: Features(logits=x, mask=torch.ones(x.shape[0], 1), heads=1)  # noqa: E731
    return Batch(feats(s), [feats(t) for t in ts], w, y, regression)


def make(term, **params):
    cls = TERMS.get(term)
    return cls(cls.Params(**params))


def test_ce_is_negative_log_likelihood_of_gold():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (1 + math.e))) / 2
    loss = make("ce")(batch(s, [], torch.ones(1), y, regression=False))
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_hinton_kd_by_hand():
    s = torch.tensor([[1.0, 3.0, 0.0]])
    t = torch.tensor([[2.0, 1.0, 0.5]])
    y = torch.tensor([1])
    T, alpha = 2.0, 0.3
    p = [math.exp(v / T) for v in (2.0, 1.0, 0.5)]
    p = [v / sum(p) for v in p]
    q = [math.exp(v / T) for v in (1.0, 3.0, 0.0)]
    q = [v / sum(q) for v in q]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    ce = -math.log(math.exp(3.0) / (math.exp(1.0) + math.exp(3.0) + 1.0))
    expected = alpha * T * T * kl + (1 - alpha) * ce
    loss = make("hinton_kd", temperature=T, alpha=alpha)(batch(s, [t], torch.ones(1), y, regression=False))
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_hinton_kd_mixes_teachers_by_weight_and_is_zero_at_match():
    t1, t2 = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    w = torch.tensor([0.25, 0.75])
    mix = 0.25 * torch.softmax(t1, -1) + 0.75 * torch.softmax(t2, -1)
    s = torch.log(mix)  # a student whose T=1 distribution is exactly the mixture
    loss = make("hinton_kd", temperature=1.0, alpha=1.0)(batch(s, [t1, t2], w, torch.tensor([0]), regression=False))
    assert abs(loss.item()) < 1e-6


def test_hinton_kd_regression_uses_mse():
    s = torch.tensor([[1.0], [2.0]])
    t = torch.tensor([[1.5], [2.0]])
    y = torch.tensor([0.0, 3.0])
    loss = make("hinton_kd", temperature=4.0, alpha=0.5)(batch(s, [t], torch.ones(1), y, regression=True))
    expected = 0.5 * (0.25 + 0.0) / 2 + 0.5 * (1.0 + 1.0) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_teacher_gets_no_gradient_and_student_does():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    loss = make("hinton_kd")(batch(s, [t.detach()], torch.ones(1), torch.tensor([0, 1, 2, 0]), regression=False))
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_kd_loss_decreases_when_fitting_a_fixed_batch():
    torch.manual_seed(0)
    s = torch.zeros(8, 3, requires_grad=True)
    t = torch.randn(8, 3) * 3
    y = torch.randint(0, 3, (8,))
    term = make("hinton_kd", temperature=2.0, alpha=1.0)
    opt = torch.optim.Adam([s], lr=0.1)
    losses = []
    for _ in range(150):
        loss = term(batch(s, [t], torch.ones(1), y, regression=False))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
