"""The distillation-zoo objective terms against independent references written from the papers.

Every reference below is plain numpy (float64) with explicit loops over examples, heads, rows and
layer pairs; none of them calls a harness helper (``row_kl``, ``masked_mean``, ``relation_log_probs``,
``Features.scores`` ...).  Layer pairs are written out by hand from the papers' maps.  Where the
widths differ, the reference applies the term's own learned projection (its weight and bias).

Sizes: B=2, T=5, the second example padded after 3 tokens; student 3 blocks x width 8 x 2 heads,
teachers 6 blocks x width 12 (or 8) x 2 heads.
"""
from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from harness.features import Features
from harness.losses import TERMS, Batch, Shape, TermError
from harness.losses.base import layer_pairs

B, T, C = 2, 5, 3
MASK = torch.tensor([[1, 1, 1, 1, 1],
                     [1, 1, 1, 0, 0]])
PAD = ~MASK.bool()  # [B, T] padded positions
STUDENT = Shape(layers=3, hidden=8, heads=2)
TEACHER = Shape(layers=6, hidden=12, heads=2)  # wider: the mapped terms learn a projection
TEACHER_SAME = Shape(layers=6, hidden=8, heads=2)  # same width: identity
TEACHER_SHALLOW = Shape(layers=4, hidden=8, heads=2)

# (layer_map, student depth, teacher depth) -> 0-based (student block, teacher block), worked out by hand:
# uniform = TinyBERT g(m) = m * n / m' (1-based, rounded), skip = uniform without the top student block,
# last = PKD-last (the teacher blocks just below the top), final = top blocks only.
PAIRS = {
    ("uniform", 3, 6): [(0, 1), (1, 3), (2, 5)],
    ("skip", 3, 6): [(0, 1), (1, 3)],
    ("last", 3, 6): [(0, 3), (1, 4)],
    ("final", 3, 6): [(2, 5)],
    ("uniform", 3, 4): [(0, 0), (1, 2), (2, 3)],
    ("skip", 3, 4): [(0, 0), (1, 2)],
    ("final", 3, 4): [(2, 3)],
}
DEFAULT_MAP = {"pkd": "skip", "cosine_hidden": "final", "hidden_mse": "uniform",
               "attention_mse": "uniform", "attention_kl": "uniform"}
FEATURE_TERMS = ["pkd", "cosine_hidden", "hidden_mse", "embedding_mse", "attention_mse", "attention_kl",
                 "minilm", "minilmv2"]
EXTRA = {"minilmv2": {"relation_heads": 4}}  # the default 12 does not divide the student's width 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- helpers -----------------------------------------------------------------------------------------
def build(name, student=STUDENT, teachers=(TEACHER,), seed=0, **params):
    cls = TERMS.get(name)
    torch.manual_seed(seed)  # projection initialisation
    return cls(cls.Params(**params), student=student, teachers=list(teachers))


def random_features(shape: Shape, seed: int, grad: bool = False, scale: float = 1.0) -> Features:
    g = torch.Generator().manual_seed(seed)

    def r():
        return (torch.randn(B, T, shape.hidden, generator=g) * scale).requires_grad_(grad)

    return Features(logits=torch.zeros(B, C), mask=MASK.clone(), heads=shape.heads,
                    hidden=tuple(r() for _ in range(shape.layers + 1)),
                    q={b: r() for b in range(shape.layers)}, k={b: r() for b in range(shape.layers)},
                    v={b: r() for b in range(shape.layers)})


def batch_of(student: Features, teachers: list[Features], weights=None) -> Batch:
    w = torch.ones(1) if weights is None else torch.tensor(weights)
    return Batch(student, teachers, w, labels=torch.zeros(B, dtype=torch.long), regression=False)


