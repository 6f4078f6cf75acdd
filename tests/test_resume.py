"""A run killed with SIGKILL resumes from its latest checkpoint, and ends with the record (score, loss
history, predictions) of a run that was never interrupted: bitwise, on CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REAL_GLUE, REPO, cli_env, harness_cli, needs_glue

TWO_PHASES = """\
student: {init: teacher_layers, layers: [0, 2]}
phases:
  - {name: a, objective: [{term: hinton_kd}], training: {epochs: 1}}
  - {name: b, objective: [{term: hinton_kd, alpha: 0.5}]}
training: {epochs: 2, batch_size: 16, lr: 1.0e-3, max_length: 48, max_train_examples: 96, log_every: 2}
speed: {seq_len: 32, throughput_batch: 4, iters: 2}
"""


def _env(cache: Path) -> dict:
    return cli_env({"KD_HARNESS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"})


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


def test_cofinetuning_resumes_bitwise(tmp_path, monkeypatch):
    """MT-BERT co-finetuning has a loop of its own: interrupted after step 7 and resumed from its step-6
    checkpoint, it ends with the losses and weights of an uninterrupted run."""
    import datasets
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    import harness.cofinetune as co
    from harness.engine import init_distributed
    from harness.recipe_parts import Training
    from harness.resume import StageCheckpoint

    init_distributed()

    def models():
        out = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            out.append(BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1,
                                                                num_attention_heads=2, intermediate_size=32)))
        return out

    g = torch.Generator().manual_seed(0)
    rows = [{"idx": i, "input_ids": torch.randint(5, 60, (n,), generator=g).tolist(), "attention_mask": [1] * n,
             "label": i % 2, "length": n} for i, n in enumerate([5, 7, 6, 4, 7, 3, 5, 6] * 4)]
    ds = datasets.Dataset.from_list(rows)
    training = Training(epochs=3, batch_size=8, lr=1e-3, warmup_ratio=0.0, log_every=1)

    def train(folder):
        return co.cofinetune(models(), [ds, ds], [0, 0], False, training, 0, "joint", StageCheckpoint(folder, 3))

    clean, clean_stats = train(tmp_path / "a")
    calls, real = {"n": 0}, co.rank_shard

    def interrupted(batch, rank, world):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # during step 8: the latest checkpoint is step 6
        return real(batch, rank, world)

    monkeypatch.setattr(co, "rank_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b")
    monkeypatch.setattr(co, "rank_shard", real)
    resumed, resumed_stats = train(tmp_path / "b")
    assert [h["loss"] for h in resumed_stats["loss_history"]] == [h["loss"] for h in clean_stats["loss_history"]]
    for a, b in zip(clean, resumed):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_study_does_not_resume_another_commits_checkpoint(tmp_path, capsys):
    """Checkpoints name the commit that wrote them: a plain run resumes one of another commit (and says
    so), a study, whose records claim one commit, trains the stage again."""
    import json

    from harness.resume import LATEST, StageCheckpoint

    folder = tmp_path / "stage0"
    folder.mkdir()
    (folder / LATEST).write_text(json.dumps({"tag": "step200", "done": False, "step": 200, "commit": "aaa"}))
    assert StageCheckpoint(folder, 200, "aaa", strict=True).latest()["step"] == 200  # its own commit
    assert StageCheckpoint(folder, 200, "bbb", strict=False).latest()["step"] == 200
    # (the same folder spelt another way: each folder is reported once per process)
    assert StageCheckpoint(tmp_path / "stage0" / ".." / "stage0", 200, "bbb", strict=True).latest() is None
    out = capsys.readouterr().out
    assert "written by commit aaa" in out and "resuming it anyway" in out and "training the stage from the start" in out
