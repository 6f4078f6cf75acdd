"""Where things live: the checkout, the teacher cards, and the harness cache.

A leaf module (it imports nothing from the harness), so any layer can ask for a folder without
pulling in the layers above it.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Where fine-tuned teachers, assembled checkpoints, tokenized data, teacher outputs and students
    go: ``$KD_HARNESS_CACHE``, default ``~/.cache/kd-harness``."""
    return Path(os.environ.get("KD_HARNESS_CACHE", Path.home() / ".cache" / "kd-harness")).expanduser()


def teachers_dir(override: Path | None = None) -> Path:
    """The folder of teacher cards: ``--teachers-dir``, else ``$KD_HARNESS_TEACHERS``, else ``teachers/``."""
    return Path(override or os.environ.get("KD_HARNESS_TEACHERS", REPO_ROOT / "teachers"))
