"""The GPU check's pieces (bench/gpu_check.sh, bench/gpu_kit.py), on the CPU.

The whole smoke mode (``bash bench/gpu_check.sh --smoke``) takes several minutes on 2 cores, too long for
the suite: bench/README.md says how it was run by hand.  Here: the weights' round trip through 16 bits,
the cards that point the harness at a folder, the summary JSON, and the script's failure path (a step
that cannot run is named, the summary still written, at most 8 files in $OUT).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_record

spec = importlib.util.spec_from_file_location("gpu_kit", REPO / "bench" / "gpu_kit.py")
gpu_kit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_kit)


def test_weights_travel_in_fp16_and_come_back_fp32(tiny_card, tmp_path):
    from harness.models import load_classifier
    from harness.tasks import get_task

    src = tiny_card.parent / "model"
    size = gpu_kit.shrink(src, tmp_path / "m")
    original = load_file(src / "model.safetensors")
    small = load_file(tmp_path / "m" / "model.safetensors")
    assert {t.dtype for t in small.values() if t.is_floating_point()} == {torch.float16}
    assert size < 0.6 * sum(p.stat().st_size for p in src.iterdir() if p.is_file())
    assert (tmp_path / "m" / "tokenizer.json").exists() and (tmp_path / "m" / "config.json").exists()

    gpu_kit.widen(tmp_path / "m")
    wide = load_file(tmp_path / "m" / "model.safetensors")
    for key, t in original.items():
        assert wide[key].dtype == t.dtype
        assert torch.equal(wide[key], t.half().float()) if t.is_floating_point() else torch.equal(wide[key], t)
    model = load_classifier(tmp_path / "m", get_task("sst2"))
    assert next(model.parameters()).dtype == torch.float32


def test_cards_point_at_the_folder_and_drop_the_packages(tiny_card, tmp_path):
    from harness.teachers import find_card, load_card

    folder = tiny_card.parent / "model"
    (path,) = gpu_kit.write_cards(tmp_path / "cards", {"all-MiniLM-L6-v2": folder})
    card = load_card(find_card("all-MiniLM-L6-v2", tdir=tmp_path / "cards"))
    original = load_card(REPO / "teachers" / "all-MiniLM-L6-v2.yaml")
    assert card.local_checkpoint() == folder.resolve()
    assert card.checkpoint.package is None and card.install.pip == []
    assert card.checkpoint.hub == original.checkpoint.hub
    assert card.finetune == original.finetune and card.layers == original.layers


def _write_record(folder: Path, **fields) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(run_record(**fields).model_dump_json())


def test_summary_names_failures_and_reads_each_steps_figures(tmp_path):
    work = tmp_path / "work"
    steps = [("stage", "ok", 0), ("e2e", "ok", 0), ("throughput_minilm", "ok", 0), ("throughput_mpnet", "timed_out", 124),
             ("cache_parity", "failed", 1)]
    work.mkdir()
    (work / "steps.jsonl").write_text("".join(json.dumps({"step": s, "status": st, "rc": rc, "wall_s": 2.0,
                                                          "limit_s": 60, "note": ""}) + "\n" for s, st, rc in steps))
    loss = [{"step": 10, "loss": 0.5}, {"step": 20, "loss": 0.4}]
    train = run_record().train.model_dump() | {"loss_history": loss, "teacher_cache": {"status": "built", "teacher_forward_examples_cached": 4000,
                                                                   "teacher_forward_examples_uncached": 0}}
    _write_record(work / "e2e" / "runs" / "a" / "seed0", seed=0, score=0.8)
    _write_record(work / "cache_parity" / "cached" / "runs" / "a" / "seed0", seed=0, score=0.81, train=train)
    off = train | {"loss_history": [{"step": 10, "loss": 0.5}, {"step": 20, "loss": 0.43}]}
    _write_record(work / "cache_parity" / "uncached" / "runs" / "a" / "seed0", seed=0, score=0.80, train=off)
    res = {"examples_s": 100.0, "mfu": "3.0%"}
    (work / "kd_throughput.json").write_text(json.dumps({"pairs": {"minilm": {
        "examples": 256, "epochs": 2, "mean_length": 13.0, "results": {"harness_auto": res | {"precision": "bfloat16"}},
        "ratios_vs_plain_pad_batch": {"harness_auto": 3.0}}}}))

    s = gpu_kit.summarize(work, "smoke", 460)
    assert not s["ok"]
    assert s["failures"] == ["throughput_mpnet: timed_out", "cache_parity: failed", "full_sst2: not run"]
    by_step = {x["step"]: x for x in s["steps"]}
    assert by_step["e2e"]["result"]["students"][0]["score"] == 0.8
    assert by_step["throughput_minilm"]["result"]["results"]["harness_auto"]["mfu"] == "3.0%"
    assert by_step["throughput_mpnet"]["result"] is None
    (seed,) = by_step["cache_parity"]["result"]["seeds"]
    assert seed["diff_points"] == pytest.approx(1.0) and seed["loss_gap_max"] == pytest.approx(0.03)
    assert {"machine", "versions", "git_commit", "wall_s"} <= set(s)
    json.dumps(s)  # all of it serialisable


@pytest.mark.slow
def test_a_step_that_cannot_run_is_named_and_the_summary_still_written(tmp_path):
    """No SST-2 where GLUE_DIR says: staging fails, every step is skipped and named, exit 1."""
    out = tmp_path / "out"
    env = dict(os.environ, GLUE_DIR=str(tmp_path / "no-glue"), TMPDIR=str(tmp_path))
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "smoke" and not summary["ok"]
    assert summary["failures"][0] == "stage: failed"
    assert all(f.endswith("skipped") for f in summary["failures"][1:]) and len(summary["failures"]) == 6
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.log", "records.tar.gz", "summary.json"]  # kd_throughput.json only when it ran
    log = (out / "gpu_check.log").read_text()
    assert "no GLUE folder" in log or "is not installed here" in log  # the teachers are looked up first
    assert not list(tmp_path.glob("gpu-check.*"))  # its work folder removed
