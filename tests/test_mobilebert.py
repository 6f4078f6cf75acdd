"""MobileBERT (Sun et al. 2020): the bottleneck student built from a recipe on transformers' own classes,
its layer-wise transfer from a standard teacher (feature maps through a projection, attention with each
student head against a group of teacher heads) against formulas written here, progressive transfer
freezing the right weights, and the three strategies' recipes validated and run end to end."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from torch import nn

from conftest import FIXTURE_GLUE, REAL_GLUE, REPO, harness_cli, needs_glue
from harness.features import Features, Need, forward_features
from harness.losses import TERMS, Batch, Shape, TermError
from harness.models import build_student, count_parameters, load_classifier
from harness.plan import load
from harness.recipe_parts import MobileBertStudent, Progressive
from harness.schema import ConfigError

STRATEGIES = ["mobilebert_aux", "mobilebert_joint", "mobilebert_prog"]
SHIPPED = sorted(REPO.glob("recipes/glue/*/mobilebert_*/*.yaml"))
# a tiny MobileBERT under the tiny BERT teacher of conftest (4 blocks, width 48, 4 heads): narrower
# (a real projection) and with half the heads (groups of 2)
TINY_STUDENT = ("{init: config, architecture: mobilebert, layers: 2, hidden: 32, bottleneck: 16, heads: 2, "
                "ffn: 24, ffns: 4, embedding: 8}")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _recipe(tmp_path: Path, student: str, card="all-MiniLM-L6-v2", extra="objective: [{term: ce}]\n") -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(f"task: sst2\nteachers: [{{card: {card}}}]\nstudent: {student}\n{extra}")
    return p


def _eager(model):
    """The models' own attention probabilities (output_attentions) need the eager implementation."""
    model.config._attn_implementation = "eager"
    return model.eval()


