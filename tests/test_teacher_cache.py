"""The teacher-output cache: same losses as running the teacher, misses when anything it depends on
changes, bypassed (and saying so) when the teacher must see new inputs."""
import copy

import datasets
import pytest
import torch

from conftest import harness_cli
from harness import teacher_cache
from harness.distill import Teacher, train_stage
from harness.features import Need
from harness.losses import TERMS, Shape
from harness.recipe_parts import DeepSpeedSettings, Training
from harness.engine import init_distributed


def _tiny(kind: str, layers: int = 3):
    from transformers import BertConfig, BertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification

    common = dict(vocab_size=120, hidden_size=24, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=48, max_position_embeddings=64, num_labels=2)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(**common))
    return MPNetForSequenceClassification(MPNetConfig(**common))


def _data(max_len: int = 8, seed: int = 0) -> datasets.Dataset:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, n in enumerate([5, 7, 6, 4, 8, 3, 5, 6, 7, 4, 6, 5]):
        n = min(n, max_len)
        rows.append({"idx": i, "input_ids": [2] + torch.randint(5, 120, (n - 1,), generator=g).tolist(),
                     "attention_mask": [1] * n, "label": i % 2, "length": n})
    return datasets.Dataset.from_list(rows)


def _terms(s: Shape, t: Shape, names):
    params = {"hidden_mse": {"layer_map": "uniform"}, "attention_mse": {"layer_map": "uniform"},
              "minilmv2": {"relation_heads": 6}, "hinton_kd": {}, "embedding_mse": {}, "mixkd": {}, "ce": {}}
    return [(TERMS.get(n)(TERMS.get(n).Params(**params[n]), s, [t] if TERMS.get(n).needs_teacher else []), 1.0)
            for n in names]


def _stage(teacher, source, student, names, cache: bool, ds):
    training = Training(epochs=1, batch_size=4, lr=1e-3, warmup_ratio=0.0, log_every=1)
    s = Shape(2, 24, 4)
    t = Shape(teacher.config.num_hidden_layers, 24, 4)
    _, stats = train_stage(copy.deepcopy(student), [Teacher(teacher, 1.0, source)], _terms(s, t, names), ds, False,
                           training, DeepSpeedSettings(), pad_id=0, seed=0, desc="t", cache_teachers=cache)
    return stats


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_cached_run_gives_the_same_losses_as_running_the_teacher(kind, tmp_path, cache):
    init_distributed()
    torch.manual_seed(0)
    teacher = _tiny(kind).eval()
    teacher.save_pretrained(tmp_path / "teacher")
    student = _tiny(kind, layers=2)
    ds = _data()
    names = ["hinton_kd", "embedding_mse", "hidden_mse", "attention_mse", "minilmv2"]
    live = _stage(teacher, tmp_path / "teacher", student, names, cache=False, ds=ds)
    first = _stage(teacher, tmp_path / "teacher", student, names, cache=True, ds=ds)
    again = _stage(teacher, tmp_path / "teacher", student, names, cache=True, ds=ds)
    assert live["teacher_cache"]["status"].startswith("off: disabled")
    assert first["teacher_cache"]["status"] == "built" and again["teacher_cache"]["status"] == "hit"
    assert first["teacher_cache"]["teacher_forward_examples_cached"] == len(ds)
    assert again["teacher_cache"]["teacher_forward_examples_cached"] == 0
    for a, b, c in zip(live["loss_history"], first["loss_history"], again["loss_history"]):
        # stored in fp32 like the run: equal up to the kernels' order of summation (the cache was built
        # in other batch shapes), not up to a half-precision rounding
        torch.testing.assert_close(torch.tensor(b["terms"]), torch.tensor(a["terms"]), rtol=1e-4, atol=1e-6)
        assert b["terms"] == c["terms"]  # a hit reads exactly what was built


