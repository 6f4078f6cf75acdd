"""Nothing lost, nothing half-read: cache entries carry manifests and damaged ones are rebuilt, two
processes on overlapping recipes train each teacher once and write whole records, records are written
whole or not at all, and bad input or a full disk gives one clear message."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REAL_GLUE, REPO, cli_env, harness_cli, harness_started, needs_glue, run_record, wait_for_line
from harness.integrity import problems, write_manifest
from harness.records import read_record, record_folders, write_record

KD = """\
student: {init: teacher_layers, layers: [0, 2]}
objective:
  - {term: hinton_kd, temperature: 2.0, alpha: 0.5}
training: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_length: 48, max_train_examples: 96}
speed: {seq_len: 32, throughput_batch: 4, iters: 2}
"""


def recipe(tmp: Path, name: str, card: Path) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(f"name: {name}\ntask: sst2\nteachers:\n  - card: {card}\n{KD}")
    return p


def test_manifest_notices_every_kind_of_damage(tmp_path):
    entry = tmp_path / "entry"
    (entry / "sub").mkdir(parents=True)
    (entry / "a.bin").write_bytes(b"abcdef")
    (entry / "sub" / "b.txt").write_text("hello")
    assert problems(entry) == ["no manifest (incomplete, or written before manifests existed)"]
    write_manifest(entry)
    assert problems(entry) == []
    (entry / "a.bin").write_bytes(b"abcdeX")  # same size, other bytes
    assert problems(entry) == ["a.bin: contents differ from the manifest (sha256)"]
    (entry / "a.bin").write_bytes(b"abc")  # truncated
    assert problems(entry) == ["a.bin: 3 bytes, manifest says 6"]
    (entry / "a.bin").unlink()
    (entry / "stray").write_text("x")
    assert problems(entry) == ["a.bin: missing", "stray: not in the manifest"]


def test_record_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    folder = tmp_path / "runs" / "r" / "seed1"
    write_record(folder, {"a": 1}, run_record(score=0.25), {"dev": [[0, 1, 1]]}, {"device": "cpu"})
    real = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        if self.name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        write_record(folder, {"a": 2}, run_record(score=0.75), {"dev": [[0, 0, 1]]}, {"device": "cpu"})
    monkeypatch.undo()
    assert read_record(folder).score == 0.25  # the previous record, intact
    assert record_folders(tmp_path) == [folder]  # the half-written one is not a record
    write_record(folder, {"a": 3}, run_record(score=0.5), {"dev": [[0, 1, 1]]}, {"device": "cpu"})
    assert read_record(folder).score == 0.5 and not folder.with_name("seed1.tmp").exists()


@pytest.mark.parametrize("error, code, says", [
    (OSError(errno.ENOSPC, "No space left on device", "/x/metrics.json"), 3,
     "cannot write /x/metrics.json: No space left on device. Records and cache entries are written whole"),
    (KeyboardInterrupt(), 130, "interrupted: no partial record or cache entry was kept"),
])
def test_full_disk_and_ctrl_c_end_with_one_message(monkeypatch, capsys, error, code, says):
    import harness.results
    from harness.__main__ import main

    def fail(results_dir):
        raise error

    monkeypatch.setattr(harness.results, "build_tables", fail)
    assert main(["tables"]) == code
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


@pytest.mark.parametrize("text, says", [
    ("sentence\tlabel\nfine\t1\nodd\tpositive\n", r"dev.tsv, line 3: label 'positive' is not one of 0, 1"),
    ("sentence\tlabl\nfine\t1\n", r"dev.tsv, line 1: no column 'label'"),
    ("sentence\tlabel\nfine\t1\ncut off\n", r"dev.tsv, line 3: expected 2 tab-separated columns, found 1"),
])
def test_bad_glue_file_names_file_and_line(tmp_path, text, says):
    from harness.tasks import GlueDataError
    from harness.glue_files import load_split

    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text(text)
    with pytest.raises(GlueDataError, match=says):
        load_split("sst2", "dev", tmp_path)


def _entry_file(cache: Path, pattern: str) -> Path:
    """The newest match: the student's own entry (the teacher's tokenization, say, was written first)."""
    found = [p for p in cache.glob(pattern) if p.is_file()]
    assert found, pattern
    return max(found, key=lambda p: p.stat().st_mtime)


@needs_glue
@pytest.mark.slow
def test_damaged_cache_entries_are_rebuilt_and_reported(tmp_path, tiny_card):
    env = {"KD_HARNESS_CACHE": str(tmp_path / "cache")}
    cache, results = tmp_path / "cache", tmp_path / "results"
    args = ("run", str(recipe(tmp_path, "dmg", tiny_card)), "--results-dir", str(results), "--glue-dir", REAL_GLUE)
    first = harness_cli(*args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    ok = harness_cli("cache", "verify", env=env)
    assert ok.returncode == 0 and "BAD" not in ok.stdout, ok.stdout
    # round 1: what a run reads without retraining its teacher
    kinds = {"a trained student": "students/**/model.safetensors", "cached outputs": "teacher_outputs/*/logits.npy",
             "tokenized data": "tokenized/sst2/train-*/data.arrow"}
    _damage_and_rerun(cache, args, env, kinds)
    # round 2: the teacher (a rerun reads it only when its student is trained again)
    _damage_and_rerun(cache, args + ("--force",), env, {"a cached model": "teachers/*/*/*/model.safetensors"})
    assert harness_cli("verify", "--results-dir", str(results)).returncode == 0


def _damage_and_rerun(cache: Path, args: tuple, env: dict, kinds: dict) -> None:
    for pattern in kinds.values():
        f = _entry_file(cache, pattern)
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF  # one flipped byte: same size, other contents
        f.write_bytes(bytes(data))
    bad = harness_cli("cache", "verify", env=env)
    assert bad.returncode == 1 and bad.stdout.count("BAD") == len(kinds), bad.stdout
    again = harness_cli(*args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    for what in kinds:
        assert f"{what} in" in out and "is damaged" in out, (what, out[-3000:])
    fixed = harness_cli("cache", "verify", env=env)
    assert fixed.returncode == 0, fixed.stdout


@needs_glue
@pytest.mark.slow
def test_two_processes_on_overlapping_recipes_train_one_teacher(tmp_path, tiny_card):
    env_extra = {"KD_HARNESS_CACHE": str(tmp_path / "cache")}
    results = tmp_path / "results"
    a, b = recipe(tmp_path, "pa", tiny_card), recipe(tmp_path, "pb", tiny_card)  # one teacher, two students
    procs = []
    for recipes in ([a, b], [b, a]):
        cmd = [sys.executable, "-m", "harness", "run", *map(str, recipes), "--results-dir", str(results),
               "--glue-dir", REAL_GLUE, "--no-tables"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=cli_env(env_extra)))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    log = "\n".join(outs)
    assert log.count("score") >= 3  # one teacher and two students trained, none twice
    assert log.count("[teacher/tiny-bert seed") == 1, log[-4000:]
    for name in ("pa", "pb"):
        assert log.count(f"[{name} seed 42] sst2 score") == 1, log[-4000:]
    assert "waiting: another harness process is building" in log
    teachers = list((results / "runs" / "teachers").rglob("metrics.json"))
    assert len(teachers) == 1
    ver = harness_cli("verify", "--results-dir", str(results))
    assert ver.returncode == 0 and "3 of 3 records" in ver.stdout, ver.stdout


BF16 = """\
student: {init: teacher_layers, layers: [0, 2]}
objective:
  - {term: hinton_kd, temperature: 2.0, alpha: 0.5}
  - {term: hidden_mse, layer_map: [1, 3]}
