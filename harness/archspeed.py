"""Inference speed per architecture, not per record: what a study's speed columns come from.

A record's own speed figure (:mod:`harness.bench`) is one noisy draw taken whenever that run finished, so
three records of one 3-layer student can disagree with each other and with a 6-layer model.  Speed depends
on the architecture only, so a study measures it once per architecture (:func:`arch_key`), from the config
alone (random weights, no checkpoint), each architecture in a fresh child process
(:mod:`harness.archspeed_worker`) with its thread count set and stated, one after another.  Each row is
warm-up passes (and one at every further batch width the timed passes have), then ``passes`` timed ones:
median and quartiles, at batch 1 and 32, at a fixed length and at a task's dev-length distribution
(dynamic padding).  Ratios between rows of one result
(:func:`speedups`) come from one sitting, so a table built from them cannot contradict itself; a shallower
model measured slower than a deeper twin, in any row, has the whole family measured again, and every row
is the median over the takes; a pair that stays inconsistent is marked (:func:`inconsistent`).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import transformers
from transformers import AutoConfig, PretrainedConfig

from harness.archspeed_result import LAYER_FIELDS, combine_takes, find_row, inconsistent

WORKER = "harness.archspeed_worker"
HIDDEN_FIELDS = ("hidden_size", "dim", "d_model")
# Config fields that do not change what an eval-mode forward pass computes: names, label names, token ids,
# dropout (off in eval), initialisation, layer-norm epsilon, output and cache switches.  Every other field
# counts, so an unforeseen one splits an architecture in two rather than merging two different ones.
IGNORED = {"_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype", "id2label",
           "label2id", "problem_type", "finetuning_task", "output_attentions", "output_hidden_states",
           "return_dict", "use_cache", "gradient_checkpointing", "tie_word_embeddings", "tokenizer_class"}
IGNORED_PARTS = ("dropout", "initializer", "_eps", "_token_id")
# Values that mean what the field's absence means in this transformers (BERT no longer reads this one).
NEUTRAL = {"position_embedding_type": "absolute"}
PEAK_OF = {
    "rss_row": "CPU: peak resident memory (VmHWM) of a fresh process that ran only that row (1 warm-up and 2 "
               "passes) minus its resident memory just before the model was built (its code already "
               "imported): weights, activations and the threads' working memory",
    "rss_process": "CPU: peak resident memory of the child so far (could not be reset per row) minus the "
                   "resident memory just before the model was built",
    "cuda_allocated": "GPU: torch.cuda.max_memory_allocated of a fresh process that ran only that row, weights "
                      "included",
}


def hf_config(fields: dict) -> PretrainedConfig:
    """The transformers config of a config.json-style dict (``model_type`` plus fields), defaults filled."""
    rest = {k: v for k, v in fields.items() if k != "model_type"}
    return AutoConfig.for_model(fields["model_type"], **rest)


def arch_fields(config: dict) -> dict:
    """The fields of ``config`` that change what a forward pass computes, transformers' defaults filled in
    (a config that omits a default and one that states it are one architecture), plus ``num_labels``."""
    full = hf_config(config).to_dict()
    fields = {k: v for k, v in full.items()
              if k not in IGNORED and not any(part in k for part in IGNORED_PARTS)
              and not (k in NEUTRAL and v == NEUTRAL[k])}
    fields["num_labels"] = len(full["id2label"])
    return fields


def _first(fields: dict, names: tuple[str, ...]):
    return next((fields[n] for n in names if n in fields), None)


def _label(fields: dict) -> str:
    layers, hidden = _first(fields, LAYER_FIELDS), _first(fields, HIDDEN_FIELDS)
    return fields["model_type"] if layers is None or hidden is None else f"{fields['model_type']} {layers}L-{hidden}"


def arch_label(config: dict) -> str:
    """A short human label, e.g. ``bert 3L-384`` or ``mpnet 12L-768`` (not unique: see :func:`arch_key`)."""
    return _label(arch_fields(config))


def arch_key(config: dict) -> str:
    """A stable identity of the architecture ``config`` describes, e.g. ``bert-3L-384-1f0c9a2b7e``: the label
    and a hash of :func:`arch_fields`.  Two records with equal keys share one measurement."""
    fields = arch_fields(config)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return f"{_label(fields).replace(' ', '-')}-{digest}"


def default_threads() -> int:
    """2, or fewer where this process may use fewer CPUs."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(2, usable)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_worker(job: dict) -> dict:
    """Run one job in a fresh ``python -m harness.archspeed_worker`` with its thread count in the
    environment; its result, or RuntimeError with the end of the child's stderr."""
    threads = str(job["threads"])
    paths = [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]
    # this checkout's harness first, so the child runs the code its parent runs
    env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                        "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    done = subprocess.run([sys.executable, "-m", WORKER], input=json.dumps(job), capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        raise RuntimeError(f"speed worker failed (exit {done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _length_sets(dev_lengths: dict[str, list[int]] | list[int] | None) -> dict[str, list[int]]:
    """Row kind -> token lengths: ``dev`` for a bare list, ``dev:<task>`` for each task of a dict."""
    if dev_lengths is None:
        sets = {}
    elif isinstance(dev_lengths, list):
        sets = {"dev": dev_lengths}
    else:
        sets = {f"dev:{task}": lengths for task, lengths in dev_lengths.items()}
    for kind, lengths in sets.items():
        if not lengths or not all(isinstance(n, int) and n >= 1 for n in lengths):
            raise ValueError(f"{kind}: dev lengths must be a non-empty list of positive token counts")
    return sets


def _take(key: str, entry: dict, job: dict, log: Callable[[str], None]) -> None:
    """Measure one architecture (again): a take of its own in ``entry["takes"]``; ``entry["rows"]`` is then
    every row's median over the takes, so a re-measurement adds evidence rather than replacing it."""
    start, load = time.perf_counter(), os.getloadavg()
    out = run_worker(job | {"config": entry["fields"]})
    entry["takes"].append({"pid": out["pid"], "wall_s": round(time.perf_counter() - start, 1),
                           "loadavg_before": load[0], "loadavg_after": os.getloadavg()[0], "rows": out["rows"]})
    entry.update({k: out[k] for k in ("params", "threads", "omp_threads", "interop_threads", "cpus")},
                 rows=combine_takes([t["rows"] for t in entry["takes"]]))
    log(f"{key}: {entry['takes'][-1]['wall_s']:.0f} s, CPU fp32 batch 1 length {job['length']}: "
        f"{find_row({'rows': out['rows']})['median_ms']:.2f} ms (load {load[0]:.1f})")


def _memory(entry: dict, job: dict) -> list[dict]:
    """The largest batch's peak memory at the fixed length, one fresh process per (device, dtype) that
    measures only that row: a row later in a process would count the heap its earlier rows left."""
    kinds = {(r["device"], r["dtype"]) for r in entry["rows"]}
    out = []
    for device, dtype in sorted(kinds):
        only = [[device, dtype, max(job["batches"]), "fixed"]]
        row = run_worker(job | {"config": entry["fields"], "only": only, "passes": 2, "warmup": 1})["rows"][0]
        out.append({k: row[k] for k in ("device", "dtype", "batch", "lengths", "peak_mib", "peak_of")})
    return out


def measure(configs: dict[str, dict], dev_lengths: dict[str, list[int]] | list[int] | None = None,
            threads: int | None = None, passes: int = 30, *, warmup: int = 5, length: int = 128,
            batches: tuple[int, ...] = (1, 32), seed: int = 0, rounds: int = 3,
            log: Callable[[str], None] = print) -> dict:
    """Speed of every architecture among ``configs`` (name -> config.json dict), each take in its own child
    process.  ``dev_lengths``: the dev set's token lengths (a list, rows ``dev``) or one list per task
    (rows ``dev:<task>``).  ``rounds`` rounds, each measuring every architecture once in a shuffled order,
    so that the machine's drift falls on all of them alike; every figure pools the rounds' passes.  Where
    :func:`inconsistent` flags a pair, every architecture is measured in up to two more rounds (pairs
    still flagged are marked where the result is read: ``archspeed_result.marks``).  Then the peak
    memory of the largest batch at the fixed length, in a fresh process per precision that runs only
    that row (``memory``)."""
    if passes < 2 or rounds < 1:
        raise ValueError("passes must be at least 2 (a median and quartiles need several), rounds at least 1")
    job = {"threads": threads or default_threads(), "passes": passes, "warmup": warmup, "length": length,
           "batches": list(batches), "seed": seed, "dev_lengths": _length_sets(dev_lengths)}
    archs: dict[str, dict] = {}
    for name, config in sorted(configs.items()):
        key = arch_key(config)
        archs.setdefault(key, {"label": arch_label(config), "names": [], "fields": arch_fields(config), "takes": []})
        archs[key]["names"].append(name)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result = {"archs": archs}
    for round_ in range(rounds + 2):
        if round_ >= rounds and not inconsistent(result):
            break
        order = sorted(archs)
        random.Random(seed + round_).shuffle(order)  # no fixed order for the machine's drift to favour
        for key in order:
            _take(key, archs[key], job, log)
    for entry in archs.values():
        entry["memory"] = _memory(entry, job)
    machine = {"cpu": cpu_model(), "threads": job["threads"],
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "python": platform.python_version(), "torch": torch.__version__,
               "transformers": transformers.__version__, "started": started,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    settings = {k: job[k] for k in ("passes", "warmup", "length", "batches", "seed")}
    settings["warm_every_width"] = True  # archspeed_worker.time_passes; absent from older measurements
    return {"machine": machine, "settings": settings, "peak_of": PEAK_OF, "archs": archs}


