"""One training stage through DeepSpeed: forward teachers, forward student, weighted terms, step.

Teacher fine-tuning is the same stage with no teachers and the ``ce`` term.  Read it top to bottom:
``train_stage`` builds the engine, loops over length-grouped batches and returns the trained student;
``predict`` scores a dev split with every example seen by exactly one rank.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch import nn
from tqdm.auto import tqdm

from harness.data import Collator, length_grouped_batches, loader, rank_shard
from harness.engine import MODEL_INPUTS, LrScale, barrier, device, initialize, model_dtype, to_device, world
from harness import teacher_cache
from harness.features import Need, forward_features, mixed_forward
from harness.losses import Batch, Term
from harness.recipe_parts import DeepSpeedSettings, Training
from harness.tasks import Task
from harness.weighting import WeightingSpec, teacher_weights

@dataclass
class Teacher:
    model: nn.Module  # frozen, eval mode
    weight: float
    source: Path | None = None  # its checkpoint folder: with it, the outputs can be cached on disk
    # A teacher with its own tokenizer: the training set tokenized by it, row for row the student's
    # (same examples, same order), and its pad id.  None: it reads the student's inputs.
    tokenizer: object | None = None  # set when it differs from the student's
    data: object | None = None
    pad_id: int | None = None


class Objective(nn.Module):
    """The module DeepSpeed trains: the student plus any trainable parts of the terms (projections,
    an MLM head), which are dropped when the student is saved."""

    def __init__(self, student: nn.Module, terms: list[tuple[Term, float]], regression: bool,
                 weighting: WeightingSpec = WeightingSpec()):
        super().__init__()
        self.student = student
        self.weighting = weighting
        self.terms = nn.ModuleList(t for t, _ in terms)
        self.weights = [w for _, w in terms]
        self.regression = regression
        for term in self.terms:
            if hasattr(term, "bind"):  # e.g. the MLM head ties its decoder to the student's embeddings
                term.bind(student)
        self.need = Need()
        for term in self.terms:
            self.need = self.need | term.student_need()

    def forward(self, inputs, labels, teacher_feats, static_weights, run_teachers):
        """(weighted loss, per-term losses [n_terms], mean teacher weights [K]) of one micro-batch."""
        student = forward_features(self.student, inputs, self.need)
        weights = static_weights  # [K]
        if teacher_feats:  # [B, K]: per example, from the teachers' logits and the gold labels
            weights = teacher_weights(self.weighting, [f.logits for f in teacher_feats], labels, static_weights,
                                      self.regression)
        batch = Batch(student, teacher_feats, weights, labels, self.regression, inputs,
                      run_student=lambda perm, lam: mixed_forward(self.student, inputs, perm, lam),
                      run_teachers=run_teachers)
        parts = torch.stack([term(batch) for term in self.terms])  # [n_terms]
        mean_w = weights.detach().float().mean(0) if weights.ndim == 2 else weights.float()
        return (parts * parts.new_tensor(self.weights)).sum(), parts.detach(), mean_w


def _teacher_cache(teachers, needs, terms, t_data, training, why: str | None, dtype, dev, rank, desc):
    """Per teacher a CachedTeacher or None, and what happened (for the record and the log)."""
    if not teachers:
        return [], {"status": "no teacher", "teacher_forward_examples_cached": 0}
    live = [f"{type(t).__name__} {t.live_teacher}" for t in terms if t.live_teacher]
    if why is None and live:
        why = f"off: {live[0]}"
    if why is None and any(t.source is None for t in teachers):
        why = "off: a teacher without a checkpoint folder"
    if why:
        if rank == 0:
            print(f"[{desc}] teacher-output cache {why}", flush=True)
        return [None] * len(teachers), {"status": why, "teacher_forward_examples_cached": 0}
    out, status, built = [], [], 0
    for i, (t, need, (ds, collate)) in enumerate(zip(teachers, needs, t_data)):
        t.model.to(dev, dtype=dtype)
        if need.hidden and not need.layers:  # a term reading unspecified hidden states: keep them all
            need = Need(need.hidden, need.qkv, frozenset(range(t.model.config.num_hidden_layers + 1)))
        c, how = teacher_cache.prepare(t.model, t.source, ds, need, collate, dev, training.eval_batch_size,
                                       rank == 0, barrier, f"teacher {i}")
        out.append(c)
        status.append(how)
        built += len(ds) if how == "built" else 0
    if rank == 0:
        print(f"[{desc}] teacher-output cache: {', '.join(status)}", flush=True)
    return out, {"status": ", ".join(status), "teacher_forward_examples_cached": built}


def train_stage(student: nn.Module, teachers: list[Teacher], terms: list[tuple[Term, float]],
                train_ds, regression: bool, training: Training, settings: DeepSpeedSettings,
                pad_id: int, seed: int, desc: str, mask_tokens: Callable | None = None,
                lr_scale: LrScale | None = None, cache_teachers: bool = True,
                weighting: WeightingSpec = WeightingSpec(),
                teacher_needs: list[Need] | None = None) -> tuple[nn.Module, dict]:
    """Train ``student`` on ``train_ds`` with the weighted ``terms``; returns (engine, stats).

    ``mask_tokens(input_ids) -> (input_ids, mlm_labels)`` turns a step into masked-LM data (a corpus
    phase); ``lr_scale`` gives per-parameter learning-rate multipliers, 0 freezing a parameter;
    ``cache_teachers`` reads teacher outputs from the on-disk cache (see :mod:`harness.teacher_cache`);
    ``weighting`` turns the teachers' static weights into per-example ones (see :mod:`harness.weighting`);
    ``teacher_needs`` widens what each teacher exposes (and caches), so that the stages of a progressive
    phase, each reading one block, share one cache.
    """
    rank, world_size = world()
    dev = device()
    torch.manual_seed(seed)
    module = Objective(student, terms, regression, weighting)
    if not any(term.needs_teacher for term, _ in terms):
        teachers = []  # e.g. the no-KD baseline or a fine-tuning phase: no teacher forward at all
    n = len(train_ds)
    per_epoch = math.ceil(n / training.batch_size)
    total = training.max_steps or max(1, math.ceil(training.epochs * per_epoch))
    engine = initialize(module, training, settings, total, lr_scale)
    if training.compile:  # torch.compile of the student (its term modules run eagerly around it)
        engine.module.student.compile()
    dtype = model_dtype(settings)
    for t in teachers:
        t.model.to(dev, dtype=dtype).eval().requires_grad_(False)
    t_weights = torch.tensor([t.weight for t in teachers] or [1.0], device=dev)
    t_weights = t_weights / t_weights.sum()

    # what each teacher must expose (hidden states, q/k/v of some blocks): only what the terms read
    t_needs = list(teacher_needs) if teacher_needs and teachers else [Need() for _ in teachers]
    for term in module.terms:
        if term.needs_teacher:
            t_needs = [n | term.teacher_need(i) for i, n in enumerate(t_needs)]

    collate = Collator(pad_id, regression)
    # a teacher with its own tokenizer reads its own tokenization of the same rows
    t_data = [(t.data, Collator(t.pad_id, regression)) if t.data is not None else (train_ds, collate)
              for t in teachers]
    own_data = [td if td[0] is not train_ds else None for td in t_data]  # what the loader collates per teacher
    for t, (ds, _) in zip(teachers, t_data):
        if ds is not train_ds and list(ds["idx"]) != list(train_ds["idx"]):
            raise ValueError(f"[{desc}] a teacher's tokenized data does not hold the student's rows in order")
    off = ("off: disabled (--no-teacher-cache)" if not cache_teachers else
           "off: masked-LM inputs change every step" if mask_tokens is not None else None)
    cached, cache_info = _teacher_cache(teachers, t_needs, module.terms, t_data, training, off,
                                        dtype, dev, rank, desc)
    lengths = np.asarray(train_ds["length"])
    ga = settings.gradient_accumulation_steps
    engine.train()
    step, seen, epoch = 0, 0, 0
    loss_sum = torch.zeros((), device=dev)
    parts_sum = torch.zeros(len(terms), device=dev)
    weights_sum, weights_n = torch.zeros(len(t_weights), device=dev), 0
    history, weight_history = [], []
    bar = tqdm(total=total, desc=desc, disable=rank != 0, unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    workers = training.loader_workers if training.loader_workers is not None else \
        (0 if dev.type == "cpu" else min(4, max(1, (os.cpu_count() or 2) // 2)))
    while step < total:
        gbatches = length_grouped_batches(lengths, training.batch_size, seed, epoch)[:total - step]
        micro_batches = [m for g in gbatches for m in np.array_split(rank_shard(g, rank, world_size), ga)]
        batches = iter(loader(micro_batches, train_ds, collate, own_data, workers, pin=dev.type == "cuda"))
        for gbatch in gbatches:
            for _ in range(ga):
                micro, batch, own = next(batches)
                if mask_tokens is not None:  # the teacher sees the same masked text as the student
                    batch["input_ids"], batch["labels"] = mask_tokens(batch["input_ids"])
                batch = to_device(batch, dev)
                inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
                t_inputs = [inputs if b is None else {k: v for k, v in to_device(b, dev).items() if k in MODEL_INPUTS}
                            for b in own]
                with torch.no_grad():  # teachers are frozen: no graph, no gradient
                    t_feats = [c.features(micro, ti["attention_mask"], dtype) if c is not None
                               else forward_features(t.model, ti, need)
                               for t, need, c, ti in zip(teachers, t_needs, cached, t_inputs)]

                def run_teachers(perm, lam, t_inputs=t_inputs):
                    with torch.no_grad():
                        return [mixed_forward(t.model, ti, perm, lam) for t, ti in zip(teachers, t_inputs)]
                loss, parts, mean_w = engine(inputs, batch.get("labels"), t_feats, t_weights, run_teachers)
                engine.backward(loss)
                engine.step()
                loss_sum += loss.detach().float()
                parts_sum += parts.float()
                weights_sum += mean_w
                weights_n += 1
            seen += len(gbatch)
            step += 1
            bar.update(1)
            if step % training.log_every == 0 or step == total:
                # the only host sync in the loop, at logging intervals
                k = training.log_every if step % training.log_every == 0 else step % training.log_every
                avg = (loss_sum / (k * ga)).item()
                history.append({"step": step, "loss": avg, "terms": (parts_sum / (k * ga)).tolist()})
                bar.set_postfix(loss=f"{avg:.4f}")
                loss_sum.zero_()
                parts_sum.zero_()
        if teachers:  # the teacher weights actually used, averaged over the epoch's micro-batches
            weight_history.append({"epoch": epoch + 1, "mean": [round(w, 4) for w in (weights_sum / weights_n).tolist()]})
            weights_sum.zero_()
            weights_n = 0
        epoch += 1
    get_accelerator().synchronize()
    wall = time.perf_counter() - start
    bar.close()
    stats = {
        "train_examples": n,
        "steps": total,
        "epochs": round(seen / n, 3),
        "examples_seen": seen,
        "wall_time_s": round(wall, 2),
        "samples_per_s": round(seen / wall, 2),
        "world_size": world_size,
        "precision": str(dtype).removeprefix("torch."),
        "attention": student.config._attn_implementation,  # sdpa where the architecture has it (BERT), else eager
        "compiled": training.compile,
        "teacher_cache": cache_info | {"teacher_forward_examples_uncached": seen * len(teachers)},
        "loss_history": history,
    }
    if teachers:
        stats["teacher_weighting"] = {"scheme": weighting.scheme, "per_epoch": weight_history}
    return engine, stats


@torch.inference_mode()
def predict(model: nn.Module, ds, task: Task, batch_size: int, pad_id: int, desc: str) -> list[tuple[int, float, float]]:
    """(index, prediction, label) for every example; each rank scores its own slice, rank 0 gathers."""
    rank, world_size = world()
    dev = device()
    model.eval()
    collate = Collator(pad_id, task.is_regression)
    order = np.argsort(-np.asarray(ds["length"]), kind="stable")  # long first: fewer pad tokens
    mine = rank_shard(order, rank, world_size)
    rows = []
    for start in tqdm(range(0, len(mine), batch_size), desc=desc, disable=rank != 0, dynamic_ncols=True):
        batch = to_device(collate([ds[int(i)] for i in mine[start:start + batch_size]]), dev)
        logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits.float()
        pred = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
        rows += zip(batch["idx"].tolist(), pred.tolist(), batch["labels"].tolist())
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, rows)
        rows = [r for part in gathered for r in part]
    rows.sort()
    if len(rows) != len(ds) or len({r[0] for r in rows}) != len(ds):
        raise RuntimeError(f"evaluation covered {len(rows)} rows for {len(ds)} examples")
    return rows
