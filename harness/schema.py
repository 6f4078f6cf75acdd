"""Strict YAML -> pydantic loading shared by recipes and teacher cards.

Every problem becomes one ``ConfigError`` whose message names the file and the field path
(``training.lr``) and says what is allowed.  YAML is read with ``yaml.safe_load`` only, so tags such as
``!!python/object/apply`` are refused by the parser itself and nothing in a file is ever executed.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, model_validator

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A recipe or card is invalid; the message is meant to be shown as is, without a traceback."""


class Strict(BaseModel):
    """Base for every schema model: unknown keys are errors, with a did-you-mean."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = set(cls.model_fields)
            for key in data:
                if key not in allowed:
                    close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ValueError(
                        f"unknown key {key!r}{hint}; allowed keys: {', '.join(sorted(allowed))}"
                    )
        return data


def parse_yaml(text: str) -> Any:
    """Plain YAML data from ``text``, with libyaml's loader where PyYAML has it (several times faster:
    ``study plan`` reads hundreds of recipes and records), else PyYAML's own; safe either way."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def read_yaml(path: Path) -> dict:
    """Parse a YAML file safely into a mapping, or raise ConfigError naming the file and position."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = parse_yaml(text)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}{where}: {e.problem}. Only plain YAML data is allowed "
            "(no !!python or other language tags; nothing in a recipe is executed)"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}{where}: YAML syntax error: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _loc(loc: tuple) -> str:
    """('training', 'lr') -> 'training.lr'; list indices as [i]."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(path: Path, err: pydantic.ValidationError) -> str:
    lines = []
    for e in err.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        got = ""
        if e["type"] not in ("missing", "value_error") and "input" in e and not isinstance(e["input"], dict):
            got = f" (got {e['input']!r})"
        lines.append(f"{_loc(e['loc'])}: {msg}{got}")
    head = f"{path}: " if len(lines) == 1 else f"{path}: {len(lines)} problems:\n  "
    return head + "\n  ".join(lines)


def parse(model: type[M], data: dict, path: Path, context: dict | None = None) -> M:
    try:
        return model.model_validate(data, context=context)
    except pydantic.ValidationError as e:
        raise ConfigError(format_validation_error(path, e)) from None


def load(model: type[M], path: Path, context: dict | None = None) -> M:
    return parse(model, read_yaml(path), path, context)
