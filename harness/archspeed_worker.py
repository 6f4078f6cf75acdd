"""The child process of :mod:`harness.archspeed`: one architecture's speed, taken in a fresh process.

Run as ``python -m harness.archspeed_worker`` with the job as JSON on stdin; prints its result as JSON
on the last line of stdout.  A fresh process per architecture, so that no allocator state, thread pool
or cached kernel of an earlier model colours the figures.  The parent sets OMP_NUM_THREADS and
MKL_NUM_THREADS (read when torch loads); here ``torch.set_num_threads`` states the same count again, the
process is pinned to that many CPUs (``pin``) and inter-op parallelism is off (one forward at a time).
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from harness.archspeed import hf_config
from harness.precision import cpu_has_native_bf16

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def plan() -> list[tuple[str, str]]:
    """(device, dtype) pairs to measure here: CPU fp32 always, CPU bf16 where the CPU computes it natively,
    GPU bf16 (where supported) and fp32 where a GPU is present.  bf16 means autocast over fp32 weights."""
    pairs = [("cpu", "float32")] + ([("cpu", "bfloat16")] if cpu_has_native_bf16() else [])
    if torch.cuda.is_available():
        pairs += [("cuda", "bfloat16")] if torch.cuda.is_bf16_supported() else []
        pairs += [("cuda", "float32")]
    return pairs


def inputs(vocab: int, batch: int, lengths: list[int] | None, fixed: int, count: int, seed: int) -> list:
    """``count`` (input_ids, attention_mask) pairs, made before any timing.  Without ``lengths`` every
    example is ``fixed`` tokens long; with them (one per dev example) each batch draws its examples'
    lengths from that list and is padded to its longest, as dynamic padding does.  The seed is the same
    for every row, so bf16 and fp32 (and CPU and GPU) see the very same batches."""
    gen = torch.Generator().manual_seed(seed)
    pool = None if lengths is None else torch.tensor(lengths)
    out = []
    for _ in range(count):
        lens = torch.full((batch,), fixed) if pool is None else pool[torch.randint(len(pool), (batch,), generator=gen)]
        width = int(lens.max())
        ids = torch.randint(vocab, (batch, width), generator=gen)
        out.append((ids, (torch.arange(width)[None, :] < lens[:, None]).long()))
    return out


def rss_kib(field: str) -> int | None:
    """VmRSS (now) or VmHWM (high-water mark) of this process in KiB, from /proc; None off Linux."""
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def reset_peak(device: str) -> str:
    """Reset the peak-memory counter for the next row; returns what that row's peak will be (a key of
    :data:`harness.archspeed.PEAK_OF`)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return "cuda_allocated"
    try:  # hand the heap freed by earlier rows back, or it would count in this row's resident peak
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:  # Linux: "5" resets VmHWM (and ru_maxrss with it) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return "rss_row"
    except OSError:
        return "rss_process"


def peak_mib(device: str, before_kib: int) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # VmHWM rather than ru_maxrss: after exec, ru_maxrss may still hold the forked parent's high-water mark
    peak = rss_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return (peak - before_kib) / 1024


def time_passes(model: torch.nn.Module, batches: list, warmup: int, device: str, dtype: str) -> list[float]:
    """Seconds of each forward pass of ``batches[warmup:]``, synchronised on a GPU.  Untimed first: the
    ``warmup`` batches, then one pass at every further shape the timed batches have (dev-length batches
    differ in width, and a first pass at a new shape pays one-time costs, such as oneDNN building its
    bf16 kernels for that shape, that no later pass does)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timed, shapes, untimed = batches[warmup:], set(), list(batches[:warmup])
    shapes.update(tuple(ids.shape) for ids, _ in untimed)
    for ids, mask in timed:
        if tuple(ids.shape) not in shapes:
            shapes.add(tuple(ids.shape))
            untimed.append((ids, mask))
    times = []
    with torch.inference_mode(), torch.autocast(device, dtype=DTYPES[dtype], enabled=dtype != "float32"):
        for i, (ids, mask) in enumerate(untimed + timed):
            ids, mask = ids.to(device), mask.to(device)
            sync()
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            sync()
            if i >= len(untimed):
                times.append(time.perf_counter() - start)
    return times


def row(model: torch.nn.Module, job: dict, device: str, dtype: str, batch: int, kind: str,
        lengths: list[int] | None, before_kib: int) -> dict:
    batches = inputs(model.config.vocab_size, batch, lengths, job["length"], job["warmup"] + job["passes"],
                     job["seed"])
    peak_of = reset_peak(device)
    times = time_passes(model, batches, job["warmup"], device, dtype)
    # "inclusive" puts the quartiles on the data's own range, so p25 <= median <= p75 always holds
    p25, _, p75 = statistics.quantiles(times, n=4, method="inclusive")
    median = statistics.median(times)
    return {"device": device, "dtype": dtype, "batch": batch, "lengths": kind, "passes": len(times),
            "median_ms": round(median * 1e3, 4), "p25_ms": round(p25 * 1e3, 4), "p75_ms": round(p75 * 1e3, 4),
            # examples over the time they took: with dev lengths, batches differ in width, and batch / median
            # would overstate a right-skewed distribution's throughput
            "mean_ms": round(statistics.fmean(times) * 1e3, 4), "throughput": round(batch * len(times) / sum(times), 2),
            "mean_len": statistics.fmean(ids.shape[1] for ids, _ in batches[job["warmup"]:]),
            "peak_mib": round(peak_mib(device, before_kib), 1), "peak_of": peak_of,
            "times_ms": [round(t * 1e3, 4) for t in times]}  # the rounds pool them (archspeed_result)


def pin(threads: int) -> list[int]:
    """Pin this process to ``threads`` of the CPUs it may use (the first ones), so the OS does not move
    the threads across cores mid-measurement; the CPUs it runs on (all it may use off Linux)."""
    if not hasattr(os, "sched_setaffinity"):
        return list(range(os.cpu_count() or 1))
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def measure_arch(job: dict) -> dict:
    """Every row of one architecture: each (device, dtype) of :func:`plan`, at the fixed length and at each
    dev-length distribution, at each batch size."""
    cpus = pin(job["threads"])
    torch.set_num_threads(job["threads"])
    torch.set_num_interop_threads(1)
    # before the memory baseline: asking about a GPU starts CUDA, whose host memory no CPU row should count
    pairs = plan()
    config = hf_config(job["config"])
    with torch.device("meta"):  # loads the modeling code (100+ MiB of imports) without allocating weights,
        AutoModelForSequenceClassification.from_config(config)  # so the baseline below leaves it out
    reset_peak("cpu")
    before_kib = rss_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)  # the weights do not change the speed; a seed keeps the run repeatable all the same
    model = AutoModelForSequenceClassification.from_config(config).float().eval()
    kinds = [("fixed", None)] + sorted(job["dev_lengths"].items())
    # "only": the row kinds to measure, e.g. one memory row, first in its process so no earlier row's
    # heap is in its peak
    only = {tuple(k) for k in job["only"]} if job.get("only") else None
    rows = []
    for device, dtype in pairs:
        model.to(device)
        rows += [row(model, job, device, dtype, batch, kind, lengths, before_kib)
                 for kind, lengths in kinds for batch in job["batches"]
                 if only is None or (device, dtype, batch, kind) in only]
    return {"pid": os.getpid(), "threads": torch.get_num_threads(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            "interop_threads": torch.get_num_interop_threads(), "cpus": cpus,
            "params": sum(p.numel() for p in model.parameters()), "rows": rows}


if __name__ == "__main__":
    print(json.dumps(measure_arch(json.load(sys.stdin))))
