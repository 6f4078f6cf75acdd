"""The DeepSpeed plumbing every training stage shares: ranks, device, precision, the engine's config,
the optimizer and the learning-rate schedule.

Student distillation (:mod:`harness.distill`) and MT-BERT teacher co-finetuning (:mod:`harness.cofinetune`)
both build their engines from these, so the two train under the same settings.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from harness import precision
from harness.recipe_parts import DeepSpeedSettings, Training
from harness.schema import ConfigError

T = TypeVar("T")
LrScale = Callable[[str], float]  # student parameter name -> lr multiplier (0: frozen)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


# DeepSpeed is imported where it is used: data loading and `study plan` import this module for
# rank0_first and need none of it (it takes most of a second to import).
def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator
    acc = get_accelerator()
    if acc.device_name() == "cpu":
        return torch.device("cpu")
    return torch.device(acc.device_name(acc.current_device()))


def use_bf16(settings: DeepSpeedSettings) -> bool:
    """bf16 when the recipe says so, or says ``auto`` on hardware with native bf16 (:mod:`harness.precision`)."""
    return precision.effective(settings.precision) == "bf16"


def cpu_autocast(settings: DeepSpeedSettings) -> bool:
    """bf16 as DeepSpeed's ``torch_autocast`` over fp32 weights rather than its bf16 mode (on a CPU):
    :func:`precision.cpu_autocast`."""
    return precision.cpu_autocast(precision.effective(settings.precision))


def model_dtype(settings: DeepSpeedSettings) -> torch.dtype:
    """The precision a stage computes in: its teachers' weights and cached features are stored in it."""
    if use_bf16(settings):
        return torch.bfloat16
    return torch.float16 if settings.precision == "fp16" else torch.float32


def precision_stats(settings: DeepSpeedSettings) -> dict:
    """The record's ``precision`` and ``precision_mode`` for a stage under ``settings``."""
    mode = precision.AUTOCAST_WHY if cpu_autocast(settings) else "DeepSpeed"  # its fp32, bf16 or fp16 mode
    return {"precision": str(model_dtype(settings)).removeprefix("torch."), "precision_mode": mode}


