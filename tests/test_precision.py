"""precision: auto means bf16 where the hardware computes it natively, and a bf16 experiment is kept
apart from an fp32 one: its hashes, teacher folders and records differ, while every fp32 hash is what it
was before auto could mean bf16 on a CPU."""
from __future__ import annotations

import pytest

import harness.precision as precision
from harness.recipe_parts import Training


@pytest.fixture
def cpu_bf16(monkeypatch):
    def use(native: bool):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
        monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    return use


def test_auto_follows_the_cpu(cpu_bf16):
    cpu_bf16(True)
    assert precision.effective("auto") == "bf16" and precision.effective("fp32") == "fp32"
    # CPU bf16 is autocast, which trains differently from DeepSpeed's bf16 mode that earlier runs used
    assert precision.key_part("auto", "bf16") == {"precision": "bf16", "bf16": "autocast"}
    assert precision.key_part("bf16", "bf16") == {"bf16": "autocast"}
    cpu_bf16(False)
    assert precision.effective("auto") == "fp32" and precision.effective("bf16") == "bf16"
    assert precision.key_part("auto", "fp32") == {}


def test_flags_are_read_from_cpuinfo_unless_switched_off(monkeypatch):
    import os

    precision.cpu_has_native_bf16.cache_clear()
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    assert precision.cpu_has_native_bf16() == any(f in flags for f in precision.BF16_CPU_FLAGS)
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    precision.cpu_has_native_bf16.cache_clear()
    assert precision.cpu_has_native_bf16() is False
    monkeypatch.delenv(precision.CPU_BF16_ENV)
    precision.cpu_has_native_bf16.cache_clear()


def test_a_bf16_teacher_is_another_teacher(tmp_path, cache):
    from harness.teachers import finetuned_dir, load_card

    p = tmp_path / "c.yaml"
    p.write_text("name: c\narchitecture: bert\nlayers: 2\nhidden: 8\nheads: 2\ncheckpoint: {path: m}\n")
    card, settings = load_card(p), Training()
    assert finetuned_dir(card, "sst2", settings, "bf16") != finetuned_dir(card, "sst2", settings, "fp32")


def test_plan_hash_names_the_precision_only_when_auto_means_bf16(cpu_bf16, tmp_path):
    from harness.plan import load

    p = tmp_path / "r.yaml"
    p.write_text("task: sst2\nteachers: [{card: all-MiniLM-L6-v2}]\nstudent: {init: teacher_layers, layers: [0]}\n"
                 "objective: [{term: hinton_kd}]\n")
    cpu_bf16(False)
    plain = load(p)  # resolved once: the plan keeps what auto meant when it was made
    assert plain.precision == "fp32" and "precision" not in plain.resolved(42)
    cpu_bf16(True)
    bf16 = load(p)
    assert bf16.precision == "bf16" and bf16.resolved(42)["precision"] == "bf16"
    assert bf16.hash(42) != plain.hash(42)
    assert bf16.resolved(42)["teacher_checkpoints"][0]["precision"] == "bf16"  # the teacher, too
    forced = load(p, ["deepspeed.precision=fp32"])  # an fp32 student of the same bf16 teacher
    assert forced.precision == "fp32" and "precision" not in {k for k in forced.resolved(42) if k != "deepspeed"}
    assert forced.resolved(42)["teacher_checkpoints"] == bf16.resolved(42)["teacher_checkpoints"]


def test_cpu_bf16_is_autocast_over_fp32_weights_outside_deepspeed(cpu_bf16):
    """On a CPU, bf16 stages keep fp32 weights and AdamW (DeepSpeed's bf16 mode off) and run their
    forward under DeepSpeed's torch_autocast; the record says so and why."""
    import torch

    from harness import engine
    from harness.recipe_parts import DeepSpeedSettings

    cpu_bf16(True)
    auto = DeepSpeedSettings()
    cfg = engine.ds_config(Training(), auto, 1)
    assert engine.cpu_autocast(auto) and not cfg["bf16"]["enabled"]
    assert cfg["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert engine.model_dtype(auto) == torch.bfloat16  # the teachers' weights and cached features
    stats = engine.precision_stats(auto)
    assert stats["precision"] == "bfloat16" and "autocast" in stats["precision_mode"]
    fp32 = DeepSpeedSettings(precision="fp32")
    assert not engine.cpu_autocast(fp32) and engine.precision_stats(fp32)["precision_mode"] == "DeepSpeed"
    assert not engine.ds_config(Training(), fp32, 1)["torch_autocast"]["enabled"]
    cpu_bf16(False)
    assert not engine.cpu_autocast(auto)


def test_a_cpu_bf16_engine_computes_in_bf16_over_fp32_weights(cpu_bf16):
    """Through the real DeepSpeed engine: its forward returns bf16, its weights stay fp32 after a step."""
    import torch

    from harness import engine
    from harness.recipe_parts import DeepSpeedSettings

    cpu_bf16(True)
    engine.init_distributed()
    torch.manual_seed(0)
    eng = engine.initialize(torch.nn.Linear(4, 4), Training(batch_size=2), DeepSpeedSettings(), total_steps=2)
    y = eng(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    eng.backward(y.float().pow(2).mean())
    eng.step()
    assert eng.module.weight.dtype == torch.float32 and eng.module.weight.grad is None