# -- the student ---------------------------------------------------------------------------------------
def test_shipped_student_is_transformers_mobilebert_with_bottlenecks():
    plan = load(SHIPPED[0])
    if plan.student_card.local_checkpoint() is None:
        pytest.skip("all-MiniLM-L6-v2 is not installed: python -m harness teachers install all-MiniLM-L6-v2")
    model, tok, label = build_student(plan.recipe.student, plan.student_card, plan.task, seed=0)
    assert type(model) is transformers.MobileBertForSequenceClassification and label == "mobilebert-6L"
    cfg = model.config
    assert (cfg.hidden_size, cfg.intra_bottleneck_size, cfg.true_hidden_size) == (384, 128, 128)
    assert cfg.num_attention_heads == 4
    assert cfg.vocab_size == len(tok) == 30522 and cfg.pad_token_id == tok.pad_token_id
    emb = model.mobilebert.embeddings
    assert emb.word_embeddings.weight.shape == (30522, 128)  # factorised: 128-wide token vectors ...
    assert emb.trigram_input and emb.embedding_transformation.weight.shape == (384, 3 * 128)  # ... kernel 3 to 384
    for block in model.mobilebert.encoder.layer:
        assert block.bottleneck.input.dense.weight.shape == (128, 384)  # residual path, narrowed
        assert block.bottleneck.attention.dense.weight.shape == (128, 384)  # shared by queries and keys
        assert block.attention.self.query.weight.shape == (128, 128)
        assert block.attention.self.value.weight.shape == (128, 384)  # values read the wide input
        ffns = [*block.ffn, block]  # 3 stacked FFNLayers, then the block's own intermediate/output
        assert len(ffns) == 4 and all(f.intermediate.dense.weight.shape == (512, 128) for f in ffns)
        assert block.output.bottleneck.dense.weight.shape == (384, 128)  # widened back
    norms = [type(m).__name__ for m in model.mobilebert.modules() if "Norm" in type(m).__name__]
    # the shipped recipes choose LayerNorm (the paper's "w/o OPT"); NoNorm is tested with the tiny student
    assert norms and set(norms) == {"LayerNorm"}
    teacher = load_classifier(plan.teachers[0].card.pretrained_path(), plan.task)
    mine, theirs = count_parameters(model), count_parameters(teacher)
    assert mine["total"] == 9_059_330 and theirs["total"] == 22_713_986  # the figures the recipe states
    ids = tok(["a small test", "of the student"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, output_hidden_states=True)
    assert out.logits.shape == (2, 2) and [h.shape[-1] for h in out.hidden_states] == [384] * 7


def test_student_schema(tmp_path):
    good = _recipe(tmp_path, TINY_STUDENT)
    s = load(good).recipe.student
    assert isinstance(s, MobileBertStudent) and (s.ffns, s.embedding, s.normalization) == (4, 8, "no_norm")
    assert load(good).student_shape == Shape(2, 32, 2)  # what the terms see: depth, inter-block width, heads
    bad = {"bottleneck (16) must be divisible by heads (3)": TINY_STUDENT.replace("heads: 2", "heads: 3"),
           "architecture: 'mobilebret' is not one": TINY_STUDENT.replace("mobilebert", "mobilebret"),
           "only init: config students choose one": "{init: teacher_layers, architecture: mobilebert, layers: [0]}",
           "unknown key 'bottleneck'": TINY_STUDENT.replace("architecture: mobilebert, ", ""),
           "normalization: Input should be": TINY_STUDENT.replace("embedding: 8", "normalization: batch_norm")}
    for msg, student in bad.items():
        with pytest.raises(ConfigError, match=re.escape(msg)):
            load(_recipe(tmp_path, student))
    # a plain config student's resolved recipe (what its hash covers) has none of MobileBERT's fields
    plain = load(_recipe(tmp_path, "{init: config, layers: 2, hidden: 32, heads: 2, ffn: 24}")).recipe.resolved()
    assert set(plain["student"]) == {"init", "name", "tokenizer_card", "layers", "hidden", "heads", "ffn"}


# -- the transfer terms against formulas written here ---------------------------------------------------
B, T = 2, 5
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def _features(shape: Shape, seed: int) -> Features:
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return Features(logits=rnd(B, 2), mask=MASK, heads=shape.heads,
                    hidden=tuple(rnd(B, T, shape.hidden) for _ in range(shape.layers + 1)),
                    q={i: rnd(B, T, shape.hidden) for i in range(shape.layers)},
                    k={i: rnd(B, T, shape.hidden) for i in range(shape.layers)})


def _head_softmax(q, k, heads, b, h, i, real):
    """softmax over the real keys of query row i of head h: q_i . k_j / sqrt(d), d = width / heads."""
    d = q.shape[-1] // heads
    qi = q[b, i, h * d:(h + 1) * d]
    s = np.array([qi @ k[b, j, h * d:(h + 1) * d] / math.sqrt(d) for j in real])
    e = np.exp(s - s.max())
    return e / e.sum()


def ref_grouped_attention_kl(s: Features, t: Features, pairs) -> float:
    """Student head j of h_s against the mean of teacher heads j*k .. j*k+k-1 (k = h_t / h_s): KL(target
    || student) per real query row, over real keys; mean over heads and rows; summed over block pairs."""
    k = t.heads // s.heads
    total = 0.0
    for m, n in pairs:
        sq, sk, tq, tk = (x.numpy() for x in (s.q[m], s.k[m], t.q[n], t.k[n]))
        kl, rows = 0.0, 0
        for b in range(B):
            real = [i for i in range(T) if MASK[b, i]]
            rows += len(real)
            for j in range(s.heads):
                for i in real:
                    target = sum(_head_softmax(tq, tk, t.heads, b, g, i, real) for g in range(j * k, (j + 1) * k)) / k
                    student = _head_softmax(sq, sk, s.heads, b, j, i, real)
                    kl += float(np.sum(target * np.log(target / student)))
        total += kl / (rows * s.heads)
    return total


def ref_feature_map_mse(s: Features, t: Features, pairs, proj: nn.Linear) -> float:
    """MobileBERT eq. 1 through the term's learned W (widths differ): mean over real tokens and the
    teacher's width of (W h_s + b - h_t)^2, summed over block pairs."""
    w, bias = proj.weight.detach().double().numpy(), proj.bias.detach().double().numpy()
    total = 0.0
    for m, n in pairs:
        hs, ht = s.hidden[m + 1].numpy(), t.hidden[n + 1].numpy()
        sq = [np.mean((w @ hs[b, i] + bias - ht[b, i]) ** 2) for b in range(B) for i in range(T) if MASK[b, i]]
        total += float(np.mean(sq))
    return total


def _build(name: str, student: Shape, teacher: Shape):
    cls = TERMS.get(name)
    return cls(cls.Params(layer_map="uniform"), student, [teacher]).double()


def _batch(s: Features, t: Features) -> Batch:
    return Batch(student=s, teachers=[t], teacher_weights=torch.ones(1), labels=torch.zeros(B), regression=False)


@pytest.mark.parametrize("t_heads", [6, 2])
def test_grouped_attention_kl_matches_the_formula(t_heads):
    """2 student heads under 6 teacher heads (groups of 3), and under 2 (groups of 1: attention_kl)."""
    student, teacher = Shape(2, 8, 2), Shape(4, 12, t_heads)
    s, t = _features(student, 1), _features(teacher, 2)
    term = _build("attention_kl_grouped", student, teacher)
    pairs = [(0, 1), (1, 3)]  # uniform, 2 blocks on 4: g(j) = 2j
    assert term.pairs == [pairs]
    loss = term(_batch(s, t))  # attention distributions are computed in float32
    torch.testing.assert_close(loss.double(), torch.tensor(ref_grouped_attention_kl(s, t, pairs), dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)
    if t_heads == student.heads:
        torch.testing.assert_close(loss, _build("attention_kl", student, teacher)(_batch(s, t)))


def test_grouping_is_not_a_plain_mean_of_per_head_kls():
    """The target is the mean of the group's distributions, not the mean of KLs to each of them."""
    student, teacher = Shape(2, 8, 2), Shape(4, 12, 6)
    s, t = _features(student, 3), _features(teacher, 4)
    grouped = _build("attention_kl_grouped", student, teacher)(_batch(s, t)).item()
    per_head = 0.0  # student head j against each teacher head of its group, averaged
    for g in range(3):
        pick = [j * 3 + g for j in range(2)]
        heads = lambda x: {n: v.view(B, T, 6, 2)[:, :, pick].reshape(B, T, 4) for n, v in x.items()}  # noqa: E731
        one = Features(t.logits, MASK, 2, q=heads(t.q), k=heads(t.k))
        per_head += _build("attention_kl", student, Shape(4, 4, 2))(_batch(s, one)).item() / 3
    assert grouped < per_head - 1e-3  # KL is convex: the KL to the mean is below the mean of the KLs


def test_head_counts_that_do_not_group_are_rejected():
    for t_heads in (3, 5):
        with pytest.raises(TermError, match=f"teacher's {t_heads} heads are not a multiple of the student's 2"):
            _build("attention_kl_grouped", Shape(2, 8, 2), Shape(4, 12, t_heads))
    with pytest.raises(TermError, match="not a multiple of the student's 4"):
        _build("attention_kl_grouped", Shape(2, 8, 4), Shape(4, 12, 2))  # more student heads than teacher's


def test_terms_on_real_models_match_their_own_outputs():
    """A tiny MobileBERT student and a tiny BERT teacher: the terms, fed by the hooks, equal the formulas
    applied to what the models themselves return (hidden states, attention probabilities)."""
    torch.manual_seed(0)
    student = _eager(transformers.MobileBertForSequenceClassification(transformers.MobileBertConfig(
        vocab_size=100, hidden_size=32, intra_bottleneck_size=16, num_attention_heads=2, intermediate_size=24,
        embedding_size=8, num_hidden_layers=2, max_position_embeddings=16, initializer_range=0.15)))
    teacher = _eager(transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=48, num_attention_heads=4, intermediate_size=64, num_hidden_layers=4,
        max_position_embeddings=16, initializer_range=0.15)))  # above the default 0.02: attention far from
    # uniform, so a wrong grouping of heads changes the value
    inputs = {"input_ids": torch.randint(5, 100, (B, T)), "attention_mask": MASK}
    s_shape, t_shape = Shape(2, 32, 2), Shape(4, 48, 4)
    att, mse = _build("attention_kl_grouped", s_shape, t_shape), _build("hidden_mse", s_shape, t_shape)
    with torch.no_grad():
        fs = forward_features(student, inputs, Need(hidden=True, qkv=frozenset({0, 1})))
        ft = forward_features(teacher, inputs, Need(hidden=True, qkv=frozenset({1, 3})))
        own_s = student(**inputs, output_attentions=True, output_hidden_states=True)
        own_t = teacher(**inputs, output_attentions=True, output_hidden_states=True)
        batch = _batch(fs, ft)
        att_loss, mse_loss = att.float()(batch), mse.float()(batch)
    pairs = [(0, 1), (1, 3)]
    kl = 0.0
    for m, n in pairs:  # the models' own probabilities; teacher heads averaged in groups of 2
        ps, pt = own_s.attentions[m].double(), own_t.attentions[n].double().view(B, 2, 2, T, T).mean(2)
        acc, rows = 0.0, 0
        for b in range(B):
            real = MASK[b].bool()
            p, q = pt[b][:, real][:, :, real], ps[b][:, real][:, :, real]  # [heads, real rows, real keys]
            acc += (p * (p / q).log()).sum().item()
            rows += int(real.sum())
        kl += acc / (rows * 2)
    assert kl > 0.05 and abs(att_loss.item() - kl) < 1e-5 * kl, (att_loss.item(), kl)
    w, bias = mse.proj[0].weight.detach().double(), mse.proj[0].bias.detach().double()
    want = sum(((own_s.hidden_states[m + 1].double() @ w.T + bias - own_t.hidden_states[n + 1].double()) ** 2)
               [MASK.bool()].mean().item() for m, n in pairs)
    assert isinstance(mse.proj[0], nn.Linear) and abs(mse_loss.item() - want) < 1e-5 * want, (mse_loss.item(), want)


