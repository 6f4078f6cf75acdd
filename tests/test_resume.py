"""A run killed with SIGKILL resumes from its latest checkpoint, and ends with the record (score, loss
history, predictions) of a run that was never interrupted: bitwise, on CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REAL_GLUE, REPO, harness_cli, needs_glue

TWO_PHASES = """\
student: {init: teacher_layers, layers: [0, 2]}
phases:
  - {name: a, objective: [{term: hinton_kd}], training: {epochs: 1}}
  - {name: b, objective: [{term: hinton_kd, alpha: 0.5}]}
training: {epochs: 2, batch_size: 16, lr: 1.0e-3, max_length: 48, max_train_examples: 96, log_every: 2}
speed: {seq_len: 32, throughput_batch: 4, iters: 2}
"""


def _env(cache: Path) -> dict:
    import os

    dist_vars = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE"}
    return {k: v for k, v in os.environ.items() if k not in dist_vars} | {
        "PYTHONPATH": str(REPO), "KD_HARNESS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}


def run_until(args: list[str], cache: Path, marker: str, nth: int) -> str:
    """Start ``harness run``; SIGKILL it right after the ``nth`` stdout line containing ``marker``."""
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO, env=_env(cache), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen, out = 0, []
    for line in proc.stdout:
        out.append(line)
        seen += marker in line
        if seen == nth:
            proc.kill()
            break
    proc.wait(timeout=60)
    assert seen == nth, "".join(out)[-3000:]
    return "".join(out)


def record(results: Path, name: str) -> tuple[dict, list[str]]:
    folder = next((results / "runs" / name).rglob("metrics.json")).parent
    m = json.loads((folder / "metrics.json").read_text())
    return m, (folder / "predictions" / "dev.tsv").read_text().splitlines()


@needs_glue
@pytest.mark.slow
def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path, tiny_card):
    p = tmp_path / "twophase.yaml"
    p.write_text(f"name: twophase\ntask: sst2\nteachers:\n  - card: {tiny_card}\n{TWO_PHASES}")
    common = [str(p), "--glue-dir", REAL_GLUE, "--checkpoint-every", "3", "--no-tables"]
    clean = harness_cli("run", *common, "--results-dir", str(tmp_path / "clean"), env=_env(tmp_path / "c1"))
    assert clean.returncode == 0, clean.stderr[-3000:]

    cache, results = tmp_path / "c2", tmp_path / "killed"
    args = ["run", *common, "--results-dir", str(results)]
    # killed while fine-tuning the teacher, then in the student's second phase (the first one done)
    run_until(args, cache, "] checkpoint at step", 2)
    second = run_until(args, cache, "b: 2L-from-tiny-bert] checkpoint at step", 1)
    assert "train teacher tiny-bert on SST-2] resuming from step 6 of" in second
    last = harness_cli(*args, env=_env(cache))
    assert last.returncode == 0, last.stderr[-3000:]
    assert "a: 2L-from-tiny-bert] trained before it was interrupted: its final weights restored" in last.stdout
    assert "b: 2L-from-tiny-bert] resuming from step 3 of" in last.stdout

    for name in ("twophase", "teachers"):
        (a, preds_a), (b, preds_b) = record(tmp_path / "clean", name), record(results, name)
        assert a["score"] == b["score"] and preds_a == preds_b, name
        strip = lambda st: [{k: v for k, v in s.items() if k not in ("wall_time_s", "samples_per_s", "teacher_cache")}
                            for s in st.get("phases", [st])]  # noqa: E731
        # every logged loss bit for bit (time differs, and the resumed run found the teacher outputs cached)
        assert strip(a["train"]) == strip(b["train"]), name
    assert not any((cache / "checkpoints").iterdir())  # deleted once the runs finished
