"""Which precision a stage computes in: ``deepspeed.precision`` resolved for this machine.

``auto`` is bf16 wherever the hardware computes it natively: a GPU that supports it, or a CPU with
``avx512_bf16`` or AMX (about 4x fp32's matmul throughput on this project's 2-core EPYC), and fp32
elsewhere.  A leaf module (no DeepSpeed import), so that a plan can name the precision in its hashes
without loading the training stack: the same recipe run in bf16 and in fp32 is two experiments, and
its teachers, stages, students and records are kept apart.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# KD_HARNESS_CPU_BF16=0 treats the CPU as having no native bf16, so that auto means fp32 on it, teachers'
# fine-tuning included: the setting the committed CPU records were trained under.
CPU_BF16_ENV = "KD_HARNESS_CPU_BF16"


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux: its /proc/cpuinfo flags), unless $KD_HARNESS_CPU_BF16=0."""
    if os.environ.get(CPU_BF16_ENV) == "0":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(f in flags for f in BF16_CPU_FLAGS)


def effective(declared: str) -> str:
    """'fp32', 'bf16' or 'fp16': what ``declared`` (a recipe's ``deepspeed.precision``) means here."""
    if declared != "auto":
        return declared
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_autocast(used: str) -> bool:
    """Whether bf16 training here is autocast over fp32 weights (DeepSpeed's ``torch_autocast``, on a
    CPU) rather than DeepSpeed's bf16 mode (on a GPU).  Why: DeepSpeed's bf16 mode keeps bf16 weights plus
    fp32 master copies, and on a CPU its extra copies and casts ate most of bf16's gain (the quickstart's
    student: 1.04x the issue-day fp32 code, against 1.47x with autocast and fused AdamW;
    ``results/bench/quickstart_speed.json``)."""
    return used == "bf16" and not torch.cuda.is_available()


AUTOCAST_WHY = ("DeepSpeed torch_autocast: bf16 autocast over fp32 weights and fp32 AdamW, not DeepSpeed's "
                "bf16 mode, whose bf16 weights with fp32 master copies kept little of bf16's speed-up on "
                "a CPU (results/bench/quickstart_speed.json)")


def key_part(declared: str, used: str) -> dict:
    """What a spec hash adds for the precision ``used`` where ``declared`` was asked for: nothing when
    ``auto`` meant fp32 (so every hash from before ``auto`` could mean bf16 on a CPU is unchanged);
    ``{"precision": used}`` when ``auto`` meant something else; and ``{"bf16": "autocast"}`` where bf16
    is CPU autocast, which trains differently from DeepSpeed's bf16 mode that earlier CPU runs used."""
    part = {"precision": used} if declared == "auto" and used != "fp32" else {}
    return part | ({"bf16": "autocast"} if cpu_autocast(used) else {})
