"""One training stage through DeepSpeed: forward teachers, forward student, weighted terms, step.

Teacher fine-tuning is the same stage with no teachers and the ``ce`` term.  Read it top to bottom:
``train_stage`` builds the engine, loops over length-grouped batches and returns the trained student;
``predict`` scores a dev split with every example seen by exactly one rank.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch import nn
from tqdm.auto import tqdm

from harness.data import Collator, length_grouped_batches, rank_shard
from harness.losses import Batch, Term
from harness.recipe import DeepSpeedSettings, Training
from harness.tasks import Task

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def device() -> torch.device:
    acc = get_accelerator()
    if acc.device_name() == "cpu":
        return torch.device("cpu")
    return torch.device(acc.device_name(acc.current_device()))


def use_bf16(settings: DeepSpeedSettings) -> bool:
    if settings.precision == "auto":
        return device().type != "cpu" and get_accelerator().is_bf16_supported()
    return settings.precision == "bf16"


def model_dtype(settings: DeepSpeedSettings) -> torch.dtype:
    if use_bf16(settings):
        return torch.bfloat16
    return torch.float16 if settings.precision == "fp16" else torch.float32


@dataclass
class Teacher:
    model: nn.Module  # frozen, eval mode
    weight: float


class Objective(nn.Module):
    """The module DeepSpeed trains: the student plus any trainable parts of the terms."""

    def __init__(self, student: nn.Module, terms: list[tuple[Term, float]], regression: bool):
        super().__init__()
        self.student = student
        self.terms = nn.ModuleList(t for t, _ in terms)
        self.weights = [w for _, w in terms]
        self.regression = regression

    def forward(self, inputs, labels, teacher_logits, teacher_weights):
        logits = self.student(**inputs).logits  # [B, C]
        batch = Batch(logits, teacher_logits, teacher_weights, labels, self.regression)
        parts = torch.stack([term(batch) for term in self.terms])  # [n_terms]
        return (parts * parts.new_tensor(self.weights)).sum(), parts.detach()


def ds_config(training: Training, settings: DeepSpeedSettings, world_size: int) -> dict:
    per_step = world_size * settings.gradient_accumulation_steps
    if training.batch_size % per_step:
        raise ValueError(
            f"training.batch_size ({training.batch_size}) must be divisible by ranks x gradient_accumulation_steps ({per_step})"
        )
    bf16 = use_bf16(settings)
    cfg = {
        "train_batch_size": training.batch_size,
        "train_micro_batch_size_per_gpu": training.batch_size // per_step,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "gradient_clipping": settings.gradient_clipping,
        "zero_optimization": {"stage": settings.zero_stage},
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": settings.precision == "fp16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
    }
    if settings.zero_stage == 3:
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return cfg


def _optimizer(module: nn.Module, training: Training) -> torch.optim.Optimizer:
    """AdamW with no decay on biases and LayerNorms (BERT's recipe).  A torch optimizer passed to
    DeepSpeed avoids JIT-compiling its FusedAdam op; on CUDA torch's own fused kernel is used."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": training.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    cuda = device().type == "cuda"
    return torch.optim.AdamW(groups, lr=training.lr, fused=cuda, foreach=not cuda)


def _warmup_linear(total: int, warmup_ratio: float):
    warm = max(1, int(total * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def _to(batch: dict, dev: torch.device) -> dict:
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}


def train_stage(student: nn.Module, teachers: list[Teacher], terms: list[tuple[Term, float]],
                train_ds, task: Task, training: Training, settings: DeepSpeedSettings,
                pad_id: int, seed: int, desc: str) -> tuple[nn.Module, dict]:
    rank, world_size = world()
    dev = device()
    torch.manual_seed(seed)
    module = Objective(student, terms, task.is_regression)
    n = len(train_ds)
    per_epoch = math.ceil(n / training.batch_size)
    total = training.max_steps or max(1, math.ceil(training.epochs * per_epoch))
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=_optimizer(module, training), config=ds_config(training, settings, world_size),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, _warmup_linear(total, training.warmup_ratio)),
    )
    dtype = model_dtype(settings)
    for t in teachers:
        t.model.to(dev, dtype=dtype).eval().requires_grad_(False)
    t_weights = torch.tensor([t.weight for t in teachers] or [1.0], device=dev)
    t_weights = t_weights / t_weights.sum()

    collate = Collator(pad_id, task.is_regression)
    lengths = np.asarray(train_ds["length"])
    ga = settings.gradient_accumulation_steps
    engine.train()
    step, seen, epoch = 0, 0, 0
    loss_sum = torch.zeros((), device=dev)
    parts_sum = torch.zeros(len(terms), device=dev)
    history = []
    bar = tqdm(total=total, desc=desc, disable=rank != 0, unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    while step < total:
        for gbatch in length_grouped_batches(lengths, training.batch_size, seed, epoch):
            if step >= total:
                break
            mine = rank_shard(gbatch, rank, world_size)
            for micro in np.array_split(mine, ga):
                batch = _to(collate([train_ds[int(i)] for i in micro]), dev)
                inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
                with torch.no_grad():  # teachers are frozen: no graph, no gradient
                    t_logits = [t.model(**inputs).logits for t in teachers]
                loss, parts = engine(inputs, batch["labels"], t_logits, t_weights)
                engine.backward(loss)
                engine.step()
                loss_sum += loss.detach().float()
                parts_sum += parts.float()
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
        "loss_history": history,
    }
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
        batch = _to(collate([ds[int(i)] for i in mine[start:start + batch_size]]), dev)
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
