"""One training stage through DeepSpeed: forward teachers, forward student, weighted terms, step.

Teacher fine-tuning is the same stage with no teachers and the ``ce`` term.  Read it top to bottom:
``train_stage`` builds the engine and the teacher feed (:mod:`harness.teacher_feed`: cached or live
outputs), ``StageLoop`` runs the optimisation over length-grouped batches and says what it did.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable

import numpy as np
import torch
from deepspeed.accelerator import get_accelerator
from torch import nn
from tqdm.auto import tqdm

from harness import curves
from harness.data import Collator, length_grouped_batches, loader, rank_shard
from harness.engine import (MODEL_INPUTS, LrScale, device, initialize, model_dtype,
                            precision_stats, to_device, world)
from harness.features import Need, forward_features, mixed_forward
from harness.losses import Batch, Term
from harness.recipe_parts import DeepSpeedSettings, Training
from harness.resume import StageCheckpoint, set_rng_state
from harness.teacher_feed import Teacher, TeacherFeed
from harness.weighting import WeightingSpec, teacher_weights

__all__ = ["Objective", "StageLoop", "Teacher", "train_stage"]

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


def train_stage(student: nn.Module, teachers: list[Teacher], terms: list[tuple[Term, float]],
                train_ds, regression: bool, training: Training, settings: DeepSpeedSettings,
                pad_id: int, seed: int, desc: str, mask_tokens: Callable | None = None,
                lr_scale: LrScale | None = None, cache_teachers: bool = True,
                weighting: WeightingSpec = WeightingSpec(),
                teacher_needs: list[Need] | None = None,
                checkpoint: StageCheckpoint | None = None, stream_start: int = 0) -> tuple[nn.Module, dict]:
    """Train ``student`` on ``train_ds`` with the weighted ``terms``; returns (engine, stats).

    ``mask_tokens(input_ids) -> (input_ids, mlm_labels)`` turns a step into masked-LM data (a corpus
    phase); ``lr_scale`` gives per-parameter learning-rate multipliers, 0 freezing a parameter;
    ``cache_teachers`` reads teacher outputs from the on-disk cache (see :mod:`harness.teacher_cache`);
    ``weighting`` turns the teachers' static weights into per-example ones (see :mod:`harness.weighting`);
    ``teacher_needs`` widens what each teacher exposes (and caches), so that the stages of a progressive
    phase, each reading one block, share one cache; ``checkpoint`` saves the stage as it goes and
    resumes it from there (:mod:`harness.resume`); ``stream_start`` global batches of the seed's batch
    stream were taken by earlier stages (the lower blocks of a progressive phase), and this one goes on
    from there rather than starting epoch 0 again.
    """
    dev = device()
    torch.manual_seed(seed)
    module = Objective(student, terms, regression, weighting)
    if not any(term.needs_teacher for term, _ in terms):
        teachers = []  # e.g. the no-KD baseline or a fine-tuning phase: no teacher forward at all
    per_epoch = math.ceil(len(train_ds) / training.batch_size)
    total = training.max_steps or max(1, math.ceil(training.epochs * per_epoch))
    engine = initialize(module, training, settings, total, lr_scale, _monitor(settings, checkpoint, desc, seed))
    if training.compile:  # torch.compile of the student (its term modules run eagerly around it)
        engine.module.student.compile()
    dtype = model_dtype(settings)
    for t in teachers:
        t.model.to(dev, dtype=dtype).eval().requires_grad_(False)
    collate = Collator(pad_id, regression)
    feed = TeacherFeed(teachers, list(module.terms), train_ds, collate, teacher_needs, desc)
    off = ("off: disabled (--no-teacher-cache)" if not cache_teachers else
           "off: masked-LM inputs change every step" if mask_tokens is not None else None)
    feed.use_cache(list(module.terms), off, training.eval_batch_size, dtype, dev, world()[0] == 0)
    loop = StageLoop(engine, feed, train_ds, collate, training, settings, seed, mask_tokens, (stream_start, per_epoch))
    loop.run(total, desc, checkpoint)
    stats = loop.stats(student, weighting)
    return engine, stats


def _monitor(settings: DeepSpeedSettings, checkpoint: StageCheckpoint | None, desc: str, seed: int) -> dict:
    """The stage's DeepSpeed monitor sections (:mod:`harness.curves`): CSV files beside its checkpoints,
    where a resumed stage goes on appending; a stage without checkpoints gets no CSV files."""
    csv_folder = None
    if checkpoint is not None:
        csv_folder = curves.stage_folder(checkpoint.folder)
        if checkpoint.latest() is None and world()[0] == 0:
            curves.fresh_start(checkpoint.folder)
    # a TensorBoard run per stage: the run's checkpoint folder names its recipe hash and seed
    job = f"{desc} " + (f"{checkpoint.folder.parent.name} {checkpoint.folder.name}" if checkpoint is not None
                       else f"seed{seed}")
    return curves.monitor_config(settings.monitor, csv_folder, job)


class StageLoop:
    """The optimisation loop of one stage: length-grouped global batches, split over ranks and into
    gradient-accumulation micro-batches; losses summed on the device and read back only when logging."""

    def __init__(self, engine, feed: TeacherFeed, train_ds, collate: Collator, training: Training,
                 settings: DeepSpeedSettings, seed: int, mask_tokens: Callable | None,
                 stream: tuple[int, int] = (0, 1)):
        self.engine, self.feed, self.ds, self.collate = engine, feed, train_ds, collate
        self.training, self.seed, self.mask_tokens, self.settings = training, seed, mask_tokens, settings
        self.ga, self.dtype = settings.gradient_accumulation_steps, model_dtype(settings)
        self.dev = device()
        n_teachers = len(feed.teachers)
        t_weights = torch.tensor([t.weight for t in feed.teachers] or [1.0], device=self.dev)
        self.t_weights = t_weights / t_weights.sum()
        self.loss_sum = torch.zeros((), device=self.dev)
        self.parts_sum = torch.zeros(len(engine.module.terms), device=self.dev)
        self.weights_sum, self.weights_n = torch.zeros(max(1, n_teachers), device=self.dev), 0
        self.history, self.weight_history = [], []
        self.term_names = curves.term_names(engine.module.terms)
        self.mark = (time.perf_counter(), 0)  # (time, examples seen) at the last log: examples/s between logs
        self.step, self.seen, self.epoch, self.total, self.wall = 0, 0, 0, 0, 0.0
        self.epoch_start, self.finished = 0, False  # the step the current epoch began at; resumed finished
        # a stage that continues the batch stream (start, per epoch) begins inside an epoch, which thus
        # began before its step 0
        self.epoch, self.epoch_start = stream[0] // stream[1], -(stream[0] % stream[1])

    def run(self, total: int, desc: str, ckpt: StageCheckpoint | None = None) -> None:
        """Train to ``total`` optimiser steps; with ``ckpt``, first resume from its latest checkpoint
        (a finished stage just gets its final weights back) and save as it goes."""
        self.total = total
        self.engine.train()
        skip, rng = self.restore(ckpt, desc) if ckpt is not None else (self.step - self.epoch_start, None)
        if self.finished or (rng is not None and not skip):
            set_rng_state(rng)  # at an epoch boundary: the next epoch's loader draws from it as it did
        if self.finished:
            return
        rank, world_size = world()
        lengths = np.asarray(self.ds["length"])
        workers = self.training.loader_workers if self.training.loader_workers is not None else \
            (0 if self.dev.type == "cpu" else min(4, max(1, (os.cpu_count() or 2) // 2)))
        bar = tqdm(total=total, initial=self.step, desc=desc, disable=rank != 0, unit="step", dynamic_ncols=True)
        start = time.perf_counter() - self.wall  # a resumed stage's wall time includes its earlier part
        self.mark = (time.perf_counter(), self.seen)
        while self.step < total:
            gbatches = length_grouped_batches(lengths, self.training.batch_size, self.seed, self.epoch)
            gbatches = gbatches[:total - self.epoch_start][skip:]  # a resumed (or continued) epoch skips what was done
            micro = [m for g in gbatches for m in np.array_split(rank_shard(g, rank, world_size), self.ga)]
            batches = iter(loader(micro, self.ds, self.collate, self.feed.own_data, workers, pin=self.dev.type == "cuda"))
            if rng is not None and skip:
                # mid-epoch: the RNG was saved after this epoch's loader had drawn its seed from it, so
                # it is set after the loader is made again (which draws once more)
                set_rng_state(rng)
            rng, skip = None, 0
            for gbatch in gbatches:
                for _ in range(self.ga):
                    self.micro_step(*next(batches))
                self.seen += len(gbatch)
                self.step += 1
                bar.update(1)
                if self.step % self.training.log_every == 0 or self.step == total:
                    bar.set_postfix(loss=f"{self.log():.4f}")
                if ckpt is not None and self.step % ckpt.every == 0 and self.step < total:
                    self.save(ckpt, start, desc)
            self.end_epoch()
            if ckpt is not None and self.step < total:
                self.save(ckpt, start, desc)
        get_accelerator().synchronize()
        self.wall = time.perf_counter() - start
        bar.close()
        if ckpt is not None:
            self.save(ckpt, start, desc, done=True)

    _POSITION = ("step", "seen", "epoch", "epoch_start", "history", "weight_history", "weights_n")
    _SUMS = ("loss_sum", "parts_sum", "weights_sum")

    def save(self, ckpt: StageCheckpoint, start: float, desc: str, done: bool = False) -> None:
        if not done:
            self.wall = time.perf_counter() - start
        state = {k: getattr(self, k) for k in self._POSITION} | {k: getattr(self, k).clone() for k in self._SUMS}
        ckpt.save(self.engine, "final" if done else f"step{self.step}", state | {"wall": self.wall}, done)
        if world()[0] == 0 and not done:
            print(f"[{desc}] checkpoint at step {self.step} of {self.total} ({ckpt.folder})", flush=True)

    def restore(self, ckpt: StageCheckpoint, desc: str) -> tuple[int, dict | None]:
        """Resume from ``ckpt``'s latest checkpoint; returns the global batches of the current epoch
        already done (to skip) and the RNG states to set."""
        latest = ckpt.latest()
        if latest is None:
            return self.step - self.epoch_start, None
        state, rng = ckpt.load(self.engine, latest["tag"], weights_only=latest["done"])
        for k in self._POSITION:
            setattr(self, k, state[k])
        for k in self._SUMS:
            getattr(self, k).copy_(state[k])
        self.wall, self.finished = state["wall"], latest["done"]
        if world()[0] == 0:
            print(f"[{desc}] " + ("trained before it was interrupted: its final weights restored" if self.finished
                                  else f"resuming from step {self.step} of {self.total}") + f" ({ckpt.folder})",
                  flush=True)
        return self.step - self.epoch_start, rng

    def micro_step(self, micro, batch: dict, own: list) -> None:
        if self.mask_tokens is not None:  # the teacher sees the same masked text as the student
            batch["input_ids"], batch["labels"] = self.mask_tokens(batch["input_ids"])
        batch = to_device(batch, self.dev)
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        t_inputs = self.feed.inputs(inputs, own, self.dev)
        t_feats = self.feed.features(micro, t_inputs, self.dtype)
        loss, parts, mean_w = self.engine(inputs, batch.get("labels"), t_feats, self.t_weights,
                                          self.feed.mixed(t_inputs))
        self.engine.backward(loss)
        self.engine.step()
        self.loss_sum += loss.detach().float()
        self.parts_sum += parts.float()
        self.weights_sum += mean_w
        self.weights_n += 1

    def log(self) -> float:
        """The mean loss (and per-term losses) since the last log: the only host sync in the loop."""
        every = self.training.log_every
        k = every if self.step % every == 0 else self.step % every
        avg = (self.loss_sum / (k * self.ga)).item()
        terms = (self.parts_sum / (k * self.ga)).tolist()
        self.history.append({"step": self.step, "loss": avg, "terms": terms})
        now = time.perf_counter()  # after the sync above: the device has done these steps
        rate = (self.seen - self.mark[1]) / max(now - self.mark[0], 1e-9)
        self.mark = (now, self.seen)
        self.engine.monitor.write_events(curves.loss_events(self.engine.global_samples, avg, terms, self.term_names, rate))
        self.loss_sum.zero_()
        self.parts_sum.zero_()
        return avg

    def end_epoch(self) -> None:
        if self.feed.teachers:  # the teacher weights actually used, averaged over the epoch's micro-batches
            mean = (self.weights_sum / self.weights_n).tolist()
            self.weight_history.append({"epoch": self.epoch + 1, "mean": [round(w, 4) for w in mean]})
            self.engine.monitor.write_events(curves.weight_events(self.engine.global_samples, mean))
            self.weights_sum.zero_()
            self.weights_n = 0
        self.epoch += 1
        self.epoch_start = self.step  # so that a checkpoint taken now resumes at the next epoch

    def stats(self, student: nn.Module, weighting: WeightingSpec) -> dict:
        """What the record's ``train`` section holds for this stage."""
        n, teachers = len(self.ds), self.feed.teachers
        stats = {
            "train_examples": n,
            "steps": self.total,
            "epochs": round(self.seen / n, 3),
            "examples_seen": self.seen,
            "wall_time_s": round(self.wall, 2),
            "samples_per_s": round(self.seen / self.wall, 2),
            "world_size": world()[1],
            **precision_stats(self.settings),
            "attention": student.config._attn_implementation,  # sdpa where the architecture has it (BERT), else eager
            "compiled": self.training.compile,
            "teacher_cache": self.feed.info | {"teacher_forward_examples_uncached": self.seen * len(teachers)},
            "loss_history": self.history,
        }
        if teachers:
            stats["teacher_weighting"] = {"scheme": weighting.scheme, "per_epoch": self.weight_history}
        return stats