def npy(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def to_np(f: Features):
    return SimpleNamespace(hidden=[npy(h) for h in f.hidden], q={b: npy(x) for b, x in f.q.items()},
                           k={b: npy(x) for b, x in f.k.items()}, v={b: npy(x) for b, x in f.v.items()},
                           heads=f.heads, mask=f.mask.numpy().astype(bool))


def projector(module: nn.Module):
    """The term's own learned map (student width -> teacher width), applied in numpy."""
    if isinstance(module, nn.Identity):
        return lambda x: x
    w, b = npy(module.weight), npy(module.bias)
    return lambda x: x @ w.T + b


def real_tokens(mask):
    return [(b, t) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]


def head_matrix(a, c, heads, b, h):
    """[T, T]: a_h c_h^T / sqrt(d) for head h of example b, heads cut from the concatenated width."""
    d = a.shape[-1] // heads
    ah, ch = a[b, :, h * d:(h + 1) * d], c[b, :, h * d:(h + 1) * d]
    out = np.zeros((a.shape[1], c.shape[1]))
    for i in range(a.shape[1]):
        for j in range(c.shape[1]):
            out[i, j] = float(np.dot(ah[i], ch[j])) / math.sqrt(d)
    return out


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def mean_row_kl(teacher_rows, student_rows, heads, mask):
    """(1 / (heads * real rows)) sum_{b, head, real query i} KL(p_t || p_s) over the real keys of row i.
    teacher_rows / student_rows: (b, head) -> [T, T] unnormalised scores."""
    total, rows = 0.0, 0
    for b in range(mask.shape[0]):
        keys = [j for j in range(mask.shape[1]) if mask[b, j]]
        for h in range(heads):
            st, ss = teacher_rows(b, h), student_rows(b, h)
            for i in keys:
                p, q = softmax(st[i, keys]), softmax(ss[i, keys])
                total += float(np.sum(p * np.log(p / q)))
        rows += len(keys)
    return total / (heads * rows)


# -- references, one teacher each --------------------------------------------------------------------
def ref_pkd(s, t, pairs, proj, params):
    """BERT-PKD eq. 6 at its authors' code's scale: || h_s/|h_s| - h_t/|h_t| ||^2 on the [CLS] states,
    averaged over examples, mapped layers and hidden dimensions (the mean squared error)."""
    total, count = 0.0, 0
    for m, n in pairs:
        for b in range(B):
            hs, ht = proj(s.hidden[m + 1][b, 0]), t.hidden[n + 1][b, 0]
            hs, ht = hs / np.linalg.norm(hs), ht / np.linalg.norm(ht)
            total += float(np.sum((hs - ht) ** 2))
            count += hs.shape[0]
    return total / count


def ref_cosine(s, t, pairs, proj, params):
    """DistilBERT: sum over pairs of mean over real tokens of 1 - cos(h_s, h_t)."""
    total = 0.0
    for m, n in pairs:
        toks = real_tokens(s.mask)
        acc = 0.0
        for b, i in toks:
            a, c = proj(s.hidden[m + 1][b, i]), t.hidden[n + 1][b, i]
            acc += 1.0 - float(np.dot(a, c)) / (np.linalg.norm(a) * np.linalg.norm(c))
        total += acc / len(toks)
    return total


def _mse_real(a_list, c_list, mask):
    toks = real_tokens(mask)
    acc = 0.0
    for b, i in toks:
        acc += float(np.sum((a_list[b, i] - c_list[b, i]) ** 2))
    return acc / (len(toks) * c_list.shape[-1])


def ref_hidden_mse(s, t, pairs, proj, params):
    """TinyBERT eq. 8: sum over pairs of MSE(H_s W_h, H_t) over real tokens and teacher dims."""
    return sum(_mse_real(proj(s.hidden[m + 1]), t.hidden[n + 1], s.mask) for m, n in pairs)


def ref_embedding_mse(s, t, pairs, proj, params):
    """TinyBERT eq. 9: MSE(E_s W_e, E_t) over real tokens and teacher dims."""
    return _mse_real(proj(s.hidden[0]), t.hidden[0], s.mask)


def ref_attention_mse(s, t, pairs, proj, params):
    """TinyBERT eq. 7: (1/h) sum_heads MSE of the unnormalised scores over (query, key) both real."""
    total = 0.0
    for m, n in pairs:
        acc, count = 0.0, 0
        for b in range(B):
            real = [j for j in range(T) if s.mask[b, j]]
            for h in range(s.heads):
                a_s = head_matrix(s.q[m], s.k[m], s.heads, b, h)
                a_t = head_matrix(t.q[n], t.k[n], t.heads, b, h)
                for i in real:
                    for j in real:
                        acc += (a_s[i, j] - a_t[i, j]) ** 2
            count += len(real) ** 2
        total += acc / (count * s.heads)
    return total


def ref_attention_kl(s, t, pairs, proj, params):
    """MobileBERT eq. 2: sum over pairs of mean over heads and real rows of KL(a_t || a_s)."""
    return sum(mean_row_kl(lambda b, h: head_matrix(t.q[n], t.k[n], t.heads, b, h),
                           lambda b, h: head_matrix(s.q[m], s.k[m], s.heads, b, h), s.heads, s.mask)
               for m, n in pairs)


def ref_minilm(s, t, pairs, proj, params):
    """MiniLM eqs. 3-5: attention KL + value-relation KL, VR = softmax(V V^T / sqrt(d_head)) per head."""
    (m, n), = pairs
    at = mean_row_kl(lambda b, h: head_matrix(t.q[n], t.k[n], t.heads, b, h),
                     lambda b, h: head_matrix(s.q[m], s.k[m], s.heads, b, h), s.heads, s.mask)
    vr = mean_row_kl(lambda b, h: head_matrix(t.v[n], t.v[n], t.heads, b, h),
                     lambda b, h: head_matrix(s.v[m], s.v[m], s.heads, b, h), s.heads, s.mask)
    return at + vr


def ref_minilmv2(s, t, pairs, proj, params):
    """MiniLMv2 eqs. 1-3: sum over relations of the relation KL after re-splitting each model's
    concatenated vectors into ``relation_heads`` heads (d_r = width / relation_heads, per model)."""
    (m, n), = pairs
    r = params["relation_heads"]
    total = 0.0
    for rel in params.get("relations", ["qq", "kk", "vv"]):
        xs, xt = getattr(s, rel[0])[m], getattr(t, rel[0])[n]
        total += mean_row_kl(lambda b, h: head_matrix(xt, xt, r, b, h),
                             lambda b, h: head_matrix(xs, xs, r, b, h), r, s.mask)
    return total


REFS = {"pkd": ref_pkd, "cosine_hidden": ref_cosine, "hidden_mse": ref_hidden_mse,
        "embedding_mse": ref_embedding_mse, "attention_mse": ref_attention_mse,
        "attention_kl": ref_attention_kl, "minilm": ref_minilm, "minilmv2": ref_minilmv2}


def expected_pairs(name, params, student: Shape, teacher: Shape):
    if name in ("minilm", "minilmv2"):
        return [(params.get("student_layer", student.layers - 1), params.get("teacher_layer", teacher.layers - 1))]
    if name == "embedding_mse":
        return []
    spec = params.get("layer_map", DEFAULT_MAP[name])
    if isinstance(spec, list):
        return [(i, n) for i, n in enumerate(spec) if n is not None]
    return PAIRS[(spec, student.layers, teacher.layers)]


def reference(name, params, term, student: Features, teachers: list[Features], t_shapes, weights):
    s = to_np(student)
    total = 0.0
    for k, (tf, tshape, w) in enumerate(zip(teachers, t_shapes, weights)):
        proj = projector(term.proj[k]) if hasattr(term, "proj") else None
        total += w * REFS[name](s, to_np(tf), expected_pairs(name, params, STUDENT, tshape), proj, params)
    return total


def close(actual: torch.Tensor, expected: float):
    torch.testing.assert_close(actual.detach().double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-4, atol=1e-6)


# -- 1. values ---------------------------------------------------------------------------------------
VALUE_CASES = [
    ("pkd", {}, TEACHER),
    ("pkd", {}, TEACHER_SAME),
    ("pkd", {"layer_map": "last"}, TEACHER),
    ("cosine_hidden", {}, TEACHER),
    ("cosine_hidden", {}, TEACHER_SAME),
    ("cosine_hidden", {"layer_map": "uniform"}, TEACHER),
    ("hidden_mse", {}, TEACHER),
    ("hidden_mse", {}, TEACHER_SAME),
    ("hidden_mse", {"layer_map": [None, 4, 0]}, TEACHER),
    ("embedding_mse", {}, TEACHER),
    ("embedding_mse", {}, TEACHER_SAME),
    ("attention_mse", {}, TEACHER),
    ("attention_mse", {}, TEACHER_SAME),
    ("attention_kl", {}, TEACHER),
    ("attention_kl", {}, TEACHER_SAME),
    ("attention_kl", {"layer_map": "final"}, TEACHER),
    ("minilm", {}, TEACHER),
    ("minilm", {}, TEACHER_SAME),
    ("minilm", {"student_layer": 1, "teacher_layer": 3}, TEACHER),
    ("minilmv2", {"relation_heads": 4}, TEACHER),
    ("minilmv2", {"relation_heads": 4}, TEACHER_SAME),
    ("minilmv2", {"relation_heads": 4}, Shape(6, 12, 3)),  # teacher heads differ: re-split makes it fine
    ("minilmv2", {"relation_heads": 2, "relations": ["vv"]}, TEACHER),
]


@pytest.mark.parametrize("name,params,tshape", VALUE_CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(VALUE_CASES)])
def test_value_matches_paper_formula(name, params, tshape):
    term = build(name, teachers=[tshape], **params)
    student, teacher = random_features(STUDENT, 1), random_features(tshape, 2)
    loss = term(batch_of(student, [teacher]))
    assert loss.ndim == 0
    close(loss, reference(name, params, term, student, [teacher], [tshape], [1.0]))


