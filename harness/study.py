"""Study files: ``studies/<name>.yaml`` names recipes, tasks, seeds, optional grid axes and the baseline
row, and expands them into a matrix of cells, each a checked :class:`~harness.resolved.RunPlan`.

    name: zoo                        # default: the file's stem; records go to results/studies/<name>/
    recipes: ["recipes/glue/{task}/*/minilm3L_from_minilm.yaml"]   # paths or globs, {task} per task
    tasks: [cola, mrpc, sst2]
    seeds: [0, 1, 2]
    set: ["training.epochs=2"]       # --set overrides for every cell (the study's budget)
    per_task: {sst2: ["training.max_train_examples=4000"]}        # and per task (caps)
    grid: {objective.0.temperature: [1, 2, 4]}                    # every recipe x every grid point
    baseline: nokd/minilm3L_from_minilm

A row is one recipe (its name without ``glue/<task>/``) at one grid point; a cell is a row on a task.
Parsing is strict like recipes' (unknown keys are errors, with a did-you-mean).
"""
from __future__ import annotations

import fnmatch
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from harness.includes import read_with_defaults
from harness.plan import default_name, expand, load
from harness.registry import UnknownName
from harness.resolved import RunPlan
from harness.schema import ConfigError, Strict, load as load_model
from harness.tasks import TASKS, get_task


class GridAxis(Strict):
    """An axis that applies to some rows only (e.g. a temperature, which a no-KD row does not have)."""

    values: list[Any] = Field(min_length=1)
    rows: list[str] = Field(min_length=1, description="row names or globs (fnmatch), e.g. 'kd/*'")


class Study(Strict):
    name: str | None = Field(None, description="default: the file's stem")
    description: str = ""
    recipes: list[str] = Field(min_length=1, description="recipe paths or globs, relative to the current "
                                                         "folder; '{task}' is replaced by each task")
    tasks: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1, description="every cell runs every seed")
    set: list[str] = Field(default_factory=list, description="KEY=VALUE overrides applied to every cell")
    per_task: dict[str, list[str]] = Field(default_factory=dict, description="task -> overrides for its cells")
    grid: dict[str, list[Any] | GridAxis] = Field(
        default_factory=dict, description="recipe field path -> values (every recipe runs at every combination), "
                                          "or -> {values, rows} for an axis that applies to some rows only")
    baseline: str = Field(description="the row every other row is tested against, e.g. kd/3L_from_minilm")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v):
        return [_canonical(t) for t in v]

    @field_validator("per_task")
    @classmethod
    def _known_task_keys(cls, v):
        return {_canonical(t): sets for t, sets in v.items()}

    @field_validator("grid")
    @classmethod
    def _axes(cls, v):
        for path, axis in v.items():
            values = axis.values if isinstance(axis, GridAxis) else axis
            if not values:
                raise ValueError(f"grid axis {path!r} has no values")
            if len({_yaml_value(x) for x in values}) < len(values):
                raise ValueError(f"grid axis {path!r} repeats a value")
        return v

    def axes_for(self, row: str) -> dict[str, list[Any]]:
        """The grid axes that apply to a row (by its name without a grid label)."""
        return {path: axis.values if isinstance(axis, GridAxis) else axis for path, axis in self.grid.items()
                if not isinstance(axis, GridAxis) or any(fnmatch.fnmatchcase(row, g) for g in axis.rows)}


def _canonical(task: str) -> str:
    try:
        return get_task(task).name
    except UnknownName as e:
        raise ValueError(str(e)) from None


def _yaml_value(v: Any) -> str:
    """A grid value as --set writes it: JSON is YAML, so mappings and lists survive the round trip."""
    return json.dumps(v, separators=(",", ":"))


@dataclass(frozen=True)
class StudyCell:
    row: str  # the table row: "kd/3L_from_minilm" or "kd/3L_from_minilm [temperature=4]"
    task: str
    point: tuple[tuple[str, Any], ...]  # the grid point: ((path, value), ...)
    plan: RunPlan


