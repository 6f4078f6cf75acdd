"""How a recipe builds its student: cut from a teacher, loaded, or made from a config (the card's own
architecture, or MobileBERT's bottleneck one).

``init`` picks the kind; ``init: config`` with ``architecture: mobilebert`` is :class:`MobileBertStudent`.
That class only adds fields, so the resolved recipes (and hashes) of config students written before it
existed are unchanged.  :mod:`harness.models` builds each kind.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, Discriminator, Field, Tag, model_validator

from harness.schema import Strict


class TeacherLayersStudent(Strict):
    """DistilBERT-style: keep some of a teacher's layers (pretrained weights, not the fine-tuned ones)."""

    init: Literal["teacher_layers"]
    name: str | None = None
    card: str | None = Field(None, description="card whose pretrained checkpoint is cut; default: first teacher")
    layers: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, description="teacher layer indices to keep")


class PretrainedStudent(Strict):
    init: Literal["pretrained"]
    name: str | None = None
    checkpoint: str = Field(description="a Hub id, or a local model folder starting with ./, ../, / or ~")


class ConfigStudent(Strict):
    """A randomly initialised encoder of the given shape, using a card's tokenizer and vocabulary."""

    init: Literal["config"]
    name: str | None = None
    tokenizer_card: str | None = Field(None, description="card whose tokenizer is used; default: first teacher")
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    ffn: int = Field(gt=0)

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class MobileBertStudent(ConfigStudent):
    """Sun et al. (2020), "MobileBERT: a Compact Task-Agnostic BERT for Resource-Limited Devices",
    the architecture of its Table 1.

    transformers' ``MobileBertForSequenceClassification``, randomly initialised: each block takes the
    ``hidden``-wide feature map, narrows it through linear bottlenecks to ``bottleneck`` (one for the
    block's residual path, one shared by queries and keys; values read the wide input), runs attention
    and ``ffns`` stacked feed-forward networks (``bottleneck -> ffn -> bottleneck``) at that width, and
    widens back to ``hidden``.  Block outputs (what feature-map transfer compares) are ``hidden`` wide.
    Embeddings are factorised: ``embedding``-wide token vectors, a kernel-3 convolution over neighbours
    (trigram input) to ``hidden``.  The vocabulary is the tokenizer card's.
    """

    architecture: Literal["mobilebert"]
    hidden: int = Field(gt=0, description="inter-block width: the embedding output and every block's output")
    bottleneck: int = Field(gt=0, description="intra-block width: attention and the FFNs run at it")
    heads: int = Field(gt=0, description="attention heads; they divide the bottleneck width")
    ffn: int = Field(gt=0, description="inner width of each stacked feed-forward network")
    ffns: int = Field(4, gt=0, description="feed-forward networks stacked in each block (the paper: 4)")
    embedding: int = Field(128, gt=0, description="width of the factorised token embeddings (the paper: 128)")
    normalization: Literal["no_norm", "layer_norm"] = Field(
        "no_norm", description="no_norm: the paper's NoNorm (an elementwise scale and shift), or layer_norm")

    @model_validator(mode="after")
    def _heads_divide(self):  # replaces ConfigStudent's: attention runs at the bottleneck width here
        if self.bottleneck % self.heads:
            raise ValueError(f"bottleneck ({self.bottleneck}) must be divisible by heads ({self.heads})")
        return self


STUDENT_INITS = ("teacher_layers", "pretrained", "config")
ARCHITECTURES = ("mobilebert",)  # for init: config; without one, the tokenizer card's own architecture


def _student_init(data: Any) -> Any:
    """Name the missing or misspelled ``init`` (or ``architecture``) and the allowed values, rather than
    pydantic's "Unable to extract tag using discriminator"."""
    if not isinstance(data, dict):
        return data
    allowed = ", ".join(STUDENT_INITS)
    if "init" not in data:
        typo = [k for k in data if difflib.get_close_matches(str(k), ["init"], n=1, cutoff=0.6)]
        hint = f"; unknown key {typo[0]!r} (did you mean 'init'?)" if typo else ""
        raise ValueError(f"missing 'init' (how the student is built: one of {allowed}){hint}")
    if data["init"] not in STUDENT_INITS:
        close = difflib.get_close_matches(str(data["init"]), STUDENT_INITS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"init: {data['init']!r} is not a way to build a student{hint}; one of {allowed}")
    if "architecture" in data:
        if data["init"] != "config":
            raise ValueError(f"architecture: only init: config students choose one (this one is "
                             f"init: {data['init']})")
        if data["architecture"] not in ARCHITECTURES:
            raise ValueError(f"architecture: {data['architecture']!r} is not one a config student can be built "
                             f"as; one of {', '.join(ARCHITECTURES)} (omit it for the tokenizer card's own)")
    return data


def _student_kind(data: Any) -> str:
    """The tag of the class that parses ``data`` (a mapping, or an already-built student)."""
    if isinstance(data, BaseModel):
        return "mobilebert" if isinstance(data, MobileBertStudent) else data.init
    return "mobilebert" if "architecture" in data else data["init"]


Student = Annotated[Union[Annotated[TeacherLayersStudent, Tag("teacher_layers")],
                          Annotated[PretrainedStudent, Tag("pretrained")],
                          Annotated[ConfigStudent, Tag("config")],
                          Annotated[MobileBertStudent, Tag("mobilebert")]],
                    Discriminator(_student_kind), BeforeValidator(_student_init)]


def student_label(s: Student, card) -> str:
    """How records and lineages name a recipe's student (its ``name``, else one made from its shape);
    ``card`` is the harness.teachers.Card it is cut from (teacher_layers), else unused.  Here, not in
    harness.models, so that plans can name students without importing model code."""
    if isinstance(s, TeacherLayersStudent):
        return s.name or f"{len(s.layers)}L-from-{card.name}"
    if isinstance(s, PretrainedStudent):
        return s.name or Path(s.checkpoint).name
    if isinstance(s, MobileBertStudent):
        return s.name or f"mobilebert-{s.layers}L-H{s.hidden}-B{s.bottleneck}"
    return s.name or f"{s.layers}L-H{s.hidden}"