# -- progressive transfer on the bottleneck student ---------------------------------------------------
def test_progressive_scale_covers_every_mobilebert_weight():
    from harness.phases import progressive_scale

    model = transformers.MobileBertForSequenceClassification(transformers.MobileBertConfig(
        vocab_size=50, hidden_size=16, intra_bottleneck_size=8, num_attention_heads=2, intermediate_size=8,
        embedding_size=4, num_hidden_layers=3, max_position_embeddings=8))
    names = [n for n, _ in model.named_parameters()]
    block_of = {n: int(n.split("encoder.layer.")[1].split(".")[0]) for n in names if "encoder.layer." in n}
    embeddings = [n for n in names if n.startswith("mobilebert.embeddings.")]
    rest = [n for n in names if n not in block_of and n not in embeddings]
    assert rest == ["mobilebert.pooler.dense.weight", "mobilebert.pooler.dense.bias", "classifier.weight",
                    "classifier.bias"]  # never trained by a progressive block

    def expected(n: str, block: int, lower: float) -> float:
        if n in block_of:
            return 1.0 if block_of[n] == block else lower if block_of[n] < block else 0.0
        if n in embeddings:  # random: trained with block 0, then below every later block
            return 1.0 if block == 0 else lower
        return 0.0

    for block in range(3):
        for lower, spec in [(0.0, Progressive(lower="freeze")), (0.1, Progressive(lower="reduced_lr", lr_scale=0.1))]:
            scale = progressive_scale(block, spec, random_embeddings=True)
            assert [scale(n) for n in names] == [expected(n, block, lower) for n in names], (block, lower)
    # embeddings copied from a teacher (a cut student) stay below block 0, as the paper has them
    assert progressive_scale(0, Progressive(lower="freeze"))("mobilebert.embeddings.word_embeddings.weight") == 0.0


