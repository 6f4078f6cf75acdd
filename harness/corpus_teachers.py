"""The teachers of a corpus (general-distillation) phase: each card's pretrained encoder, not its
fine-tuned copy, and with its masked-LM head where a term reads the teacher's masked-LM distribution
(DistilBERT's soft targets, ``mlm_kd``).

A card declares that head with ``mlm_head: {source: ...}`` (:class:`harness.teachers.MlmHead`); the
offline cards are sentence encoders saved without one, so a recipe asking for their distribution is
stopped by ``validate`` (:func:`check_mlm_teachers`), and a declared head whose weights are not where
the card says is a ConfigError when the phase loads it (:func:`load_masked_lm`), never a random head.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForMaskedLM

from harness.models import load_classifier
from harness.recipe_parts import Phase
from harness.resolved import RunPlan
from harness.mlm_check import NO_HEAD_HINT, reads_teacher_mlm
from harness.schema import ConfigError
from harness.teacher_feed import Teacher
from harness.teachers import Card

def general_teachers(plan: RunPlan, phase: Phase, finetuned: list[Teacher]) -> list[Teacher]:
    """A corpus phase's teachers: each card's pretrained encoder (a masked-LM model when the phase reads
    its distribution, a classifier otherwise, whose random head no term reads).  An assistant stage
    has no pretrained form: its trained model teaches here too."""
    mlm = bool(reads_teacher_mlm(phase))
    out = []
    for rt, ft in zip(plan.teachers, finetuned):
        if rt.card is None:
            out.append(ft)
            continue
        model = load_masked_lm(rt.card) if mlm else load_classifier(rt.card.pretrained_path(), plan.task)
        out.append(Teacher(model, rt.weight, rt.card.pretrained_path()))
    return out


def load_masked_lm(card: Card) -> nn.Module:
    """The card's pretrained encoder with the masked-LM head its card declares (``mlm_head.source``:
    its own checkpoint, or another folder holding the same encoder with the head)."""
    if card.mlm_head is None:
        raise ConfigError(f"teacher {card.name}: its card declares no mlm_head; {NO_HEAD_HINT}")
    model, info = AutoModelForMaskedLM.from_pretrained(card.pretrained_path(), output_loading_info=True)
    params = model.state_dict(keep_vars=True)
    head = {k for k in params if k.split(".")[0] != model.base_model_prefix}  # e.g. cls.* (BERT), lm_head.* (MPNet)
    missing = set(info["missing_keys"]) & head
    if card.mlm_head.source != "checkpoint":
        donor, donor_info = AutoModelForMaskedLM.from_pretrained(card.mlm_head_path(), output_loading_info=True)
        if not torch.equal(donor.get_input_embeddings().weight, model.get_input_embeddings().weight):
            raise ConfigError(f"teacher {card.name}: mlm_head.source {card.mlm_head.source} is another encoder (its "
                              "word embeddings differ from the card's checkpoint): its head would read other states")
        encoder = {id(p) for p in model.base_model.parameters()}
        tied = {k for k in head if id(params[k]) in encoder}  # the decoder tied to the card's own embeddings
        model.load_state_dict({k: v for k, v in donor.state_dict().items() if k in head - tied}, strict=False)
        missing = set(donor_info["missing_keys"]) & head
    if missing:
        raise ConfigError(f"teacher {card.name}: no masked-LM head weights at mlm_head.source {card.mlm_head.source} "
                          f"(missing {', '.join(sorted(missing)[:3])}); {NO_HEAD_HINT}")
    return model
