"""A recipe's raw data from YAML files: ``defaults`` (shared partials merged in order) and ``--set``
overrides.  Plain data merging: nothing in the YAML is executed (``read_yaml`` is a safe loader)."""
from __future__ import annotations

from pathlib import Path

import yaml

from harness.schema import ConfigError, read_yaml


def read_with_defaults(path: Path, _seen: tuple = ()) -> dict:
    """The recipe's YAML merged over the files it names in ``defaults`` (a path or a list, relative to
    it, merged in order; mappings merge key by key, anything else is replaced).  Lets a family of
    recipes keep shared settings in one file; the merge is plain data, nothing is executed."""
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: defaults: circular ({' -> '.join(map(str, _seen))})")
    data = read_yaml(path)
    refs = data.pop("defaults", [])
    merged: dict = {}
    for ref in [refs] if isinstance(refs, str) else refs:
        base = path.parent / ref
        if not base.is_file():
            raise ConfigError(f"{path}: defaults: no file {base}")
        merged = _merge(merged, read_with_defaults(base, _seen + (path.resolve(),)))
    return _merge(merged, data)


def apply_override(data: dict, kv: str, path: Path) -> None:
    """``training.lr=1e-4`` or ``teachers.0.finetune={max_train_examples: 2000}`` into the raw recipe."""
    key, sep, raw = kv.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {kv!r}: expected KEY=VALUE, e.g. training.max_train_examples=2000")
    value = yaml.safe_load(raw)
    node, parts = data, key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{path}: --set {key}: '{'.'.join(parts[:i])}' is a list of {len(node)}; "
                                  f"'{part}' is not an index in it")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"{path}: --set {key}: '{'.'.join(parts[:i])}' is not a mapping")
        if last:
            node[part] = _merge(node[part], value) if isinstance(value, dict) and isinstance(
                node[part] if isinstance(node, list) else node.get(part), dict) else value
        else:
            if isinstance(node, dict) and part not in node:
                node[part] = {}
            node = node[part]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
