"""``RunRecord``: the one schema of a run's ``metrics.json`` (a teacher, an assistant stage or a student).

Records are written and read only through it (:mod:`harness.records`), and the tables read only
RunRecords.  ``schema_version`` says which shape a file has; a file without it is version 1, the shape
every record had before the field existed, which this model reads as it is.  A later version adds a
migration here and bumps ``SCHEMA_VERSION``; ``python -m harness records migrate`` rewrites old files.
Its JSON Schema is exported to ``schemas/run_record.schema.json`` (``harness records schema``).
"""
from __future__ import annotations

from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.hashing import one_run, spec_hash

SCHEMA_VERSION = 2  # 2: a run's recipe hashed with its own seed alone (upgrade)


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelled or unknown key is an error, not data


class CpuSpeed(_Part):
    device: str
    threads: int
    dtype: str
    latency_ms: float = Field(description="batch 1, median of timed passes")
    throughput: float = Field(description="examples/s at the throughput batch")


class GpuSpeed(_Part):
    device: str
    dtype: str
    latency_ms: float
    throughput: float


class Speed(_Part):
    seq_len: int
    throughput_batch: int
    cpu: CpuSpeed = Field(description="fp32")
    cpu_bf16: CpuSpeed | None = Field(None, description="bf16 autocast, on a CPU that computes bf16 natively")
    cpu_int8: CpuSpeed | None = Field(None, description="int8 dynamic quantization of the linear layers (torch.ao)")
    gpu: GpuSpeed | None = None
    retimed: str | None = Field(None, description="when `harness retime` measured it again")


class Params(_Part):
    total: int
    non_embedding: int


class LossPoint(_Part):
    step: int
    loss: float = Field(description="mean weighted loss since the previous point")
    terms: list[float] | None = Field(None, description="each objective term's mean, in the phase's order")


class TeacherCacheInfo(_Part):
    status: str
    teacher_forward_examples_cached: int
    teacher_forward_examples_uncached: int


class EpochWeights(_Part):
    epoch: int
    mean: list[float] = Field(description="each teacher's mean per-example weight over the epoch")


class WeightHistory(_Part):
    scheme: str
    per_epoch: list[EpochWeights]


class StageStats(_Part):
    """One training stage: a phase, or one block of a progressive phase."""

    train_examples: int
    steps: int
    epochs: float
    examples_seen: int
    wall_time_s: float
    samples_per_s: float
    world_size: int
    precision: str
    precision_mode: str | None = Field(None, description="how the precision was applied: 'DeepSpeed' (its fp32, "
                                                         "bf16 or fp16 mode), or CPU autocast outside DeepSpeed "
                                                         "and why (absent: records from before it was recorded)")
    attention: str | None = None
    compiled: bool | None = None
    teacher_cache: TeacherCacheInfo | None = None
    loss_history: list[LossPoint]
    teacher_weighting: WeightHistory | None = None
    phase: str | None = None
    block: int | None = None
    terms: list[str] | None = None
    cofinetuned: int | None = Field(None, description="teachers fine-tuned jointly (MT-BERT co-finetuning)")
    reused_from: str | None = Field(None, description="a general phase's stage read from the cache "
                                                      "(harness.general_cache): the entry, whose run these stats are")


class TrainStats(StageStats):
    """The last (task) phase's stats, which the tables' budget marks read, and every phase's."""

    phases: list[StageStats] | None = None


class TeacherEntry(_Part):
    card: str | None = None
    stage: str | None = None
    weight: float
    instance: str | None = Field(None, description="the model it read: its record's `instance` (absent: not "
                                                   "fine-tuned, no term reads it, or a record from before "
                                                   "instances were recorded)")


