"""Building models: pretrained teachers, and students cut from a teacher, loaded, or made from a config
(the tokenizer card's architecture, or MobileBERT's bottleneck one)."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, MobileBertConfig,
                          PretrainedConfig)

from harness.recipe_parts import ConfigStudent, MobileBertStudent, PretrainedStudent, Student, TeacherLayersStudent
from harness.recipe_students import student_label
from harness.tasks import Task
from harness.teachers import Card

log = logging.getLogger(__name__)

# model_type -> (pooling dense, prediction layer): where each architecture keeps the two layers that
# MT-BERT co-finetuning (harness.cofinetune) shares between teachers
HEADS = {"bert": ("bert.pooler.dense", "classifier"), "mpnet": ("classifier.dense", "classifier.out_proj")}


def _quiet_load(fn, *args, **kwargs):
    """from_pretrained warns that the new classifier head is untrained: expected here, so hush it."""
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return fn(*args, **kwargs)
    finally:
        transformers.logging.set_verbosity(level)


def load_classifier(path: str | Path, task: Task) -> nn.Module:
    """An encoder checkpoint with a sequence-classification head for ``task`` (new head if absent)."""
    return _quiet_load(
        AutoModelForSequenceClassification.from_pretrained,
        str(path),
        num_labels=task.num_labels,
        problem_type="regression" if task.is_regression else "single_label_classification",
    )


def load_tokenizer(path: str | Path):
    return AutoTokenizer.from_pretrained(str(path))


def tokenizer_id(tok) -> str:
    """Two tokenizers with the same id turn any text into the same ids: same class, vocabulary and
    special tokens.  Different ids mean token positions cannot be compared across the two models."""
    src = json.dumps([type(tok).__name__, sorted(tok.get_vocab().items()), tok.special_tokens_map,
                      getattr(tok, "do_lower_case", None)], sort_keys=True, default=str)
    return hashlib.sha256(src.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def tokenizer_id_at(path: str) -> str:
    return tokenizer_id(load_tokenizer(path))


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a BERT-like model (BERT, MPNet, RoBERTa, ... share this path)."""
    try:
        return model.base_model.encoder.layer
    except AttributeError:
        raise TypeError(f"{type(model).__name__}: no base_model.encoder.layer; cannot pick layers") from None


def keep_layers(model: nn.Module, layers: list[int]) -> nn.Module:
    """DistilBERT-style initialisation: keep the given blocks (in order) and drop the rest."""
    blocks = encoder_layers(model)
    if max(layers) >= len(blocks):
        raise ValueError(f"layer {max(layers)} requested but the model has {len(blocks)} layers")
    model.base_model.encoder.layer = nn.ModuleList([blocks[i] for i in layers])
    model.config.num_hidden_layers = len(layers)
    return model


def build_student(s: Student, card: Card | None, task: Task, seed: int):
    """(model, tokenizer, lineage label) for a recipe's student, before training; ``card`` is the one
    it is cut from (teacher_layers) or takes its tokenizer from (config)."""
    torch.manual_seed(seed)  # the new classifier head (and a config student) are seeded per run
    tok = load_tokenizer(student_tokenizer_path(s, card))
    if isinstance(s, TeacherLayersStudent):
        model = keep_layers(load_classifier(card.pretrained_path(), task), s.layers)
        return model, tok, student_label(s, card)
    if isinstance(s, PretrainedStudent):
        return load_classifier(s.checkpoint, task), tok, student_label(s, card)
    assert isinstance(s, ConfigStudent)
    # transformers' own classes, picked by the auto class from the config (MobileBERT's module is slow to
    # import: it is imported only when such a student is built)
    return AutoModelForSequenceClassification.from_config(student_config(s, card, task)), tok, student_label(s, card)


def student_tokenizer_path(s: Student, card: Card | None) -> str:
    """Where a student's tokenizer is: its own checkpoint's (pretrained), else its card's."""
    return str(s.checkpoint if isinstance(s, PretrainedStudent) else card.pretrained_path())


def student_config(s: Student, card: Card | None, task: Task) -> PretrainedConfig:
    """The config of the model :func:`build_student` builds for ``s``, without building it (a study's
    speed is measured from configs alone)."""
    if isinstance(s, TeacherLayersStudent):
        config = AutoConfig.from_pretrained(card.pretrained_path(), num_labels=task.num_labels)
        config.num_hidden_layers = len(s.layers)  # as keep_layers leaves it
        return config
    if isinstance(s, PretrainedStudent):
        return AutoConfig.from_pretrained(s.checkpoint, num_labels=task.num_labels)
    path = card.pretrained_path()
    base = AutoConfig.from_pretrained(path)
    if isinstance(s, MobileBertStudent):
        return mobilebert_config(s, load_tokenizer(path), base, task)
    return AutoConfig.for_model(
        base.model_type,
        vocab_size=base.vocab_size,
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        intermediate_size=s.ffn,
        max_position_embeddings=base.max_position_embeddings,
        pad_token_id=base.pad_token_id,
        num_labels=task.num_labels,
        problem_type="regression" if task.is_regression else "single_label_classification",
    )


def mobilebert_config(s: MobileBertStudent, tok, base, task: Task) -> MobileBertConfig:
    """transformers' MobileBERT config for a recipe's student (Sun et al. 2020, Table 1): bottlenecks on
    (one for the residual path, one shared by queries and keys; values read the wide block input, as in
    transformers' defaults, those of the released google/mobilebert-uncased), trigram (kernel-3)
    factorised embeddings.  The vocabulary is the tokenizer's whole one, added tokens included, so every
    id it produces has an embedding; positions as many as the card's model has."""
    return MobileBertConfig(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=base.max_position_embeddings,
        hidden_size=s.hidden,
        intra_bottleneck_size=s.bottleneck,
        use_bottleneck=True,
        key_query_shared_bottleneck=True,
        use_bottleneck_attention=False,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        intermediate_size=s.ffn,
        num_feedforward_networks=s.ffns,
        embedding_size=s.embedding,
        trigram_input=True,
        normalization_type=s.normalization,
        num_labels=task.num_labels,
        problem_type="regression" if task.is_regression else "single_label_classification",
    )


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for p in model.base_model.embeddings.parameters())
    return {"total": total, "non_embedding": total - emb}


def save_model(model: nn.Module, tokenizer, out: Path) -> None:
    """Save as safetensors in fp32 so sizes on disk compare across precisions."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(out)


def weights_size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))