def _progressive_setup(tmp_path, tiny_card, objective: str, max_steps: int):
    """A 2-block MobileBERT student, its tiny teacher and a progressive phase (``objective``) then KD, on
    the fixture's SST-2: (plan, model, tokenizer, label, teacher, options) for ``train_phases``."""
    from harness.distill import Teacher
    from harness.engine import init_distributed
    from harness.options import Options

    init_distributed()
    extra = (f"phases:\n  - {{name: progressive, progressive: {{lower: freeze}}, objective: {objective}}}\n"
             "  - {name: final, objective: [{term: hinton_kd}]}\n"
             f"training: {{max_steps: {max_steps}, batch_size: 2, lr: 1.0e-2, warmup_ratio: 0.0, max_length: 16, "
             "log_every: 1}\ndeepspeed: {precision: fp32}\n")
    plan = load(_recipe(tmp_path, TINY_STUDENT, str(tiny_card), extra))
    model, tok, label = build_student(plan.recipe.student, plan.student_card, plan.task, seed=0)
    teacher = Teacher(load_classifier(plan.teachers[0].card.pretrained_path(), plan.task), 1.0)
    opts = Options(results_dir=tmp_path / "results", glue_dir=FIXTURE_GLUE, teacher_cache=False)
    return plan, model, tok, label, teacher, opts