def test_pkd_is_zero_when_cls_states_are_parallel():
    """Normalisation: a [CLS] state scaled by any positive factor costs nothing (same widths)."""
    term = build("pkd", teachers=[TEACHER_SAME])
    s = random_features(STUDENT, 1)
    t = random_features(TEACHER_SAME, 2)
    hidden = list(t.hidden)
    for m, n in PAIRS[("skip", 3, 6)]:
        h = hidden[n + 1].clone()
        h[:, 0] = 3.7 * s.hidden[m + 1][:, 0].detach()
        hidden[n + 1] = h
    t.hidden = tuple(hidden)
    assert term(batch_of(s, [t])).item() < 1e-10


# -- 2. several teachers -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_two_teachers_weighted_sum(name):
    params = EXTRA.get(name, {})
    shapes = [TEACHER, TEACHER_SHALLOW]  # different depths and widths: per-teacher pairs and projections
    term = build(name, teachers=shapes, **params)
    s, t1, t2 = random_features(STUDENT, 1), random_features(shapes[0], 2), random_features(shapes[1], 3)
    loss = term(batch_of(s, [t1, t2], [0.25, 0.75]))
    l1 = reference(name, params, term, s, [t1], [shapes[0]], [1.0])
    s_np = to_np(s)
    proj2 = projector(term.proj[1]) if hasattr(term, "proj") else None
    l2 = REFS[name](s_np, to_np(t2), expected_pairs(name, params, STUDENT, shapes[1]), proj2, params)
    close(loss, 0.25 * l1 + 0.75 * l2)

    # and the same as two single-teacher terms carrying the same projections
    singles = []
    for k, (shape, t) in enumerate(zip(shapes, [t1, t2])):
        one = build(name, teachers=[shape], **params)
        if hasattr(term, "proj"):
            one.proj[0].load_state_dict(term.proj[k].state_dict())
        singles.append(one(batch_of(s, [t])))
    torch.testing.assert_close(loss, 0.25 * singles[0] + 0.75 * singles[1], rtol=1e-5, atol=1e-6)


