"""Trained once, reused by every recipe that needs it: teachers fine-tuned on a task, teachers
co-finetuned together, assistant stages.  Each lives in a cache folder named by its resolved spec, with
its run record inside (``<folder>/record``) and a copy under the results folder.

``cached_run`` is the one place that does this: under the entry's lock (a second process waits, then
reuses), train into ``<folder>.tmp``, write its manifest (:mod:`harness.integrity`), rename it into
place, copy the record to the results folder.  An entry without an intact manifest is never read: it
is rebuilt with a warning.  In a study, a model whose kept record its students read is trained again
(its cache lost) as that record was, so that it comes out the same weights (``kept_conditions``).
``finish`` saves and times a trained model; ``summary`` prints a run's one-line result.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from harness import bench
from harness.engine import barrier, is_main
from harness.integrity import intact, locked, model_id, write_manifest
from harness.models import count_parameters, save_model, weights_size_bytes
from harness.recipe_parts import SpeedSettings
from harness.records import STACK, installed, read_record, record_commit, same_data, short_state, stack_of
from harness.run_record import RunRecord
from harness.schema import ConfigError

Entry = tuple[Path, Path]  # (cache folder, record folder under results/runs)


def is_done(folder: Path, data: str, commit: str | None = None) -> bool:
    """A complete, undamaged entry (damage is reported: the caller rebuilds it) trained on ``data``
    (tasks.data_id), and at ``commit`` when one is given (a study: every record from one commit)."""
    if not ((folder / "record" / "metrics.json").exists() and intact(folder, "a cached model")):
        return False
    why = None
    if not same_data(record := read_record(folder / "record"), data):
        why = f"was trained on other data ({record.data}; this run reads {data})"
    elif commit is not None and (was := record_commit(folder / "record")) != commit:
        why = f"was trained at commit {short_state(was)}; this study runs at {short_state(commit)}"
    if why is not None and is_main():
        print(f"note: {folder.name} {why}: training it again", flush=True)
    return why is None


def _copy_record(folder: Path, record_dir: Path, replace: bool) -> None:
    """The cached model's record into the results folder.  A run keeps a record already there of the
    same data (one trained elsewhere, which its students' teacher_scores tell apart); a study replaces
    one of other weights, so its teacher records are those of the instances its students read (one of
    the same weights, trained again, stays: only its wall time differs)."""
    there, record = record_dir / "metrics.json", folder / "record"
    if there.exists():
        kept, new = read_record(record_dir), read_record(record)
        if kept.instance is not None and kept.instance == new.instance or not replace and same_data(kept, new.data):
            return
    shutil.rmtree(record_dir, ignore_errors=True)
    shutil.copytree(record, record_dir)


def cached_run(entries: list[Entry], train: Callable[[list[Path]], None], data: str,
               commit: str | None = None) -> list[RunRecord]:
    """The records of the cached models ``entries`` name, training them first unless every one is
    done.  ``train(tmps)`` runs on every rank; rank 0 writes each model into its ``tmps[i]`` and its
    record into ``tmps[i] / "record"``.  Models trained together (co-finetuning) share one call.
    Rank 0 holds the entries' lock throughout, so a second process waits and then reuses them.  With
    ``commit`` (a study), an entry trained at another commit is trained again."""
    with locked(entries[0][0], "this model") if is_main() else contextlib.nullcontext():
        barrier()  # the other ranks wait until rank 0 holds the lock
        if not all(is_done(folder, data, commit) for folder, _ in entries):
            with kept_conditions(entries, data, commit) if commit is not None else contextlib.nullcontext():
                _train_into_place(entries, train)
        if is_main():
            for folder, record_dir in entries:
                _copy_record(folder, record_dir, replace=commit is not None)
        barrier()
    return [read_record(folder / "record") for folder, _ in entries]


# A CPU training's weights are decided by its spec, its commit, its thread count and torch: trained
# again under the same ones it gives the kept weights bit for bit (a cache lost: the zoo's teachers came
# out with their committed instances).  transformers and DeepSpeed are held equal too (records.STACK):
# a study's records share them (harness.study_rules), and a new release may change a model's code.


def _kept(record_dir: Path, data: str, commit: str) -> dict | None:
    """The env.json of a study's kept record of this model (same data, same commit), if there is one
    that names its threads (records.env_info)."""
    env_file = record_dir / "env.json"
    if not (env_file.is_file() and (record_dir / "metrics.json").is_file()):
        return None
    env = json.loads(env_file.read_text())
    if "cpu_threads" not in env or not same_data(read_record(record_dir), data) or record_commit(record_dir) != commit:
        return None
    return env


@contextlib.contextmanager
def kept_conditions(entries: list[Entry], data: str, commit: str):
    """Train a model again, in a study, as its kept record was trained, so that it comes out the instance
    the study's students read (a study keeps one instance per teacher: other weights would split it):
    with the record's thread count for the while, and refused under another torch, transformers or
    DeepSpeed."""
    kept = [(d, env) for _, d in entries if (env := _kept(d, data, commit)) is not None]
    here = dict(stack_of(installed(STACK)))
    for record_dir, env in kept:
        for name, was in stack_of(env["packages"]):
            if was != here[name]:
                raise ConfigError(
                    f"{record_dir} is this study's record of a model its students read, and it is not in this "
                    f"cache; trained again under {name} {here[name]} (the record's: {was}) it would not be the "
                    "instance they read, and a study keeps one instance per teacher. Install the record's "
                    f"{name}, or delete that record to train a new instance on purpose.")
    before, threads = torch.get_num_threads(), kept[0][1]["cpu_threads"] if kept else None
    if threads is None or threads == before:
        yield
        return
    if is_main():
        print(f"note: training {kept[0][0]} again with {threads} threads (now {before}), as its record was, "
              "so that it comes out the instance the study's students read", flush=True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_into_place(entries: list[Entry], train: Callable[[list[Path]], None]) -> None:
    tmps = [folder.with_name(folder.name + ".tmp") for folder, _ in entries]
    if is_main():
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
    train(tmps)
    if is_main():
        for tmp, (folder, _) in zip(tmps, entries):
            write_manifest(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
    barrier()


def finish(model: nn.Module, tok, out_dir: Path, speed: SpeedSettings) -> dict:
    """Save the trained model (fp32 safetensors) into a fresh ``out_dir`` and time it; rank 0 only.
    Returns the record's ``params``, ``size_bytes``, ``speed`` and ``instance``."""
    shutil.rmtree(out_dir, ignore_errors=True)  # nothing left from an interrupted run
    save_model(model, tok, out_dir)
    return {"params": count_parameters(model), "size_bytes": weights_size_bytes(out_dir), "instance": model_id(out_dir),
            "speed": bench.measure(model, speed.seq_len, speed.throughput_batch, speed.iters)}


def summary(m: RunRecord, where: Path) -> None:
    t = m.train
    print(f"[{m.name} seed {m.seed}] {m.task} score {100 * m.score:.2f} | "
          f"{t.train_examples} train ex, {t.wall_time_s:.0f}s, {t.samples_per_s:.0f} ex/s | "
          f"{m.params.total / 1e6:.1f}M params, CPU b1 {m.speed.cpu.latency_ms:.1f} ms | {where}", flush=True)
