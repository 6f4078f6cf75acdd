"""The optimisation loop of one training stage (:func:`harness.distill.train_stage` builds what it runs):
length-grouped global batches along a (seed, epoch) stream, split over ranks and into
gradient-accumulation micro-batches, checkpoints to resume from, and the stats the record keeps."""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from harness import curves
from harness.data import Collator, length_grouped_batches, loader, rank_shard
from harness.engine import MODEL_INPUTS, device, model_dtype, precision_stats, to_device, world
from harness.recipe_parts import DeepSpeedSettings, Training
from harness.resume import StageCheckpoint, set_rng_state
from harness.teacher_feed import TeacherFeed
from harness.weighting import WeightingSpec


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
        from deepspeed.accelerator import get_accelerator  # here: `study plan` imports this module, trains nothing
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