# -- 3. gradients ------------------------------------------------------------------------------------
def student_tensors(f: Features):
    return {f"hidden[{i}]": h for i, h in enumerate(f.hidden)} | \
        {f"{a}[{b}]": x for a in "qkv" for b, x in getattr(f, a).items()}


@pytest.mark.parametrize("teacher_grad", [False, True], ids=["teacher-no-grad", "teacher-requires-grad"])
@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_student_gradients_finite_and_zero_on_padding(name, teacher_grad):
    """The harness runs its teachers under no_grad; with requires_grad teachers (online distillation)
    the masked -inf attention entries must not send NaN back to either side."""
    term = build(name, **EXTRA.get(name, {}))
    s = random_features(STUDENT, 1, grad=True)
    t = random_features(TEACHER, 2, grad=teacher_grad)
    loss = term(batch_of(s, [t]))
    assert torch.isfinite(loss)
    loss.backward()
    grads = {k: x.grad for k, x in student_tensors(s).items() if x.grad is not None}
    assert grads, "no student tensor received a gradient"
    for k, g in grads.items():
        assert torch.isfinite(g).all(), f"{name}: non-finite gradient in student {k} with a padded mask"
        assert g[PAD].abs().max() == 0, f"{name}: padded positions of student {k} receive gradient"
    assert sum(g.abs().sum() for g in grads.values()) > 0
    for k, x in student_tensors(t).items():
        assert x.grad is None or torch.isfinite(x.grad).all(), f"{name}: non-finite gradient in teacher {k}"
    for p in term.parameters():  # the projections the term uses
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()