def test_progressive_phase_trains_one_block_at_a_time(tmp_path, tiny_card, monkeypatch):
    """Each stage of the progressive phase changes its own block only (and the embeddings with block 0),
    with one shared W_h for the narrower feature maps; the final phase trains everything."""
    from harness import phases

    plan, model, tok, label, teacher, opts = _progressive_setup(
        tmp_path, tiny_card, "[{term: hidden_mse},\n     {term: attention_kl_grouped}]", max_steps=2)
    changed, projections, real_stage = [], [], phases.train_stage

    def recording_stage(student, teachers, terms, *args, **kwargs):
        before = {n: p.detach().clone() for n, p in student.named_parameters()}
        projections.extend(t.proj[0] for t, _ in terms if hasattr(t, "proj") and isinstance(t.proj[0], nn.Linear))
        engine, stats = real_stage(student, teachers, terms, *args, **kwargs)
        after = dict(engine.module.student.named_parameters())
        changed.append({n.split(".")[1] if "encoder.layer." not in n else f"block{n.split('.')[3]}"
                        for n, p in before.items() if not torch.equal(p, after[n].detach())})
        return engine, stats

    monkeypatch.setattr(phases, "train_stage", recording_stage)
    _, stats = phases.train_phases(plan, model, tok, [teacher], 0, label, opts)
    assert [(s["phase"], s["block"]) for s in stats] == [("progressive", 0), ("progressive", 1), ("final", None)]
    assert changed[0] == {"embeddings", "block0"} and changed[1] == {"block1"}
    assert changed[2] >= {"embeddings", "block0", "block1"}
    assert len(projections) == 2 and projections[0] is projections[1]  # one W_h (32 -> 48) for both blocks


def test_progressive_blocks_continue_one_batch_stream(tmp_path, tiny_card, monkeypatch):
    """Block b's stage takes the batches after block b-1's, as joint's single layer-wise phase would,
    not the first batches of epoch 0 again (which left half the data unseen at epochs: 0.5 per block);
    the final phase starts its own stream."""
    from harness import phases, stage_loop
    from harness.data import length_grouped_batches

    plan, model, tok, label, teacher, opts = _progressive_setup(tmp_path, tiny_card, "[{term: hidden_mse}]", max_steps=1)
    seen, real_loader = [], stage_loop.loader

    def recording_loader(micro, ds, *args, **kwargs):
        seen.append(([m.tolist() for m in micro], np.asarray(ds["length"])))
        return real_loader(micro, ds, *args, **kwargs)

    monkeypatch.setattr(stage_loop, "loader", recording_loader)
    phases.train_phases(plan, model, tok, [teacher], 0, label, opts)
    stream = [b.tolist() for b in length_grouped_batches(seen[0][1], 2, 0, 0)]  # seed 0, epoch 0
    assert len(stream) == 2  # the fixture's 3 SST-2 rows in batches of 2
    assert [m for m, _ in seen] == [[stream[0]], [stream[1]], [stream[0]]]  # block 0, block 1, final


