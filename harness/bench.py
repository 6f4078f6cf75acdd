"""Inference speed of a saved model: batch-1 latency and batch-N throughput at a fixed length.

The nanoGPT bench pattern: warm up, synchronise, time.  Inputs are random token ids of exactly
``seq_len`` tokens (no padding), so the figure depends on the architecture only, not on data.
CPU figures are always taken in fp32 (the threads torch is given), in bf16 autocast too on a CPU that
computes bf16 natively, and with int8 dynamic quantization of the linear layers (``torch.ao``) where
it runs on the model; GPU figures too when one is present (bf16 autocast where supported, fp32
otherwise).  All of a record's figures are taken in one sitting, so their ratios are comparable even
on a busy machine; absolute figures move with the machine's load (``harness retime`` takes them again).
"""
from __future__ import annotations

import copy
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from harness.archspeed_worker import time_passes
from harness.paths import cache_dir
from harness.precision import cpu_has_native_bf16
from harness.records import read_record, record_folders, rewrite_record
from harness.run_record import Speed


def _timeit(model: nn.Module, batch: int, seq_len: int, vocab: int, dev: torch.device, iters: int,
            warmup: int, dtype: torch.dtype) -> float:
    """Seconds per forward pass, median of ``iters`` timed passes after ``warmup`` untimed ones, on one
    batch of random ids (the studies' timing loop, :func:`harness.archspeed_worker.time_passes`)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, min(vocab, 20000), (batch, seq_len), generator=gen)
    times = time_passes(model, [(ids, torch.ones_like(ids))] * (warmup + iters), warmup, dev.type,
                        str(dtype).removeprefix("torch."))
    return statistics.median(times)


def _cpu(model: nn.Module, seq_len: int, throughput_batch: int, iters: int, dtype: torch.dtype) -> dict:
    cpu, vocab = torch.device("cpu"), model.config.vocab_size
    lat = _timeit(model, 1, seq_len, vocab, cpu, iters, 3, dtype)
    thr = _timeit(model, throughput_batch, seq_len, vocab, cpu, max(2, iters // 4), 1, dtype)
    return {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "dtype": str(dtype).removeprefix("torch."), "latency_ms": round(lat * 1e3, 3),
            "throughput": round(throughput_batch / thr, 2)}


def _int8(model: nn.Module) -> nn.Module | None:
    """The model with its linear layers dynamically quantized to int8, or None where torch.ao cannot."""
    try:
        with warnings.catch_warnings():  # torch 2.13 marks the quantized tensor constructors deprecated
            warnings.simplefilter("ignore", UserWarning)
            return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    except (RuntimeError, AssertionError, NotImplementedError):
        return None


def measure(model: nn.Module, seq_len: int = 128, throughput_batch: int = 32, iters: int = 10) -> dict:
    """{'cpu': {...}, 'cpu_bf16', 'cpu_int8', 'gpu': {...} where they can be taken}; the model is left on
    the CPU in eval mode."""
    model = model.eval().float().to("cpu")
    out = {"seq_len": seq_len, "throughput_batch": throughput_batch,
           "cpu": _cpu(model, seq_len, throughput_batch, iters, torch.float32)}
    if cpu_has_native_bf16():
        out["cpu_bf16"] = _cpu(model, seq_len, throughput_batch, iters, torch.bfloat16)
    quantized = _int8(model)
    if quantized is not None:
        out["cpu_int8"] = _cpu(quantized, seq_len, throughput_batch, iters, torch.float32) | {"dtype": "qint8"}
    vocab = model.config.vocab_size
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        model.to(dev)
        lat = _timeit(model, 1, seq_len, vocab, dev, iters * 5, 10, dtype)
        thr = _timeit(model, throughput_batch, seq_len, vocab, dev, iters * 2, 5, dtype)
        out["gpu"] = {
            "device": torch.cuda.get_device_name(),
            "dtype": str(dtype).removeprefix("torch."),
            "latency_ms": round(lat * 1e3, 3),
            "throughput": round(throughput_batch / thr, 2),
        }
        model.to("cpu")
    return out


def retime(results_dir, log=print) -> int:
    """Measure again the speed of every record whose model this cache holds, and rewrite its figures.

    Speed is taken right after training, so a busy machine skews it; this re-takes it on a quiet one
    (training figures and dev metrics are left as they are).  Students' teacher speed-ups are refreshed
    from their teacher's record when there is one teacher record for that card and task.
    """
    done, teacher_speed = 0, {}
    for folder in sorted(record_folders(Path(results_dir)), key=lambda p: "teachers" not in p.parts):  # teachers first
        m = read_record(folder)
        model_dir = cache_dir() / "teachers" / m.model / m.task / folder.name if m.kind == "teacher" \
            else Path(m.checkpoint)
        if not (model_dir / "config.json").exists():
            log(f"skip  {folder} (model not in this cache: {model_dir})")
            continue
        old = m.speed
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        m.speed = Speed.model_validate(measure(model, old.seq_len, old.throughput_batch, 10)
                                       | {"retimed": time.strftime("%Y-%m-%d %H:%M:%S")})
        first = m.teachers[0].card if m.teachers else None
        if m.kind == "teacher":
            teacher_speed.setdefault((m.model, m.task), []).append(m.speed)
        elif m.teacher_speed is not None and first and len(teacher_speed.get((first, m.task), [])) == 1:
            m.teacher_speed = teacher_speed[(first, m.task)][0]
        rewrite_record(folder, m)
        done += 1
        log(f"ok    {folder}  CPU b1 {old.cpu.latency_ms:.1f} -> {m.speed.cpu.latency_ms:.1f} ms")
    return done
