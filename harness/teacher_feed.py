"""What the teachers give a training stage, micro-batch by micro-batch: their outputs read from the
on-disk cache (:mod:`harness.teacher_cache`) where it holds them, else a live forward of the frozen
teacher.  Both give the same :class:`~harness.features.Features`, so the loop does not care which.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from harness import teacher_cache
from harness.data import Collator
from harness.engine import MODEL_INPUTS, barrier, to_device
from harness.features import Need, forward_features, mixed_forward
from harness.losses import Term


@dataclass
class Teacher:
    model: nn.Module  # frozen, eval mode
    weight: float
    source: Path | None = None  # its checkpoint folder: with it, the outputs can be cached on disk
    # A teacher with its own tokenizer: the training set tokenized by it, row for row the student's
    # (same examples, same order), and its pad id.  None: it reads the student's inputs.
    tokenizer: object | None = None  # set when it differs from the student's
    data: object | None = None
    pad_id: int | None = None


class TeacherFeed:
    """The teachers of one stage, each with what its terms read (``needs``) and, where it can be
    cached, its :class:`~harness.teacher_cache.CachedTeacher`."""

    def __init__(self, teachers: list[Teacher], terms: list[Term], train_ds, collate: Collator,
                 extra_needs: list[Need] | None, desc: str):
        self.teachers, self.desc = teachers, desc
        # what each teacher must expose (hidden states, q/k/v of some blocks): only what the terms read;
        # ``extra_needs`` widens it so that the stages of a progressive phase share one cache
        self.needs = list(extra_needs) if extra_needs and teachers else [Need() for _ in teachers]
        for term in terms:
            if term.needs_teacher:
                self.needs = [n | term.teacher_need(i) for i, n in enumerate(self.needs)]
        self.data = [(t.data, Collator(t.pad_id, collate.regression)) if t.data is not None else (train_ds, collate)
                     for t in teachers]
        # what the loader collates per teacher: its own tokenization, or None (the student's batch)
        self.own_data = [td if td[0] is not train_ds else None for td in self.data]
        for t, (ds, _) in zip(teachers, self.data):
            if ds is not train_ds and list(ds["idx"]) != list(train_ds["idx"]):
                raise ValueError(f"[{desc}] a teacher's tokenized data does not hold the student's rows in order")
        self.cached: list = [None] * len(teachers)
        self.info = {"status": "no teacher", "teacher_forward_examples_cached": 0}

    def use_cache(self, terms: list[Term], off: str | None, batch_size: int, dtype, dev: torch.device,
                  main: bool) -> None:
        """Read the teachers' outputs from the on-disk cache (built now if absent), unless ``off`` or a
        term says why not; records what happened in ``info`` (and the log)."""
        if not self.teachers:
            return
        live = [f"{type(t).__name__} {t.live_teacher}" for t in terms if t.live_teacher]
        why = off or (f"off: {live[0]}" if live else None) or \
            ("off: a teacher without a checkpoint folder" if any(t.source is None for t in self.teachers) else None)
        if why:
            if main:
                print(f"[{self.desc}] teacher-output cache {why}", flush=True)
            self.info = {"status": why, "teacher_forward_examples_cached": 0}
            return
        status, built = [], 0
        for i, (t, (ds, coll)) in enumerate(zip(self.teachers, self.data)):
            t.model.to(dev, dtype=dtype)
            need = self.needs[i]
            if need.hidden and not need.layers:  # a term reading unspecified hidden states: keep them all
                need = Need(need.hidden, need.qkv, frozenset(range(t.model.config.num_hidden_layers + 1)))
            self.cached[i], how = teacher_cache.prepare(t.model, t.source, ds, need, coll, dev, batch_size,
                                                        main, barrier, f"teacher {i}")
            status.append(how)
            built += len(ds) if how == "built" else 0
        if main:
            print(f"[{self.desc}] teacher-output cache: {', '.join(status)}", flush=True)
        self.info = {"status": ", ".join(status), "teacher_forward_examples_cached": built}

    def inputs(self, student_inputs: dict, own: list, dev: torch.device) -> list[dict]:
        """Each teacher's model inputs for a micro-batch: the student's, or its own tokenization's."""
        return [student_inputs if b is None else {k: v for k, v in to_device(b, dev).items() if k in MODEL_INPUTS}
                for b in own]

    @torch.no_grad()  # teachers are frozen: no graph, no gradient
    def features(self, micro, t_inputs: list[dict], dtype) -> list:
        return [c.features(micro, ti["attention_mask"], dtype) if c is not None else forward_features(t.model, ti, need)
                for t, need, c, ti in zip(self.teachers, self.needs, self.cached, t_inputs)]

    def mixed(self, t_inputs: list[dict]):
        """MixKD's hook: the teachers run on the mixed embeddings of this micro-batch (never cached)."""
        @torch.no_grad()
        def run(perm, lam):
            return [mixed_forward(t.model, ti, perm, lam) for t, ti in zip(self.teachers, t_inputs)]
        return run