# -- 4. the loss goes down when the student is trained on it ----------------------------------------
class LearnableStudent(nn.Module):
    """Student features as linear functions of fixed random inputs."""

    def __init__(self, shape: Shape, d_in: int = 16, seed: int = 5):
        super().__init__()
        torch.manual_seed(seed)
        self.shape = shape
        self.register_buffer("x", torch.randn(B, T, d_in))
        self.h = nn.ModuleList(nn.Linear(d_in, shape.hidden) for _ in range(shape.layers + 1))
        self.qkv = nn.ModuleList(nn.Linear(d_in, 3 * shape.hidden) for _ in range(shape.layers))

    def forward(self) -> Features:
        q, k, v = {}, {}, {}
        for b, lin in enumerate(self.qkv):
            q[b], k[b], v[b] = lin(self.x).chunk(3, dim=-1)
        return Features(logits=torch.zeros(B, C), mask=MASK.clone(), heads=self.shape.heads,
                        hidden=tuple(lin(self.x) for lin in self.h), q=q, k=k, v=v)


def fit(term, module, make_batch, steps=40, lr=1e-2, eval_seed=None):
    opt = torch.optim.Adam(list(module.parameters()) + list(term.parameters()), lr=lr)

    def evaluate():
        if eval_seed is not None:
            torch.manual_seed(eval_seed)
        with torch.no_grad():
            return term(make_batch()).item()

    first = evaluate()
    for step in range(steps):
        if eval_seed is not None:
            torch.manual_seed(1000 + step)
        loss = term(make_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, evaluate()


@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_loss_decreases_when_fitting_the_teacher(name):
    term = build(name, **EXTRA.get(name, {}))
    student = LearnableStudent(STUDENT)
    teacher = random_features(TEACHER, 2, scale=1.5)
    first, last = fit(term, student, lambda: batch_of(student(), [teacher]))
    assert first > 0 and last < 0.7 * first, (first, last)


# -- MixKD ---------------------------------------------------------------------------------------------
class MixSetup:
    """Fake word embeddings X [B, T, E]; models are linear maps of the masked mean of the mixed
    embeddings.  The closures get (perm, lam) from the term, as the harness's do."""

    def __init__(self, b=4, e=6, n_teachers=1, regression=False, seed=3, scale=1.0):
        g = torch.Generator().manual_seed(seed)
        self.b, self.c = b, 1 if regression else C
        self.x = torch.randn(b, T, e, generator=g)
        self.mask = torch.ones(b, T, dtype=torch.long)
        self.mask[1, 3:] = 0
        self.mask[3, 2:] = 0
        self.y = torch.randn(b, generator=g) if regression else torch.randint(0, C, (b,), generator=g)
        self.student = nn.Linear(e, self.c)
        with torch.no_grad():
            self.student.weight.copy_(torch.randn(self.c, e, generator=g) * scale)
            self.student.bias.copy_(torch.randn(self.c, generator=g))
        self.teachers = [(torch.randn(self.c, e, generator=g) * 2, torch.randn(self.c, generator=g))
                         for _ in range(n_teachers)]
        self.calls = []

    def mixed(self, perm, lam):
        lam = lam[:, None, None]
        x = lam * self.x + (1 - lam) * self.x[perm]
        m = torch.maximum(self.mask, self.mask[perm])
        return (x * m[..., None]).sum(1) / m.sum(1, keepdim=True), m

    def run_student(self, perm, lam):
        self.calls.append(("student", perm.clone(), lam.clone()))
        pooled, m = self.mixed(perm, lam)
        return Features(logits=self.student(pooled), mask=m, heads=2)

    def run_teachers(self, perm, lam):
        self.calls.append(("teachers", perm.clone(), lam.clone()))
        with torch.no_grad():
            pooled, m = self.mixed(perm, lam)
            return [Features(logits=pooled @ w.t() + bias, mask=m, heads=2) for w, bias in self.teachers]

    def batch(self, weights, regression=False):
        feats = Features(logits=torch.zeros(self.b, self.c), mask=self.mask, heads=2)
        return Batch(feats, [feats for _ in self.teachers], torch.tensor(weights), self.y, regression,
                     run_student=self.run_student, run_teachers=self.run_teachers)

    def np_logits(self, weight, bias, perm, lam):
        x, mask = npy(self.x), self.mask.numpy()
        out = np.zeros((self.b, self.c))
        for i in range(self.b):
            j = int(perm[i])
            m = np.maximum(mask[i], mask[j])
            xi = float(lam[i]) * x[i] + (1 - float(lam[i])) * x[j]
            pooled = (xi * m[:, None]).sum(0) / m.sum()
            out[i] = npy(weight) @ pooled + npy(bias)
        return out


def log_softmax_np(z):
    z = z - z.max()
    return z - math.log(np.exp(z).sum())


@pytest.mark.parametrize("distance,regression,weights", [
    ("mse", False, [1.0]),
    ("mse", False, [0.25, 0.75]),
    ("kl", False, [0.25, 0.75]),
    ("mse", True, [1.0]),
])
def test_mixkd_value(distance, regression, weights):
    alpha, sm_w, tm_w, temp = 0.4, 0.7, 0.3, 2.0
    setup = MixSetup(n_teachers=len(weights), regression=regression)
    term = build("mixkd", alpha=alpha, sm_weight=sm_w, tmkd_weight=tm_w, distance=distance, temperature=temp)
    torch.manual_seed(11)
    loss = term(setup.batch(weights, regression))

    torch.manual_seed(11)  # the term draws the partner permutation first, then one lambda per example
    perm = torch.randperm(setup.b)
    lam = torch.distributions.Beta(alpha, alpha).sample((setup.b,))
    assert [c[0] for c in setup.calls] == ["student", "teachers"]
    for _, p, lm in setup.calls:
        assert torch.equal(p, perm) and torch.equal(lm, lam)

    s = setup.np_logits(setup.student.weight, setup.student.bias, perm, lam)
    ts = [setup.np_logits(w, b, perm, lam) for w, b in setup.teachers]
    y, lam_np, perm_np = setup.y.numpy(), lam.double().numpy(), perm.numpy()
    if regression:
        target = lam_np * y + (1 - lam_np) * y[perm_np]
        sm = float(np.mean((s[:, 0] - target) ** 2))
    else:
        sm = 0.0
        for i in range(setup.b):
            ls = log_softmax_np(s[i])
            sm += lam_np[i] * -ls[y[i]] + (1 - lam_np[i]) * -ls[y[perm_np[i]]]
        sm /= setup.b
    if distance == "mse" or regression:
        d = sum(w * float(np.mean((s - t) ** 2)) for w, t in zip(weights, ts))
    else:
        d = 0.0
        for i in range(setup.b):
            p = sum(w * np.exp(log_softmax_np(t[i] / temp)) for w, t in zip(weights, ts))
            d += float(np.sum(p * (np.log(p) - log_softmax_np(s[i] / temp))))
        d = d / setup.b * temp * temp
    close(loss, sm_w * sm + tm_w * d)


def test_mixkd_gradients_and_loss_decrease():
    setup = MixSetup(scale=4.0)
    term = build("mixkd", alpha=0.4, sm_weight=1.0, tmkd_weight=1.0)
    torch.manual_seed(0)
    loss = term(setup.batch([1.0]))
    loss.backward()
    g = setup.student.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    setup.student.zero_grad()
    first, last = fit(term, setup.student, lambda: setup.batch([1.0]), steps=50, lr=5e-2, eval_seed=7)
    assert last < 0.7 * first, (first, last)


# -- MLM -----------------------------------------------------------------------------------------------
class TinyLM(nn.Module):
    def __init__(self, vocab=11, hidden=8, seed=4):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, hidden)
        self.body = nn.Linear(hidden, hidden)
        self.ids = torch.randint(0, vocab, (B, T))

    def get_input_embeddings(self):
        return self.emb

    def forward(self) -> Features:
        e = self.emb(self.ids)
        return Features(logits=torch.zeros(B, C), mask=MASK.clone(), heads=2, hidden=(e, self.body(e)))