@dataclass(frozen=True)
class StudyPlan:
    path: Path
    study: Study
    cells: tuple[StudyCell, ...]

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def rows(self) -> list[str]:
        return list(dict.fromkeys(c.row for c in self.cells))

    def folder(self, results_dir: Path) -> Path:
        return results_dir / "studies" / self.name


def _point_label(point: tuple[tuple[str, Any], ...], axes: list[str]) -> str:
    """'temperature=4': each axis by its last path component, or its whole path when two axes share it."""
    last = [a.rsplit(".", 1)[-1] for a in axes]
    short = {a: (s if last.count(s) == 1 else a) for a, s in zip(axes, last)}
    return ", ".join(f"{short[p]}={_yaml_value(v)}" for p, v in point)


def row_name(recipe_name: str, task: str) -> str:
    """'glue/sst2/kd/3L_from_x' -> 'kd/3L_from_x': a row gathers one method over tasks."""
    parts = recipe_name.split("/")
    return "/".join(parts[2:]) if len(parts) > 2 and parts[0] == "glue" and parts[1] == task else recipe_name


def _recipe_files(study: Study, task: str) -> list[Path]:
    """The study's recipes for one task: {task} patterns filled in; a file of another task is dropped."""
    files = []
    for pattern in study.recipes:
        if "{task}" in pattern:
            files += expand([pattern.replace("{task}", task)])
        else:  # a task-free pattern: keep the recipes that are of this task
            files += [p for p in expand([pattern]) if _task_of(p) == task]
    return list(dict.fromkeys(files))


def _task_of(path: Path) -> str:
    return get_task(read_with_defaults(path)["task"]).name


def _cells(study: Study, f: Path, task: str, teachers_dir: Path | None) -> list[StudyCell]:
    """One recipe file's cells on one task: one per point of the grid axes that apply to its row."""
    base = row_name(default_name(f), task)
    axes = study.axes_for(base)
    out = []
    for combo in itertools.product(*axes.values()):
        point = tuple(zip(axes, combo))
        sets = [f"{p}={_yaml_value(v)}" for p, v in point]
        name = default_name(f) + (f"@{','.join(sets)}" if point else "")
        # a task without per_task entries has no task-specific overrides (keys were checked above)
        overrides = [*study.set, *(study.per_task[task] if task in study.per_task else []), *sets,
                     f"training.seed={study.seeds}", f"name={name}"]
        row = base + (f" [{_point_label(point, list(axes))}]" if point else "")
        out.append(StudyCell(row, task, point, load(f, overrides, teachers_dir)))
    return out


def load_study(path: Path, teachers_dir: Path | None = None) -> StudyPlan:
    """Read, check and expand a study file into its cells, each a checked plan; all problems together."""
    study = load_model(Study, path)
    if study.name is None:
        study = study.model_copy(update={"name": path.stem})
    cells, errors = [], []
    for task in sorted(study.tasks, key=list(TASKS.names()).index):
        try:
            files = _recipe_files(study, task)
        except ConfigError as e:
            errors.append(f"{path}: task {task}: {e}")
            continue
        for f in files:
            try:
                cells += _cells(study, f, task, teachers_dir)
            except ConfigError as e:
                errors.append(f"{path}: {e}")
    rows = list(dict.fromkeys(c.row for c in cells))
    plain = {r.split(" [")[0] for r in rows}
    for axis_path, axis in study.grid.items():
        if isinstance(axis, GridAxis) and not errors and not any(fnmatch.filter(plain, g) for g in axis.rows):
            errors.append(f"{path}: grid.{axis_path}.rows: {axis.rows} match no row; rows: {', '.join(sorted(plain))}")
    if not errors and study.baseline not in rows:
        errors.append(f"{path}: baseline: no row {study.baseline!r}; rows: {', '.join(rows)}")
    if errors:
        raise ConfigError("\n".join(errors))
    return StudyPlan(path, study, tuple(cells))