def test_key_misses_on_changed_teacher_tokenization_or_outputs(tmp_path, cache):
    torch.manual_seed(0)
    teacher = _tiny("bert")
    teacher.save_pretrained(tmp_path / "t")
    need = Need(hidden=True, layers=frozenset({1, 3}))
    base = teacher_cache.cache_key(tmp_path / "t", _data(), need)
    assert teacher_cache.cache_key(tmp_path / "t", _data(), need) == base
    assert teacher_cache.cache_key(tmp_path / "t", _data(max_len=6), need) != base  # shorter max length
    assert teacher_cache.cache_key(tmp_path / "t", _data(seed=1), need) != base  # other tokens (tokenizer)
    assert teacher_cache.cache_key(tmp_path / "t", _data(), Need(qkv=frozenset({0}))) != base  # other outputs
    assert teacher_cache.cache_key(tmp_path / "t", _data(), need, torch.bfloat16) != base  # other precision
    torch.manual_seed(1)
    _tiny("bert").save_pretrained(tmp_path / "t")  # retrained teacher, same folder
    assert teacher_cache.cache_key(tmp_path / "t", _data(), need) != base


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_features_come_back_in_the_precision_the_teacher_ran_in(dtype, tmp_path, cache):
    """A bf16 run's cache holds the bf16 features bit for bit (no detour through fp16), an fp32 run's
    the fp32 ones: what the live teacher gives for the same padded batch."""
    from harness.data import Collator
    from harness.features import forward_features

    torch.manual_seed(0)
    teacher = _tiny("mpnet").eval()
    teacher.save_pretrained(tmp_path / "t")
    teacher.to(dtype)
    ds, need = _data(), Need(hidden=True, qkv=frozenset({1}), layers=frozenset({0, 2}))
    collate = Collator(0, False)
    c, how = teacher_cache.prepare(teacher, tmp_path / "t", ds, need, collate, torch.device("cpu"), 4, True,
                                   lambda: None, "t")
    assert how == "built" and sorted(p.suffix for p in c.folder.glob("h*")) == [f".{teacher_cache.STORAGE[dtype][0]}"] * 2
    rows = list(range(len(ds)))  # every row in one batch: the shapes the cache was not built in
    batch = collate([ds[i] for i in rows])
    with torch.no_grad():
        live = forward_features(teacher, {k: batch[k] for k in ("input_ids", "attention_mask")}, need)
    got = c.features(rows, batch["attention_mask"], dtype)
    real = batch["attention_mask"].bool()
    for name, a, b in [("h0", got.hidden[0], live.hidden[0]), ("h2", got.hidden[2], live.hidden[2]),
                       ("q1", got.q[1], live.q[1]), ("v1", got.v[1], live.v[1])]:
        assert a.dtype == dtype, name
        tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-2}
        torch.testing.assert_close(a[real], b.to(dtype)[real], **tol, msg=name)
        assert not a[~real].any(), name  # padding reads as zeros


def test_mixkd_and_masked_lm_bypass_the_cache(tmp_path, cache):
    init_distributed()
    torch.manual_seed(0)
    teacher = _tiny("bert").eval()
    teacher.save_pretrained(tmp_path / "teacher")
    stats = _stage(teacher, tmp_path / "teacher", _tiny("bert", 2), ["ce", "mixkd"], cache=True, ds=_data())
    assert stats["teacher_cache"]["status"].startswith("off: MixKD runs the teacher on new")
    assert stats["teacher_cache"]["teacher_forward_examples_cached"] == 0


def test_size_cap_turns_the_cache_off(tmp_path, cache, monkeypatch):
    torch.manual_seed(0)
    teacher = _tiny("bert").eval()
    teacher.save_pretrained(tmp_path / "t")
    monkeypatch.setenv(teacher_cache.MAX_GB_ENV, "1e-9")
    c, how = teacher_cache.prepare(teacher, tmp_path / "t", _data(), Need(hidden=True, layers=frozenset({1})),
                                   None, torch.device("cpu"), 4, True, lambda: None, "t")
    assert c is None and how.startswith("off: would take")


def test_cache_cli_lists_and_clears(tmp_path):
    env = {"KD_HARNESS_CACHE": str(tmp_path)}
    folder = tmp_path / "teacher_outputs" / "abc"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text('{"stored": ["h1"], "hidden": 4, "examples": 3, "created": "now"}')
    (folder / "h1.f16").write_bytes(b"\0" * 1024)
    ls = harness_cli("cache", "ls", env=env)
    assert ls.returncode == 0 and "abc" in ls.stdout and "1 cached teacher output sets" in ls.stdout
    cl = harness_cli("cache", "clear", env=env)
    assert cl.returncode == 0 and not folder.exists()


def test_end_of_run_summary_counts_teacher_passes_over_the_stages_that_had_teachers():
    from harness.runner import cache_summary

    def stage(status, uncached, cached):
        return {"teacher_cache": {"status": status, "teacher_forward_examples_uncached": uncached,
                                  "teacher_forward_examples_cached": cached}}

    assert cache_summary([{"teacher_cache": {"status": "no teacher"}}]) is None
    # built once (100 passes, 2 epochs' worth would be 200), then a hit (0 of 200)
    line = cache_summary([stage("built", 200, 100), stage("hit", 200, 0), {"teacher_cache": {"status": "no teacher"}}])
    assert line == ("teacher-output cache: teachers ran over 100 examples instead of 400 "
                    "(75% of teacher forward passes saved)")
    # a stage with the cache off ran its teachers every step, whatever its cached count says
    line = cache_summary([stage("off: MixKD feeds teachers mixed embeddings", 300, 0)])
    assert line == "teacher-output cache: saved nothing; teachers ran over all 300 examples"