MLM_LABELS = torch.tensor([[-100, 4, -100, 9, -100],
                           [2, -100, 7, -100, -100]])


def mlm_setup():
    lm = TinyLM()
    term = build("mlm", teachers=())
    term.bind(lm)
    torch.manual_seed(6)
    with torch.no_grad():  # make every piece of the head matter
        term.bias.normal_()
        term.transform[2].weight.normal_(1.0, 0.3)
        term.transform[2].bias.normal_()
    return lm, term


def test_mlm_value_tied_decoder():
    lm, term = mlm_setup()
    feats = lm()
    loss = term(Batch(feats, [], torch.ones(0), MLM_LABELS, regression=False))
    w1, b1 = npy(term.transform[0].weight), npy(term.transform[0].bias)
    ln = term.transform[2]
    gamma, beta = npy(ln.weight), npy(ln.bias)
    emb, bias, h_last = npy(lm.emb.weight), npy(term.bias), npy(feats.hidden[-1])
    total, n = 0.0, 0
    for b in range(B):
        for t in range(T):
            label = int(MLM_LABELS[b, t])
            if label == -100:
                continue
            z = w1 @ h_last[b, t] + b1
            z = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in z])  # BERT's erf GELU
            z = (z - z.mean()) / math.sqrt(z.var() + ln.eps) * gamma + beta
            logits = emb @ z + bias  # decoder tied to the student's word embeddings
            total += -log_softmax_np(logits)[label]
            n += 1
    close(loss, total / n)


