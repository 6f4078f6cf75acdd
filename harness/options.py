"""How ``harness run`` was asked to run: where records go, where GLUE is, what to reuse."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Options:
    results_dir: Path  # records under <results_dir>/runs, tables beside them
    glue_dir: Path | None  # a local GLUE folder; None: the Hub
    teachers_dir: Path | None = None  # teacher cards; None: teachers/ of the checkout
    force: bool = False  # rerun even when a record of the same resolved recipe exists
    teacher_cache: bool = True  # read teacher outputs from the on-disk cache
    checkpoint_every: int = 200  # optimiser steps between checkpoints of a training stage (and each epoch end)
    keep_checkpoints: bool = False  # keep a run's checkpoints once its model and record are written
    # a study run: the code state (records.code_state) every record must come from.  A record (or a cached teacher or stage) of
    # the same spec from another commit is trained again, and a record of this commit is reused even
    # when its model is not in this cache (a study's records are its claims, committed with it)
    study_commit: str | None = None
