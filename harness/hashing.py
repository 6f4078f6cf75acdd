"""Content hashes of resolved specs: what names a cached teacher, stage, student or record.

A leaf module (it imports nothing from the harness).  A hash sees what changes a model's weights, not
how a run logs or feeds its batches: the operational training fields below are hashed at their
defaults wherever a spec holds them, so changing one reuses cached teachers, stages, students and
records (and hashes from before this rule still match).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

# Training fields that change how a run is logged or fed, not what it computes (loader workers give the
# same batches: tests/test_run.py), with their defaults.  tests/test_recipes.py checks these defaults
# against the Training schema.
OPERATIONAL: dict[str, Any] = {"log_every": 50, "loader_workers": None}
# Keys left out of hashes altogether: settings that say only where a run reports, added after records
# existed whose specs never held them (deepspeed.monitor: curves files, TensorBoard, W&B).
UNHASHED = ("monitor",)


def _operational_at_default(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: OPERATIONAL[k] if k in OPERATIONAL else _operational_at_default(v) for k, v in obj.items()
                if k not in UNHASHED}
    if isinstance(obj, list):
        return [_operational_at_default(v) for v in obj]
    return obj


def spec_hash(spec: dict) -> str:
    """12 hex digits of SHA-256 over the spec's canonical JSON, operational fields at their defaults."""
    canonical = json.dumps(_operational_at_default(spec), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def one_run(resolved: dict, seed: int) -> dict:
    """A resolved recipe as one run of it is: ``training.seed`` that run's seed rather than the list the
    recipe (or a study) asks for, so that a run's hash, cache folders and record do not change when
    other seeds are added beside it."""
    return resolved | {"training": resolved["training"] | {"seed": seed}}
