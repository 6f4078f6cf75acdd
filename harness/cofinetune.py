"""MT-BERT's teacher co-finetuning: several teachers fine-tuned jointly on a task, sharing one pooling
and prediction layer, so their outputs live in one space before they teach together.

Wu et al. (2021), "One Teacher is Enough? Pre-trained Language Model Distillation from Multiple
Teachers", sec. 3.1: L = sum_i CE(y, softmax(W tanh(P h_i[CLS]))) with P (pooling) and W (prediction)
shared by all teachers i.  Here the sharing is literal: every teacher's own classification head points
at the same two ``nn.Linear`` modules, each model keeps its own forward (its dropout, its first-token
pooling), and after training each teacher is an ordinary Hugging Face classifier whose head holds the
shared weights.  Each teacher reads the text through its own tokenizer; all see the same batches.

Copies of one card (several teachers of one structure) start from the same pretrained weights and the
same shared head and see the same batches, so only their dropout can set them apart: given per-teacher
seeds, each teacher draws its dropout from a stream of its own (:func:`_own_dropout`).
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from harness.data import Collator, length_grouped_batches, rank_shard
from harness.models import HEADS
from harness.engine import MODEL_INPUTS, device, initialize, precision_stats, to_device, world
from harness.recipe_parts import DeepSpeedSettings, Training
from harness.resume import StageCheckpoint, set_rng_state



def _swap(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


@contextlib.contextmanager
def _own_dropout(seed: int | None, step: int):
    """Run one teacher's forward on a dropout stream of its own, drawn from (seed, step, rank) alone:
    copies of one card then train apart, and a resumed run redraws exactly what it would have drawn
    (the stream needs no saved state).  The global stream is put back afterwards, so the data order
    and the other teachers are untouched.  ``seed`` None: the forward draws from the global stream."""
    if seed is None:
        yield
        return
    cuda = torch.cuda.is_available()
    draw = int(np.random.SeedSequence([seed, step, world()[0]]).generate_state(1)[0])
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        torch.default_generator.manual_seed(draw)
        if cuda:
            torch.cuda.manual_seed(draw)  # the current device's generator, which its dropout reads
        yield


class Joint(nn.Module):
    """The teachers with their heads tied to one shared pooling dense and one prediction layer."""

    def __init__(self, models: list[nn.Module], seeds: list[int] | None = None):
        super().__init__()
        self.seeds = seeds or [None] * len(models)  # per-teacher dropout seeds (None: the shared stream)
        first = models[0]
        pool, pred = (first.get_submodule(p) for p in HEADS[first.config.model_type])
        self.pool = nn.Linear(pool.in_features, pool.out_features)
        self.pred = nn.Linear(pred.in_features, pred.out_features)
        self.pool.load_state_dict(pool.state_dict())  # start from the first teacher's (new) head
        self.pred.load_state_dict(pred.state_dict())
        for m in models:
            pool_name, pred_name = HEADS[m.config.model_type]
            _swap(m, pool_name, self.pool)
            _swap(m, pred_name, self.pred)
        self.models = nn.ModuleList(models)

    def forward(self, inputs: list[dict], labels: torch.Tensor, regression: bool, step: int = 0) -> torch.Tensor:
        loss = 0.0
        for m, x, seed in zip(self.models, inputs, self.seeds):
            with _own_dropout(seed, step):
                logits = m(**x).logits.float()  # [B, C]
            loss = loss + (F.mse_loss(logits.squeeze(-1), labels.float()) if regression else F.cross_entropy(logits, labels))
        return loss


def cofinetune(models: list[nn.Module], datasets: list, pad_ids: list[int], regression: bool, training: Training,
               seed: int, desc: str, checkpoint: StageCheckpoint | None = None,
               teacher_seeds: list[int] | None = None) -> tuple[list[nn.Module], dict]:
    """Fine-tune ``models`` jointly on row-aligned tokenizations ``datasets`` of one training set;
    returns the trained models (heads holding the shared weights) and training stats.  With
    ``checkpoint`` it saves as it goes and resumes an interrupted run (:mod:`harness.resume`).
    ``teacher_seeds`` gives each model a dropout stream of its own (else all draw from one)."""
    torch.manual_seed(seed)
    joint = Joint(models, teacher_seeds)
    settings = DeepSpeedSettings()
    n = len(datasets[0])
    total = training.max_steps or max(1, math.ceil(training.epochs * math.ceil(n / training.batch_size)))
    engine = initialize(joint, training, settings, total)
    loop = _JointLoop(engine, datasets, [Collator(p, regression) for p in pad_ids], regression, training, seed)
    loop.run(total, desc, checkpoint)
    trained = list(engine.module.models)
    for m in trained:  # evaluated in fp32: under DeepSpeed bf16 the shared head ends in another dtype
        m.float().eval()
    stats = {"train_examples": n, "steps": total, "epochs": round(loop.seen / n, 3), "examples_seen": loop.seen,
             "wall_time_s": round(loop.wall, 2), "samples_per_s": round(loop.seen / loop.wall, 2),
             "world_size": world()[1], **precision_stats(settings), "cofinetuned": len(models),
             "loss_history": loop.history}
    return trained, stats


class _JointLoop:
    """The joint loop: every teacher sees the same length-grouped batches in its own tokenization."""

    _STATE = ("step", "seen", "epoch", "epoch_start", "history", "wall")

    def __init__(self, engine, datasets: list, collates: list, regression: bool, training: Training, seed: int):
        self.engine, self.datasets, self.collates, self.regression = engine, datasets, collates, regression
        self.training, self.seed = training, seed
        self.step = self.seen = self.epoch = self.epoch_start = 0
        self.history, self.wall = [], 0.0
        self.loss_sum = torch.zeros((), device=device())

    def run(self, total: int, desc: str, ckpt: StageCheckpoint | None) -> None:
        rank, world_size = world()
        skip = self._restore(ckpt, total, desc) if ckpt is not None else 0
        lengths, dev = np.asarray(self.datasets[0]["length"]), device()
        self.engine.train()
        bar = tqdm(total=total, initial=self.step, desc=desc, disable=rank != 0, unit="step", dynamic_ncols=True)
        start = time.perf_counter() - self.wall
        while self.step < total:
            gbatches = length_grouped_batches(lengths, self.training.batch_size, self.seed, self.epoch)
            for gbatch in gbatches[:total - self.epoch_start][skip:]:
                rows = rank_shard(gbatch, rank, world_size)
                batches = [to_device(c([ds[int(i)] for i in rows]), dev) for c, ds in zip(self.collates, self.datasets)]
                loss = self.engine([{k: b[k] for k in MODEL_INPUTS if k in b} for b in batches], batches[0]["labels"],
                                   self.regression, self.step)
                self.engine.backward(loss)
                self.engine.step()
                self.loss_sum += loss.detach().float()
                self.seen += len(gbatch)
                self.step += 1
                bar.update(1)
                self._log(bar, total)
                if ckpt is not None and self.step % ckpt.every == 0 and self.step < total:
                    self._save(ckpt, start)
            skip = 0
            self.epoch += 1
            self.epoch_start = self.step
            if ckpt is not None and self.step < total:
                self._save(ckpt, start)
        bar.close()
        self.wall = time.perf_counter() - start

    def _log(self, bar, total: int) -> None:
        every = self.training.log_every
        if self.step % every == 0 or self.step == total:
            k = every if self.step % every == 0 else self.step % every
            self.history.append({"step": self.step, "loss": (self.loss_sum / k).item()})
            bar.set_postfix(loss=f"{self.history[-1]['loss']:.4f}")
            self.loss_sum.zero_()

    def _save(self, ckpt: StageCheckpoint, start: float) -> None:
        self.wall = time.perf_counter() - start
        state = {k: getattr(self, k) for k in self._STATE} | {"loss_sum": self.loss_sum.clone()}
        ckpt.save(self.engine, f"step{self.step}", state, done=False)

    def _restore(self, ckpt: StageCheckpoint, total: int, desc: str) -> int:
        latest = ckpt.latest()
        if latest is None:
            return 0
        state, rng = ckpt.load(self.engine, latest["tag"], weights_only=False)
        for k in self._STATE:
            setattr(self, k, state[k])
        self.loss_sum.copy_(state["loss_sum"])
        set_rng_state(rng)  # no loader draws from it here: set at once
        if world()[0] == 0:
            print(f"[{desc}] resuming from step {self.step} of {total} ({ckpt.folder})", flush=True)
        return self.step - self.epoch_start
