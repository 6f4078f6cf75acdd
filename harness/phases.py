"""A student's training phases, run in order on one student.

``train_phases`` runs a recipe's phases: task phases with the fine-tuned teachers, corpus (general)
phases with the pretrained ones, progressive phases once per block.  Every rank runs this same code.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
from transformers import DataCollatorForLanguageModeling

from harness.checks import build_terms
from harness.corpus_teachers import general_teachers
from harness.data import corpus_dataset, tokenize_task
from harness.distill import Teacher, train_stage
from harness.engine import device
from harness.evaluate import evaluate
from harness.features import Need
from harness.general_cache import GeneralEntry
from harness.losses import TERMS, Shape
from harness.models import encoder_layers, tokenizer_id
from harness.options import Options
from harness.recipe_parts import ConfigStudent, DeepSpeedSettings, Phase, Progressive, Training
from harness.resolved import RunPlan
from harness.resume import Checkpoints
from harness.tasks import Task
from harness.weighting import WeightingSpec


def train_and_evaluate(model, tok, teachers: list[Teacher], terms, task: Task, training: Training,
                       settings: DeepSpeedSettings, seed: int, label: str, glue_dir: Path | None,
                       checkpoints: Checkpoints | None = None):
    """One task phase then dev evaluation (teacher fine-tuning uses this)."""
    train_ds, devs = tokenize_task(task, tok, training, glue_dir)
    engine, stats = train_stage(model, teachers, terms, train_ds, task.is_regression, training, settings,
                                tok.pad_token_id, seed, desc=f"train {label} on {task.display}",
                                checkpoint=checkpoints.stage(0) if checkpoints else None)
    student = engine.module.student
    preds, dev_metrics = evaluate(student, tok, devs, task, training, label)
    if settings.zero_stage == 3:
        student = gather_zero3(student)
    return student, stats, preds, dev_metrics


def shape_of(model) -> Shape:
    return Shape(len(encoder_layers(model)), model.config.hidden_size, model.config.num_attention_heads)


def progressive_scale(block: int, spec: Progressive, random_embeddings: bool = False):
    """lr multipliers while block ``block`` is trained: 1 for it, 0 (frozen) or spec.lr_scale for what is
    below it (embeddings, shared position bias, lower blocks), 0 for the blocks above and the head.

    MobileBERT (Sun et al. 2020, "Training Strategies") copies the teacher's embeddings into the student
    before the first block, so they count as "below" it.  A student built from a config
    (``random_embeddings``, e.g. a MobileBERT one, whose factorised embeddings no standard teacher's could
    fill) has nothing to copy: its embeddings train with block 0 (lr 1), then count as below the later
    blocks."""
    lower = 0.0 if spec.lower == "freeze" else spec.lr_scale

    def scale(name: str) -> float:
        m = re.search(r"encoder\.layer\.(\d+)\.", name)
        if m:
            b = int(m.group(1))
            return 1.0 if b == block else lower if b < block else 0.0
        if ".embeddings." in name and random_embeddings and block == 0:
            return 1.0
        return lower if ".embeddings." in name or "encoder." in name else 0.0
    return scale


def train_phases(plan: RunPlan, model, tok, finetuned: list[Teacher], seed: int, label: str, opts: Options,
                 checkpoints: Checkpoints | None = None):
    """Run the plan's phases in order on one student; returns (student, per-stage stats).  Each stage
    (a phase, or a block of a progressive one) saves to and resumes from ``checkpoints``.  Leading
    general phases that read nothing of the task are trained once per seed and then read from the
    cache by every task (:mod:`harness.general_cache`)."""
    phases = plan.recipe.named_phases()

    def run(m, part: list[tuple[str, Phase]], start: int):
        return _run_phases(plan, part, m, tok, finetuned, seed, label, opts, checkpoints, start)

    stats = []
    if (entry := GeneralEntry.of(plan, seed, tokenizer_id(tok), opts.glue_dir, opts.study_commit)) is not None:
        model, stats = entry.train_or_reuse(model, phases, run, checkpoints)
    model, more = run(model, phases[entry.count if entry else 0:], len(stats))
    for p in model.parameters():
        p.requires_grad_(True)
    return model, stats + more


def _run_phases(plan: RunPlan, phases: list[tuple[str, Phase]], model, tok, finetuned: list[Teacher], seed: int,
                label: str, opts: Options, checkpoints: Checkpoints | None, index: int):
    """Train ``phases`` in order; their first stage is the run's stage ``index``."""
    stats = []
    for where, phase in phases:
        training = plan.recipe.phase_training(phase)
        teachers, train_ds, mask_tokens = _phase_inputs(plan, phase, tok, finetuned, training, opts)
        weighting = plan.recipe.teacher_weighting if phase.corpus is None else WeightingSpec()
        s_shape, t_shapes = shape_of(model), [shape_of(t.model) for t in teachers]
        # built once: the blocks of a progressive phase take turns with the same terms, so they train one
        # projection per term, as TinyBERT learns one W_h for all its mapped layers, not one per block.
        # Seeded here: what drew before (the task head's size, a general teacher's random head, earlier
        # phases) must not decide a term's initial weights, or a general phase would differ by task
        torch.manual_seed(seed)
        phase_terms = build_terms(phase, s_shape, t_shapes, where)
        phase_needs = teacher_needs(phase_terms, len(teachers))  # before any restrict: all blocks' needs
        stream = 0  # a progressive phase's blocks take turns along one batch stream, as joint's one phase does
        if phase.progressive is not None:
            training = phase.progressive.block_training(training, s_shape.layers)
        for block in range(s_shape.layers) if phase.progressive else [None]:
            terms, lr_scale = phase_terms, None
            if block is not None:
                terms = [(t, w) for t, w in phase_terms if t.restrict(block)]
                lr_scale = progressive_scale(block, phase.progressive, isinstance(plan.recipe.student, ConfigStudent))
                if not terms:
                    continue
            desc = f"{phase.name}{'' if block is None else f' block {block}'}: {label}"
            if any(t.data is not None for t in teachers) and any(tm.level == "features" for tm, _ in terms):
                raise ValueError(f"{plan.path}: {where}objective: intermediate terms need teachers with the "
                                 "student's tokenizer (see `harness validate`)")
            engine, st = train_stage(model, teachers, terms, train_ds, plan.task.is_regression, training,
                                     plan.recipe.deepspeed, tok.pad_token_id, seed, desc, mask_tokens, lr_scale,
                                     opts.teacher_cache, weighting, phase_needs if block is not None else None,
                                     checkpoints.stage(index) if checkpoints else None, stream)
            index += 1
            model = engine.module.student
            if plan.recipe.deepspeed.zero_stage == 3:  # a plain full model for the next stage and for saving
                model = gather_zero3(model).to(device())
                if block is not None:  # the next block goes on with the same projections' values
                    phase_terms = gather_zero3_terms(phase_terms, build_terms(phase, s_shape, t_shapes, where))
            stats.append({"phase": phase.name, "block": block, "terms": [t.term for t in phase.objective], **st})
            stream += st["steps"] if block is not None else 0
            del engine
    return model, stats