def ds_config(training: Training, settings: DeepSpeedSettings, world_size: int) -> dict:
    per_step = world_size * settings.gradient_accumulation_steps
    if training.batch_size % per_step:
        raise ValueError(
            f"training.batch_size ({training.batch_size}) must be divisible by ranks x gradient_accumulation_steps ({per_step})"
        )
    autocast = cpu_autocast(settings)
    bf16 = use_bf16(settings) and not autocast  # CPU bf16: DeepSpeed's torch_autocast, not its bf16 mode
    cfg = {
        "train_batch_size": training.batch_size,
        "train_micro_batch_size_per_gpu": training.batch_size // per_step,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "gradient_clipping": settings.gradient_clipping,
        "zero_optimization": {"stage": settings.zero_stage},
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": settings.precision == "fp16"},
        # the forward under torch.autocast, weights, gradients and AdamW in fp32 (the loss terms that
        # autocast lists as fp32 ops, e.g. kl_div and mse_loss, run in fp32)
        "torch_autocast": {"enabled": autocast, "dtype": "bfloat16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
    }
    if settings.zero_stage == 3:
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return cfg


def optimizer(module: nn.Module, training: Training, lr_scale: LrScale | None) -> torch.optim.Optimizer:
    """AdamW with no decay on biases and LayerNorms (BERT's recipe), one group per lr multiplier
    (progressive transfer trains earlier blocks at a reduced rate).  A torch optimizer passed to
    DeepSpeed avoids JIT-compiling its FusedAdam op.  torch's fused kernel (CUDA and CPU): on 2 CPU cores
    its step over a 3-layer 384-wide BERT took 15 ms against 60-80 ms for the foreach one, a third of
    a quickstart step (the 11.7M-row embedding matrix dominates)."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in module.named_parameters():
        scale = lr_scale(name.removeprefix("student.")) if lr_scale and name.startswith("student.") else 1.0
        p.requires_grad_(scale > 0)
        if scale > 0:
            groups.setdefault((p.ndim < 2, scale), []).append(p)
    param_groups = [{"params": ps, "weight_decay": 0.0 if no_decay else training.weight_decay, "lr": training.lr * scale}
                    for (no_decay, scale), ps in groups.items()]
    return torch.optim.AdamW(param_groups, lr=training.lr, fused=True)


def warmup_linear(total: int, warmup_ratio: float):
    warm = max(1, int(total * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


# Training's collectives (gradients, gathered predictions) end a run that waits on them longer than
# this: a rank that died or hung.  Ranks that wait for rank 0 alone (it waits on another process's
# lock, or trains a teacher, builds a cache, writes the record) wait through _WAIT_GROUP instead,
# whose timeout is far longer: a lock can be held for hours, and DeepSpeed's default of 10 minutes
# used to end the other ranks while rank 0 waited for it.
COLLECTIVE_TIMEOUT_ENV = "KD_HARNESS_COLLECTIVE_TIMEOUT_S"
_WAIT_GROUP = None


def _collective_timeout_s() -> float:
    raw = os.environ.get(COLLECTIVE_TIMEOUT_ENV, "600")
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(f"{COLLECTIVE_TIMEOUT_ENV}={raw!r}: give the collectives' timeout in seconds (> 0)")
    return value


def init_distributed() -> None:
    """Join (or, for a plain ``python -m harness run``, create) the process group DeepSpeed uses."""
    if dist.is_initialized():
        return
    if "MASTER_PORT" not in os.environ:  # a lone process: any free port, so two runs can coexist
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for k, v in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(k, v)
    clear_stale_build_locks()
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    backend = "gloo" if get_accelerator().device_name() == "cpu" else get_accelerator().communication_backend_name()
    deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timedelta(seconds=_collective_timeout_s()))
    global _WAIT_GROUP
    if dist.get_world_size() > 1:
        _WAIT_GROUP = dist.new_group(backend="gloo", timeout=timedelta(days=30))


def clear_stale_build_locks(stale_s: float = 600.0) -> None:
    """On a CPU DeepSpeed compiles its shared-memory op at the first start (about 2 minutes), under
    torch's build lock.  A build interrupted then (Ctrl-C, a killed job) leaves the lock behind, and
    every later start waits on it forever without a word; a lock older than any build takes is
    removed, and the removal said."""
    from torch.utils.cpp_extension import get_default_build_root

    env = os.environ.get("TORCH_EXTENSIONS_DIR")  # torch's: builds go straight under it, else under <root>/py311_cpu
    locks = Path(env).glob("deepspeed_*/lock") if env else Path(get_default_build_root()).glob("*/deepspeed_*/lock")
    for lock in locks:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:  # the build just finished
            continue
        if age > stale_s:
            lock.unlink(missing_ok=True)
            print(f"note: removed {lock}, left {age / 60:.0f} min ago by an interrupted build of a DeepSpeed op "
                  "(it is built again now)", flush=True)


def barrier() -> None:
    """Every rank waits for the others, for as long as rank 0 takes alone (see _WAIT_GROUP)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier(group=_WAIT_GROUP)


def is_main() -> bool:
    return world()[0] == 0


def rank0_first(fn: Callable[[], T]) -> T:
    """``fn()`` on every rank, rank 0 first: it fills a cache (tokenized data) that the others then read."""
    out = None
    for turn in (0, 1):
        if is_main() == (turn == 0):
            out = fn()
        barrier()
    return out


def to_device(batch: dict, dev: torch.device) -> dict:
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}


def initialize(module: nn.Module, training: Training, settings: DeepSpeedSettings, total_steps: int,
               lr_scale: LrScale | None = None, monitor: dict | None = None):
    """The DeepSpeed engine for ``module``: AdamW (``optimizer``), linear warm-up and decay over
    ``total_steps``, batch and precision from the recipe; ``monitor``: the config's monitor sections
    (``csv_monitor``, ``tensorboard``, ``wandb``: :func:`harness.curves.monitor_config`)."""
    import deepspeed
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer(module, training, lr_scale),
        config=ds_config(training, settings, world()[1]) | (monitor or {}),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(total_steps, training.warmup_ratio)))
    return engine