class RunRecord(_Part):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["teacher", "stage", "student"]
    name: str
    task: str
    model: str
    lineage: list[str]
    cofinetuned_with: list[str] | None = None
    teachers: list[TeacherEntry]
    teacher_weighting: dict[str, str] | None = None
    terms: list[str]
    seed: int
    recipe_hash: str
    data: str | None = Field(None, description="the task data it read (tasks.data_id: a hash of the local "
                                               "train and dev files, or the Hub dataset); absent in records "
                                               "from before it was recorded")
    dev: dict[str, dict[str, float]] = Field(description="dev split -> metric -> value (fractions)")
    score: float = Field(description="the task's headline: the mean of its metrics on its dev split(s)")
    train: TrainStats
    params: Params
    size_bytes: int
    speed: Speed
    teacher_speed: Speed | None = Field(None, description="the first teacher's (or assistant's), timed alike")
    teacher_scores: dict[str, float] | None = Field(None, description="the score of each teacher this run read")
    checkpoint: str | None = Field(None, description="the trained model in the cache that wrote the record")
    instance: str | None = Field(None, description="this run's trained model: a hash of its saved weights "
                                                   "(harness.integrity.model_id), which students' teacher "
                                                   "entries name")

    def to_json(self) -> dict:
        """What ``metrics.json`` holds: the fields that were given (an absent one stays absent rather
        than becoming null), the schema version always."""
        return {"schema_version": self.schema_version} | self.model_dump(mode="json", exclude_unset=True)


# What finds the recipe.yaml of an assistant stage a record read: (stage name, the stage's hash as the
# record names it) -> that stage record's stored recipe, or None where there is none
StageRecipes = Callable[[str, str], "dict | None"]


def upgrade(data: dict, recipe: Callable[[], dict | None], stage_recipes: StageRecipes = lambda name, old: None) -> dict:
    """A stored record brought to the current schema version, given what reads its folder's
    ``recipe.yaml`` (None: absent; read only for a version-1 student or stage) and those of the
    assistant stages it read.

    Version 1 (also: no ``schema_version`` key) hashed a run's recipe with ``training.seed`` the whole
    seed list asked for, so a seed added to a study changed every seed's hash; version 2 hashes each run
    with its own seed alone (:func:`harness.hashing.one_run`).  A version-1 student or stage record whose
    recipe hashes to its ``recipe_hash`` is hashed again that way (:func:`as_version_2`); any other keeps
    its hash (a teacher's spec has no seed list)."""
    version = data["schema_version"] if "schema_version" in data else 1
    if version > SCHEMA_VERSION:
        raise ValueError(f"record schema version {version} is newer than this harness reads ({SCHEMA_VERSION})")
    if version == 1 and data["kind"] != "teacher" and (resolved := recipe()) is not None \
            and spec_hash(resolved) == data["recipe_hash"]:
        data = data | {"recipe_hash": spec_hash(as_version_2(resolved, data["seed"], stage_recipes))}
    return data | {"schema_version": SCHEMA_VERSION}


def as_version_2(resolved: dict, seed: int, stage_recipes: StageRecipes) -> dict:
    """A version-1 run's resolved recipe as version 2 has it: ``training.seed`` the run's own seed, and
    each assistant stage it read named by the stage's version-2 hash, from the stage record's recipe (a
    chain's stages in turn).  A stage whose record is not found, or whose recipe does not give the hash
    the run names, keeps that hash: the run then matches no version-2 cell and is trained again."""
    run = one_run(resolved, seed)
    if "teacher_checkpoints" not in run:
        return run
    return run | {"teacher_checkpoints": [_stage_as_version_2(c, seed, stage_recipes) for c in run["teacher_checkpoints"]]}


def _stage_as_version_2(checkpoint: dict, seed: int, stage_recipes: StageRecipes) -> dict:
    if "stage" not in checkpoint:  # a card's checkpoint: named by its card and fine-tuning, no seed list
        return checkpoint
    stage = stage_recipes(checkpoint["stage"], checkpoint["hash"])
    if stage is None or spec_hash(stage) != checkpoint["hash"]:
        return checkpoint
    return checkpoint | {"hash": spec_hash(as_version_2(stage, seed, stage_recipes))}
