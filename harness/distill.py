"""One training stage through DeepSpeed: forward teachers, forward student, weighted terms, step.

Teacher fine-tuning is the same stage with no teachers and the ``ce`` term.  Read it top to bottom:
``train_stage`` builds the engine and the teacher feed (:mod:`harness.teacher_feed`: cached or live
outputs), ``StageLoop`` (:mod:`harness.stage_loop`) runs the optimisation over length-grouped batches
and says what it did.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from harness import curves
from harness.data import Collator
from harness.engine import LrScale, device, initialize, model_dtype, world
from harness.features import Need, forward_features, mixed_forward
from harness.losses import Batch, Term
from harness.recipe_parts import DeepSpeedSettings, Training
from harness.resume import StageCheckpoint
from harness.stage_loop import StageLoop
from harness.teacher_feed import Teacher, TeacherFeed
from harness.weighting import WeightingSpec, teacher_weights

__all__ = ["Objective", "Teacher", "train_stage"]

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
