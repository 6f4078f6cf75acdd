"""Scoring a model on a task's dev splits: every example seen by exactly one rank, predictions gathered
on rank 0, the official metrics computed from them."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from harness.data import Collator, rank_shard
from harness.engine import MODEL_INPUTS, device, to_device, world
from harness.metrics import compute_metrics
from harness.recipe_parts import Training
from harness.tasks import Task


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


def evaluate(model: nn.Module, tok, devs: dict, task: Task, training: Training, label: str):
    """({split: prediction rows}, {split: metrics}) over the task's dev splits."""
    preds, dev_metrics = {}, {}
    for split, ds in devs.items():
        rows = predict(model, ds, task, training.eval_batch_size, tok.pad_token_id, desc=f"eval {label} {split}")
        preds[split] = rows
        dev_metrics[split] = compute_metrics(task, [r[1] for r in rows], [r[2] for r in rows])
    return preds, dev_metrics
