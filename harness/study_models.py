"""The models a study's speed table measures, by the label its records and tables name them with, as
config.json-style dicts: what the study's recipes and cards build (no training needed, so a clean clone
can measure the committed studies' speed on its own machine), checked against the configs of the
trained models this cache holds (the records' checkpoints and teachers).

The classifier's width (1, 2 or 3 labels) costs nothing measurable, so every config gets 2: one
measurement per encoder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from harness.paths import cache_dir
from harness.resolved import RunPlan
from harness.schema import ConfigError
from harness.study import StudyPlan


def _one_head(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("id2label", "label2id")} | {"num_labels": 2}


def _plans(plan: RunPlan) -> list[RunPlan]:
    """A cell's plan and its assistant stages' (each a model of its own)."""
    return [plan] + [p for stage in plan.stages.values() for p in _plans(stage)]


def recipe_configs(sp: StudyPlan) -> dict[str, dict]:
    """model label -> config, for every student, assistant and card teacher the study's cells name."""
    from transformers import AutoConfig

    from harness.models import student_config
    from harness.recipe_students import student_label

    out: dict[str, dict] = {}
    for cell in sp.cells:
        for plan in _plans(cell.plan):
            s = plan.recipe.student
            label = student_label(s, plan.student_card)
            if label not in out:
                out[label] = _one_head(student_config(s, plan.student_card, plan.task).to_dict())
            for t in plan.teachers:
                if t.card is not None and t.card.name not in out:
                    out[t.card.name] = _one_head(AutoConfig.from_pretrained(t.card.pretrained_path()).to_dict())
    return out


def model_configs(sp: StudyPlan, results_dir: Path) -> dict[str, dict]:
    """model label -> its config.json, for every model of the study's kept records whose files this
    cache holds (students: their checkpoint; teachers: their fine-tuned folder)."""
    from harness.archspeed import arch_key
    from harness.study_records import read_study_records
    from harness.study_rules import Rules

    rules = Rules(sp, read_study_records(sp.folder(results_dir)), allow_dirty=True)
    out: dict[str, dict] = {}
    for r in sorted(rules.kept(), key=lambda r: r.folder):
        m = r.record
        folder = cache_dir() / "teachers" / m.model / m.task / Path(r.folder).name if m.kind == "teacher" \
            else Path(m.checkpoint) if m.checkpoint else None
        if folder is None or not (folder / "config.json").is_file():
            continue
        config = _one_head(json.loads((folder / "config.json").read_text()))
        if m.model in out and arch_key(out[m.model]) != arch_key(config):
            # the speed table and the study's latency column look models up by this label
            raise ConfigError(f"two architectures of study {sp.name} share the model label {m.model!r} "
                              f"({r.folder} and an earlier record); give the students names of their own "
                              "(student: {name: ...} in their recipes)")
        out.setdefault(m.model, config)
    return out


def speed_configs(sp: StudyPlan, results_dir: Path, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Every model the study names (:func:`recipe_configs`); where this cache holds a record's trained
    model, its own config, which must be the architecture its recipe builds (else the recipe or a card
    changed since the record was made, and the speed table would measure another model: an error)."""
    from harness.archspeed import arch_key, arch_label

    planned, trained = recipe_configs(sp), model_configs(sp, results_dir)
    for label, config in trained.items():
        if label in planned and arch_key(planned[label]) != arch_key(config):
            raise ConfigError(f"study {sp.name}: the records' {label!r} is a {arch_label(config)} "
                              f"({arch_key(config)}) but its recipe now builds a {arch_label(planned[label])} "
                              f"({arch_key(planned[label])}); the study's records are not of these recipes")
    unseen = sorted(set(trained) - set(planned))
    if unseen:
        log(f"speed: {', '.join(unseen)} of the records named by no recipe of study {sp.name}: measured too")
    return planned | trained