training: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_length: 48, max_train_examples: 96}
deepspeed: {precision: bf16}
speed: {seq_len: 32, throughput_batch: 4, iters: 2}
"""


@needs_glue
@pytest.mark.slow
def test_bf16_path_runs_on_cpu(tmp_path, tiny_card):
    """The bf16 path without a GPU: autocast over fp32 student weights outside DeepSpeed, bf16 teachers,
    and the teacher-output cache storing bf16 features, so dtype bugs show up before a GPU sees them."""
    p = tmp_path / "bf16.yaml"
    p.write_text(f"name: bf16\ntask: sst2\nteachers:\n  - card: {tiny_card}\n{BF16}")
    cache, results = tmp_path / "cache", tmp_path / "results"
    res = harness_cli("run", str(p), "--results-dir", str(results), "--glue-dir", REAL_GLUE,
                      env={"KD_HARNESS_CACHE": str(cache)})
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((results / "runs" / "bf16" / "seed42" / "metrics.json").read_text())
    assert m["train"]["precision"] == "bfloat16" and "autocast" in m["train"]["precision_mode"]
    assert all(h["loss"] == h["loss"] for h in m["train"]["loss_history"])  # no NaN
    stored = [f.suffix for f in cache.glob("teacher_outputs/*/*") if f.suffix not in (".npy", ".json")]
    assert stored and set(stored) == {".bf16"}, stored
    assert harness_cli("verify", "--results-dir", str(results)).returncode == 0


def test_a_build_lock_left_by_an_interrupted_deepspeed_build_is_removed(tmp_path, monkeypatch, capsys):
    import os
    import time

    from harness.engine import clear_stale_build_locks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    old, fresh = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "deepspeed_other" / "lock"
    for lock in (old, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    clear_stale_build_locks()
    assert not old.exists() and fresh.exists()  # a build going on now keeps its lock
    assert "left 60 min ago by an interrupted build" in capsys.readouterr().out


@needs_glue
@pytest.mark.slow
def test_other_ranks_wait_for_as_long_as_rank_0_waits_on_a_lock(tmp_path, tiny_card, monkeypatch):
    """Rank 0 alone takes the record's lock; while another process holds it, the other ranks wait in a
    barrier.  That wait outlasts the training collectives' timeout (here 8 s) without ending the run."""
    import time

    from filelock import FileLock

    from harness.integrity import lock_path

    monkeypatch.setenv("KD_HARNESS_CACHE", str(tmp_path / "cache"))
    results, log = tmp_path / "results", tmp_path / "run.log"
    p = recipe(tmp_path, "ranks", tiny_card)
    held = FileLock(str(lock_path(results / "runs" / "ranks" / "seed42")))
    held.acquire()
    proc = harness_started("run", str(p), "--results-dir", str(results), "--glue-dir", REAL_GLUE, "--no-tables",
                           "--nprocs", "2", "--master-port", "29563", log=log,
                           env={"KD_HARNESS_CACHE": str(tmp_path / "cache"), "KD_HARNESS_COLLECTIVE_TIMEOUT_S": "8"})
    wait_for_line(log, proc, "waiting: another harness process")
    time.sleep(20)  # more than twice the collectives' timeout
    held.release()
    proc.wait(timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    assert "waiting: another harness process is building ranks seed 42" in text
    assert read_record(results / "runs" / "ranks" / "seed42").train.world_size == 2


def test_a_bad_collective_timeout_is_one_message(tmp_path, tiny_card):
    res = harness_cli("run", str(recipe(tmp_path, "t", tiny_card)), "--results-dir", str(tmp_path / "results"),
                      env={"KD_HARNESS_COLLECTIVE_TIMEOUT_S": "ten minutes"})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "KD_HARNESS_COLLECTIVE_TIMEOUT_S='ten minutes': give the collectives' timeout in seconds" in res.stderr
