"""MT-BERT's teacher co-finetuning: several teachers fine-tuned jointly on a task, sharing one pooling
and prediction layer, so their outputs live in one space before they teach together.

Wu et al. (2021), "One Teacher is Enough? Pre-trained Language Model Distillation from Multiple
Teachers", sec. 3.1: L = sum_i CE(y, softmax(W tanh(P h_i[CLS]))) with P (pooling) and W (prediction)
shared by all teachers i.  Here the sharing is literal: every teacher's own classification head points
at the same two ``nn.Linear`` modules, each model keeps its own forward (its dropout, its first-token
pooling), and after training each teacher is an ordinary Hugging Face classifier whose head holds the
shared weights.  Each teacher reads the text through its own tokenizer; all see the same batches.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from harness.data import Collator, length_grouped_batches, rank_shard
from harness.models import HEADS
from harness.engine import MODEL_INPUTS, device, initialize, model_dtype, to_device, world
from harness.recipe_parts import DeepSpeedSettings, Training



def _swap(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


class Joint(nn.Module):
    """The teachers with their heads tied to one shared pooling dense and one prediction layer."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
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

    def forward(self, inputs: list[dict], labels: torch.Tensor, regression: bool) -> torch.Tensor:
        loss = 0.0
        for m, x in zip(self.models, inputs):
            logits = m(**x).logits.float()  # [B, C]
            loss = loss + (F.mse_loss(logits.squeeze(-1), labels.float()) if regression else F.cross_entropy(logits, labels))
        return loss


def cofinetune(models: list[nn.Module], datasets: list, pad_ids: list[int], regression: bool, training: Training,
               seed: int, desc: str) -> tuple[list[nn.Module], dict]:
    """Fine-tune ``models`` jointly on row-aligned tokenizations ``datasets`` of one training set;
    returns the trained models (heads holding the shared weights) and training stats."""
    rank, world_size = world()
    torch.manual_seed(seed)
    joint = Joint(models)
    settings = DeepSpeedSettings()
    n = len(datasets[0])
    total = training.max_steps or max(1, math.ceil(training.epochs * math.ceil(n / training.batch_size)))
    engine = initialize(joint, training, settings, total)
    collates = [Collator(p, regression) for p in pad_ids]
    lengths = np.asarray(datasets[0]["length"])
    dev = device()
    engine.train()
    step, seen, epoch, history = 0, 0, 0, []
    loss_sum = torch.zeros((), device=dev)
    bar = tqdm(total=total, desc=desc, disable=rank != 0, unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    while step < total:
        for gbatch in length_grouped_batches(lengths, training.batch_size, seed, epoch):
            if step >= total:
                break
            rows = rank_shard(gbatch, rank, world_size)
            batches = [to_device(c([ds[int(i)] for i in rows]), dev) for c, ds in zip(collates, datasets)]
            inputs = [{k: b[k] for k in MODEL_INPUTS if k in b} for b in batches]
            loss = engine(inputs, batches[0]["labels"], regression)
            engine.backward(loss)
            engine.step()
            loss_sum += loss.detach().float()
            seen += len(gbatch)
            step += 1
            bar.update(1)
            if step % training.log_every == 0 or step == total:
                k = training.log_every if step % training.log_every == 0 else step % training.log_every
                history.append({"step": step, "loss": (loss_sum / k).item()})
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
                loss_sum.zero_()
        epoch += 1
    bar.close()
    wall = time.perf_counter() - start
    trained = list(engine.module.models)
    for m in trained:  # evaluated in fp32: under DeepSpeed bf16 the shared head ends in another dtype
        m.float().eval()
    stats = {"train_examples": n, "steps": total, "epochs": round(seen / n, 3), "examples_seen": seen,
             "wall_time_s": round(wall, 2), "samples_per_s": round(seen / wall, 2), "world_size": world_size,
             "precision": str(model_dtype(settings)).removeprefix("torch."), "cofinetuned": len(models),
             "loss_history": history}
    return trained, stats