def test_mlm_head_belongs_to_term_but_embeddings_to_student():
    lm, term = mlm_setup()
    assert all(p is not lm.emb.weight for p in term.parameters())  # not saved/owned by the term
    loss = term(Batch(lm(), [], torch.ones(0), MLM_LABELS, regression=False))
    loss.backward()
    assert lm.emb.weight.grad is not None and torch.isfinite(lm.emb.weight.grad).all()
    assert lm.emb.weight.grad.abs().sum() > 0
    assert term.bias.grad is not None and term.transform[0].weight.grad.abs().sum() > 0


def test_mlm_loss_decreases():
    lm, term = mlm_setup()
    first, last = fit(term, lm, lambda: Batch(lm(), [], torch.ones(0), MLM_LABELS, regression=False),
                      steps=40, lr=3e-2)
    assert last < 0.7 * first, (first, last)


# -- 5. layer maps and build errors --------------------------------------------------------------------
@pytest.mark.parametrize("spec,m,n,expected", [
    ("uniform", 3, 12, [(0, 3), (1, 7), (2, 11)]),
    ("uniform", 6, 12, [(0, 1), (1, 3), (2, 5), (3, 7), (4, 9), (5, 11)]),
    ("skip", 6, 12, [(0, 1), (1, 3), (2, 5), (3, 7), (4, 9)]),
    ("last", 6, 12, [(0, 6), (1, 7), (2, 8), (3, 9), (4, 10)]),
    ("final", 6, 12, [(5, 11)]),
    ("final", 3, 4, [(2, 3)]),
    ("uniform", 4, 4, [(0, 0), (1, 1), (2, 2), (3, 3)]),
    ([None, 0, 11], 3, 12, [(1, 0), (2, 11)]),
])
def test_layer_maps(spec, m, n, expected):
    assert layer_pairs(spec, m, n) == expected


