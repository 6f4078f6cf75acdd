"""A student's training phases, and the distributed plumbing every stage shares.

Every rank runs this same code; rank 0 alone writes files, and barriers keep the ranks in step.
``train_phases`` runs a recipe's phases in order on one student: task phases with the fine-tuned
teachers, corpus (general) phases with the pretrained ones, progressive phases once per block.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from transformers import DataCollatorForLanguageModeling

from harness.checks import build_terms
from harness.data import corpus_lines, tokenize, tokenize_corpus
from harness.distill import Teacher, predict, train_stage
from harness.engine import device, world
from harness.features import Need
from harness.losses import Shape
from harness.metrics import compute_metrics
from harness.models import encoder_layers, load_classifier
from harness.recipe import Recipe
from harness.recipe_parts import Corpus, DeepSpeedSettings, Progressive, Training
from harness.tasks import Task, get_task
from harness.teachers import Card, find_card, load_card
from harness.weighting import WeightingSpec


@dataclass
class Options:
    results_dir: Path
    glue_dir: Path | None
    teachers_dir: Path | None = None
    force: bool = False
    teacher_cache: bool = True


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
    backend = "gloo" if get_accelerator().device_name() == "cpu" else get_accelerator().communication_backend_name()
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def is_main() -> bool:
    return world()[0] == 0


def _tokenize_all(task: Task, tok, training: Training, glue_dir: Path | None):
    """Rank 0 tokenizes first and fills the cache; the other ranks then read it."""
    out = None
    for turn in (0, 1):
        if (world()[0] == 0) == (turn == 0):
            train = tokenize(task, "train", tok, training.max_length, glue_dir, training.max_train_examples)
            devs = {s: tokenize(task, s, tok, training.max_length, glue_dir) for s in task.dev_splits}
            out = (train, devs)
        barrier()
    return out


def evaluate(student, tok, devs: dict, task: Task, training: Training, label: str):
    preds, dev_metrics = {}, {}
    for split, ds in devs.items():
        rows = predict(student, ds, task, training.eval_batch_size, tok.pad_token_id, desc=f"eval {label} {split}")
        preds[split] = rows
        dev_metrics[split] = compute_metrics(task, [r[1] for r in rows], [r[2] for r in rows])
    return preds, dev_metrics


def train_and_evaluate(model, tok, teachers: list[Teacher], terms, task: Task, training: Training,
                       settings: DeepSpeedSettings, seed: int, label: str, glue_dir: Path | None):
    """One task phase then dev evaluation (teacher fine-tuning uses this)."""
    train_ds, devs = _tokenize_all(task, tok, training, glue_dir)
    engine, stats = train_stage(model, teachers, terms, train_ds, task.is_regression, training, settings,
                                tok.pad_token_id, seed, desc=f"train {label} on {task.display}")
    student = engine.module.student
    preds, dev_metrics = evaluate(student, tok, devs, task, training, label)
    if settings.zero_stage == 3:
        student = _gather_zero3(student)
    return student, stats, preds, dev_metrics


def shape_of(model) -> Shape:
    return Shape(len(encoder_layers(model)), model.config.hidden_size, model.config.num_attention_heads)


def _progressive_scale(block: int, spec: Progressive):
    """lr multipliers while block ``block`` is trained: 1 for it, 0 (frozen) or spec.lr_scale for what is
    below it (embeddings, shared position bias, lower blocks), 0 for the blocks above and the head."""
    lower = 0.0 if spec.lower == "freeze" else spec.lr_scale

    def scale(name: str) -> float:
        m = re.search(r"encoder\.layer\.(\d+)\.", name)
        if m:
            b = int(m.group(1))
            return 1.0 if b == block else lower if b < block else 0.0
        return lower if ".embeddings." in name or "encoder." in name else 0.0
    return scale


def train_phases(recipe: Recipe, path: Path, model, tok, finetuned: list[Teacher], task: Task, seed: int,
                 label: str, opts: Options):
    """Run the recipe's phases in order on one student; returns (student, per-phase stats, train data)."""
    s_shape = shape_of(model)
    stats = []
    for where, phase in recipe.named_phases():
        training = recipe.phase_training(phase)
        mask_tokens = None
        weighting = WeightingSpec()
        if phase.corpus is None:
            train_ds, _ = _tokenize_all(task, tok, training, opts.glue_dir)
            teachers = [t if t.tokenizer is None else  # its own tokenization of the same rows
                        replace(t, data=_tokenize_all(task, t.tokenizer, training, opts.glue_dir)[0],
                                pad_id=t.tokenizer.pad_token_id) for t in finetuned]
            weighting = recipe.teacher_weighting
        else:  # general distillation: the pretrained encoders teach, on masked text
            # (an assistant stage has no pretrained form: its trained model teaches here too)
            teachers = [Teacher(load_classifier(c.pretrained_path(), task), t.weight, c.pretrained_path())
                        if c is not None else ft for c, t, ft in zip(_cards(recipe, path, opts), recipe.teachers, finetuned)]
            if phase.corpus.files or phase.corpus.glue:
                train_ds = _corpus(phase.corpus, tok, training, path.parent, opts.glue_dir)
            else:  # the task's own (capped) training text, labels unused
                train_ds = _tokenize_all(task, tok, training, opts.glue_dir)[0].remove_columns("label")
            if any(t.term == "mlm" for t in phase.objective):
                mlm = DataCollatorForLanguageModeling(tok, mlm_probability=phase.corpus.mlm_probability)
                mask_tokens = lambda ids: mlm.torch_mask_tokens(ids)  # noqa: E731  (global RNG, seeded per stage)
        t_shapes = [shape_of(t.model) for t in teachers]
        blocks = list(range(s_shape.layers)) if phase.progressive else [None]
        # what the teachers must expose over all blocks: one teacher-output cache serves every block
        phase_needs = [Need() for _ in teachers]
        for term, _ in build_terms(phase, s_shape, t_shapes, where):
            if term.needs_teacher:
                phase_needs = [n | term.teacher_need(i) for i, n in enumerate(phase_needs)]
        for block in blocks:
            terms = build_terms(phase, s_shape, t_shapes, where)
            lr_scale = None
            if block is not None:
                terms = [(t, w) for t, w in terms if t.restrict(block)]
                lr_scale = _progressive_scale(block, phase.progressive)
                if not terms:
                    continue
            desc = f"{phase.name}{'' if block is None else f' block {block}'}: {label}"
            if any(t.data is not None for t in teachers) and any(tm.level == "features" for tm, _ in terms):
                raise ValueError(f"{path}: {where}objective: intermediate terms need teachers with the "
                                 "student's tokenizer (see `harness validate`)")
            engine, st = train_stage(model, teachers, terms, train_ds, task.is_regression, training, recipe.deepspeed,
                                     tok.pad_token_id, seed, desc, mask_tokens, lr_scale, opts.teacher_cache,
                                     weighting, phase_needs if block is not None else None)
            model = engine.module.student
            if recipe.deepspeed.zero_stage == 3:  # a plain full model for the next stage and for saving
                model = _gather_zero3(model).to(device())
            stats.append({"phase": phase.name, "block": block, "terms": [t.term for t in phase.objective], **st})
            del engine
    for p in model.parameters():
        p.requires_grad_(True)
    return model, stats


def _corpus(corpus: Corpus, tok, training: Training, recipe_dir: Path, glue_dir: Path | None):
    files = [Path(f).expanduser() if Path(f).expanduser().is_absolute() else recipe_dir / f for f in corpus.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"corpus files not found: {missing}")
    out = None
    for turn in (0, 1):  # rank 0 tokenizes into the cache first
        if (world()[0] == 0) == (turn == 0):
            lines = corpus_lines(files, [get_task(t) for t in corpus.glue], glue_dir)
            out = tokenize_corpus(lines, tok, training.max_length, corpus.max_examples)
        barrier()
    return out


def _cards(recipe: Recipe, path: Path, opts: Options) -> list[Card | None]:
    """Each teacher's card (None for an assistant stage)."""
    return [load_card(find_card(t.card, path.parent, opts.teachers_dir)) if t.card is not None else None
            for t in recipe.teachers]


def _gather_zero3(student):
    """Under ZeRO-3 each rank holds a shard of every weight: gather them into a plain full copy."""
    with deepspeed.zero.GatheredParameters(list(student.parameters()), modifier_rank=None):
        state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in student.state_dict().items()}
    plain = type(student)(student.config)
    plain.load_state_dict(state)
    return plain