# -- the shipped recipes and the three strategies end to end ------------------------------------------
def test_shipped_recipes_validate_one_row_per_strategy():
    plans = [load(p) for p in SHIPPED]  # what `harness validate` runs: parse, resolve, check against the cards
    rows = {(p.task.name, p.name.split("/")[2]) for p in plans}
    assert rows >= {(t, s) for t in ("sst2", "mrpc") for s in STRATEGIES} and len(rows) == len(plans)
    for plan in plans:
        assert isinstance(plan.recipe.student, MobileBertStudent) and plan.path.name == "mobilebert6L_from_minilm.yaml"
        assert plan.student_shape == Shape(6, 384, 4) and plan.teachers[0].shape == Shape(6, 384, 12)
        phases = [ph for _, ph in plan.recipe.named_phases()]
        terms = [t.term for ph in phases for t in ph.objective]
        assert list(dict.fromkeys(terms)) == ["hidden_mse", "attention_kl_grouped", "hinton_kd"]
        # every strategy transfers layer by layer on general text first, the pair losses averaged (1/6)
        first, final = phases[0], phases[-1]
        assert first.corpus is not None and first.corpus.glue == "all" and first.corpus.max_examples == 32000
        assert [(t.term, t.weight) for t in first.objective] == [
            ("hidden_mse", pytest.approx(1 / 6)), ("attention_kl_grouped", pytest.approx(1 / 6))]
        assert final.corpus is None and final.objective[-1].term == "hinton_kd"
    # progressive's layer-wise phase trains what joint's does, on every task: 2 epochs of the text
    by = {(p.task.name, p.name.split("/")[2]): p for p in plans}
    for task in {t for t, _ in by}:
        prog, joint = by[task, "mobilebert_prog"], by[task, "mobilebert_joint"]
        layerwise = [prog.recipe.phase_training(ph) for _, ph in prog.recipe.named_phases()][0]
        block = prog.recipe.named_phases()[0][1].progressive.block_training(layerwise, prog.student_shape.layers)
        joint_epochs = joint.recipe.phase_training(joint.recipe.named_phases()[0][1]).epochs
        assert block.epochs * prog.student_shape.layers == pytest.approx(joint_epochs) == 2, task
        # the auxiliary strategy adds the layer-wise terms to the final objective, joint's has it alone
        aux_final = by[task, "mobilebert_aux"].recipe.named_phases()[-1][1].objective
        assert [t.term for t in aux_final] == ["hidden_mse", "attention_kl_grouped", "hinton_kd"]
        assert [t.term for t in joint.recipe.named_phases()[-1][1].objective] == ["hinton_kd"]


@needs_glue
def test_three_strategies_run_end_to_end(tmp_path, tiny_card):
    base = tmp_path / "_base.yaml"
    base.write_text(f"task: sst2\nteachers:\n  - card: {tiny_card}\nstudent: {TINY_STUDENT}\n"
                    "training: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_length: 32, max_train_examples: 32, "
                    "log_every: 1, seed: 42}\nspeed: {seq_len: 16, throughput_batch: 2, iters: 1}\n")
    paths = []
    for s in STRATEGIES:
        p = tmp_path / f"{s}.yaml"
        p.write_text(f"defaults: [_base.yaml, {REPO / 'recipes/glue/_methods' / s}.yaml]\nname: {s}\n")
        paths.append(p)
    results = tmp_path / "results"
    res = harness_cli("run", *map(str, paths), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    assert res.returncode == 0, res.stderr[-4000:]
    runs = {s: json.loads((results / "runs" / s / "seed42" / "metrics.json").read_text()) for s in STRATEGIES}
    phases = {s: [(p["phase"], p["block"]) for p in r["train"].get("phases", [])] for s, r in runs.items()}
    assert phases == {"mobilebert_aux": [("layerwise", None), ("final", None)],
                      "mobilebert_joint": [("layerwise", None), ("final", None)],
                      "mobilebert_prog": [("progressive", 0), ("progressive", 1), ("final", None)]}
    for s, rec in runs.items():
        assert rec["terms"] == ["hidden_mse", "attention_kl_grouped", "hinton_kd"]
        assert rec["model"] == "mobilebert-2L-H32-B16"
        for ph in rec["train"].get("phases", [rec["train"]]):
            assert all(math.isfinite(x) for h in ph["loss_history"] for x in h["terms"]), (s, ph.get("phase"))
        saved = json.loads((Path(rec["checkpoint"]) / "config.json").read_text())
        assert saved["model_type"] == "mobilebert" and saved["num_feedforward_networks"] == 4
    # the saved students are the plain MobileBERT: the projection W_h is not in them
    assert len({r["params"]["total"] for r in runs.values()}) == 1