def test_skip_is_uniform_without_top_block():
    for m, n in [(6, 12), (3, 12), (4, 6)]:
        assert layer_pairs("skip", m, n) == layer_pairs("uniform", m, n)[:-1]


@pytest.mark.parametrize("spec,m,n", [([0, 5, 12], 3, 12), ([0, -1, 2], 3, 12), ([0, 1], 3, 12),
                                      ("uniform", 6, 4), ("final", 6, 4)])
def test_layer_map_errors_name_the_field(spec, m, n):
    with pytest.raises(TermError) as e:
        layer_pairs(spec, m, n)
    assert e.value.field == "layer_map" and "layer_map" in str(e.value)


@pytest.mark.parametrize("name", ["pkd", "cosine_hidden", "hidden_mse", "attention_mse", "attention_kl"])
def test_term_with_layer_map_past_teacher_depth(name):
    with pytest.raises(TermError) as e:
        build(name, layer_map=[0, 3, 6])  # teacher TEACHER has blocks 0..5
    assert e.value.field == "layer_map" and "layer_map" in str(e.value) and "6" in str(e.value)


@pytest.mark.parametrize("name", ["pkd", "cosine_hidden", "hidden_mse", "embedding_mse"])
def test_width_mismatch_without_projection(name):
    with pytest.raises(TermError) as e:
        build(name, projection=False)
    assert e.value.field == "projection" and "projection" in str(e.value)
    assert "8" in str(e.value) and "12" in str(e.value)
    build(name, teachers=[TEACHER_SAME], projection=False)  # equal widths need none


@pytest.mark.parametrize("name", ["attention_kl", "attention_mse", "minilm"])
def test_head_mismatch(name):
    with pytest.raises(TermError) as e:
        build(name, teachers=[Shape(6, 12, 6)])
    msg = str(e.value)
    assert re.search(r"\b2\b", msg) and re.search(r"\b6\b", msg), msg


def test_minilmv2_allows_head_mismatch_but_needs_dividing_relation_heads():
    build("minilmv2", teachers=[Shape(6, 12, 6)], relation_heads=4)
    for r, teachers in [(3, [TEACHER]), (12, [TEACHER]), (4, [Shape(6, 10, 2)])]:
        with pytest.raises(TermError) as e:
            build("minilmv2", teachers=teachers, relation_heads=r)
        assert e.value.field == "relation_heads" and "relation_heads" in str(e.value)


def test_minilm_block_past_depth():
    with pytest.raises(TermError) as e:
        build("minilm", teacher_layer=6)
    assert e.value.field == "teacher_layer"
    with pytest.raises(TermError) as e:
        build("minilmv2", relation_heads=4, student_layer=3)
    assert e.value.field == "student_layer"