def teacher_needs(terms, n_teachers: int) -> list[Need]:
    """What each teacher must expose for these terms: over a progressive phase's whole maps, so that
    one teacher-output cache serves every block."""
    needs = [Need() for _ in range(n_teachers)]
    for term, _ in terms:
        if term.needs_teacher:
            needs = [n | term.teacher_need(i) for i, n in enumerate(needs)]
    return needs


def _phase_inputs(plan: RunPlan, phase: Phase, tok, finetuned: list[Teacher], training: Training, opts: Options):
    """(teachers, training data, masking function or None) of one phase."""
    task = plan.task
    if phase.corpus is None:
        train_ds = tokenize_task(task, tok, training, opts.glue_dir)[0]
        teachers = [t if t.tokenizer is None else  # its own tokenization of the same rows
                    replace(t, data=tokenize_task(task, t.tokenizer, training, opts.glue_dir)[0],
                            pad_id=t.tokenizer.pad_token_id) for t in finetuned]
        return teachers, train_ds, None
    # general distillation: the pretrained encoders teach (harness.corpus_teachers), on unlabeled text
    teachers = general_teachers(plan, phase, finetuned)
    if phase.corpus.files or phase.corpus.glue:
        train_ds = corpus_dataset(phase.corpus, tok, training, plan.path.parent, opts.glue_dir)
    else:  # the task's own (capped) training text, labels unused
        train_ds = tokenize_task(task, tok, training, opts.glue_dir)[0].remove_columns("label")
    mask_tokens = None
    if any(TERMS.get(t.term).level == "mlm" for t in phase.objective):  # mlm, mlm_kd: masked text for both models
        mlm = DataCollatorForLanguageModeling(tok, mlm_probability=phase.corpus.mlm_probability)
        mask_tokens = lambda ids: mlm.torch_mask_tokens(ids)  # noqa: E731  (global RNG, seeded per stage)
    return teachers, train_ds, mask_tokens


def gather_zero3(student):
    """Under ZeRO-3 each rank holds a shard of every weight: gather them into a plain full copy."""
    import deepspeed  # here, not at the top: `study plan` reaches this module and trains nothing
    with deepspeed.zero.GatheredParameters(list(student.parameters()), modifier_rank=None):
        state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in student.state_dict().items()}
    plain = type(student)(student.config)
    plain.load_state_dict(state)
    return plain


def gather_zero3_terms(terms, plain):
    """Under ZeRO-3 the terms' own weights (projections) are sharded like the student's: copy their
    full values into ``plain``, the same terms built afresh, which the next stage can shard again."""
    import deepspeed
    for (sharded, _), (fresh, _) in zip(terms, plain):
        with deepspeed.zero.GatheredParameters(list(sharded.parameters()), modifier_rank=None):
            fresh.load_state_dict({k: v.detach().to("cpu", torch.float32).clone()
                                   for k, v in sharded.state_dict().items()})
    return plain
