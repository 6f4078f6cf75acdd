"""Shared fixtures: offline Hugging Face settings, a tiny random BERT teacher card, CLI runner."""
from __future__ import annotations

import os

# Tests never touch the Hub; set before transformers/datasets read their configuration.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURE_GLUE = Path(__file__).resolve().parent / "fixtures" / "glue"
REAL_GLUE = os.path.abspath(os.environ["GLUE_DIR"]) if os.environ.get("GLUE_DIR") else None
needs_glue = pytest.mark.skipif(not REAL_GLUE, reason="set GLUE_DIR to the GLUE folder (../shared/glue)")


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """One harness cache for the session (tokenized data, fine-tuned teachers), like a user's."""
    d = tmp_path_factory.mktemp("kd-cache")
    os.environ["KD_HARNESS_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def tiny_card(tmp_path_factory, cache) -> Path:
    """A randomly initialised 4-layer BERT (hidden 48) with the bert-base-uncased vocabulary of the
    bundled all-MiniLM-L6-v2 tokenizer, saved as a local checkpoint, and a card pointing at it."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from harness.teachers import find_card, load_card

    minilm = load_card(find_card("all-MiniLM-L6-v2"))
    src = minilm.local_checkpoint()
    if src is None:
        pytest.skip("all-MiniLM-L6-v2 is not installed: python -m harness teachers install all-MiniLM-L6-v2")
    d = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(src)
    import torch

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=48, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=96, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    card = d / "tiny-bert.yaml"
    card.write_text(
        "name: tiny-bert\narchitecture: bert\nlayers: 4\nhidden: 48\nheads: 4\n"
        "checkpoint: {path: model}\n"
        "finetune: {epochs: 2, lr: 1.0e-3, batch_size: 16, max_length: 48, max_train_examples: 256}\n")
    return card


def cli_env(extra: dict | None = None) -> dict:
    """The environment of a ``python -m harness`` child: this one's, plus ``extra``."""
    # an in-process DeepSpeed test leaves this process's rendezvous variables set: the child must not
    # think it was started by a launcher, nor reuse the port this process still listens on
    dist_vars = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "CROSS_RANK",
                 "CROSS_SIZE"}
    return {k: v for k, v in os.environ.items() if k not in dist_vars} | {"PYTHONPATH": str(REPO)} | (extra or {})


def harness_cli(*args: str, cwd: Path = REPO, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m harness ...`` for real, as a user would."""
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=cli_env(env))


def wait_for_line(log: Path, proc: subprocess.Popen, text: str, timeout: float = 300) -> None:
    """Wait until ``text`` shows in ``log`` (fails when ``proc`` ends or ``timeout`` seconds pass first)."""
    import time

    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def harness_started(*args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m harness ...`` in the background, its stdout and stderr (unbuffered) into ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, text=True, env=cli_env({"PYTHONUNBUFFERED": "1"} | (env or {})))


def run_record(**fields):
    """A valid RunRecord with small made-up figures; ``fields`` override any top-level field."""
    from harness.run_record import RunRecord

    speed = {"seq_len": 128, "throughput_batch": 32,
             "cpu": {"device": "x86_64", "threads": 2, "dtype": "float32", "latency_ms": 10.0, "throughput": 1.0}}
    base = {"kind": "student", "name": "r", "task": "sst2", "model": "m", "lineage": ["m"], "teachers": [],
            "terms": ["ce"], "seed": 42, "recipe_hash": "0" * 12, "dev": {"dev": {"accuracy": 0.5}}, "score": 0.5,
            "train": {"train_examples": 2000, "steps": 125, "epochs": 2.0, "examples_seen": 4000, "wall_time_s": 1.0,
                      "samples_per_s": 4000.0, "world_size": 1, "precision": "float32", "loss_history": []},
            "params": {"total": 1_000_000, "non_embedding": 500_000}, "size_bytes": 2**20, "speed": speed}
    return RunRecord.model_validate(base | fields)
