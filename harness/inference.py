"""A run's trained model outside training: where it is, how long its inputs were, its logits on a split.

``export`` (its ONNX parity check) and ``submit`` (test-set predictions) read models this way.  Inputs
are tokenized as the run's own dev evaluation did (same tokenizer, truncated at the recipe's
``max_length``), so a model scores here what its record says.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import yaml

from harness.integrity import model_id, problems
from harness.paths import cache_dir
from harness.run_record import RunRecord
from harness.schema import ConfigError


def model_folder(record_dir: Path, m: RunRecord) -> Path:
    """The trained model a record scored, checked: present here, undamaged, the same weights."""
    if m.kind == "teacher":  # its cache folder has the record folder's name (the spec key)
        folder = cache_dir() / "teachers" / m.model / m.task / record_dir.name
    elif m.checkpoint is None:
        raise ConfigError(f"{record_dir}: the record names no model folder (written before records did)")
    else:
        folder = Path(m.checkpoint)
    found = problems(folder)
    if found == ["missing"]:
        raise ConfigError(f"{record_dir}: its model {folder} is not on this machine (the record was trained "
                          f"elsewhere, or the cache {cache_dir()} was cleared); train it here again with "
                          "`python -m harness run <its recipe>`, which replaces the record")
    if found:
        raise ConfigError(f"{record_dir}: its model {folder} is damaged ({'; '.join(found)})")
    if m.instance is not None and model_id(folder) != m.instance:
        raise ConfigError(f"{record_dir}: the model in {folder} is not the one this record scored (its weights "
                          "were trained again since); rerun the recipe to get a record of this model")
    return folder


def max_length(record_dir: Path) -> int:
    """The max_length the record's model was evaluated with: its last phase's (a student or stage), or
    its fine-tuning's (a teacher), from the resolved recipe stored with the record."""
    r = yaml.safe_load((record_dir / "recipe.yaml").read_text())
    if "kind" in r:  # a teacher's spec (a student's resolved recipe has no kind): alone or co-finetuned
        return (r["finetune"] if "finetune" in r else r["cofinetune"]["settings"])["max_length"]
    phases = r["phases"] or []
    last = phases[-1]["training"] if phases else {}
    return last["max_length"] if "max_length" in last else r["training"]["max_length"]


def batches(tok, ds, length: int, batch_size: int) -> Iterator[tuple[np.ndarray, dict]]:
    """(row positions, padded numpy inputs) over a split with columns text_a[, text_b], longest rows
    first (less padding); every row once."""
    pair = "text_b" in ds.column_names
    enc = tok(list(ds["text_a"]), list(ds["text_b"]) if pair else None, truncation=True, max_length=length)
    rows = [{k: enc[k][i] for k in tok.model_input_names if k in enc} for i in range(len(ds))]
    order = np.argsort([-len(r["input_ids"]) for r in rows], kind="stable")
    for start in range(0, len(order), batch_size):
        pos = order[start:start + batch_size]
        yield pos, dict(tok.pad([rows[i] for i in pos], return_tensors="np"))


def logits(run: Callable[[dict], np.ndarray], tok, ds, length: int, batch_size: int = 64) -> np.ndarray:
    """[rows, outputs] logits of ``run(numpy inputs) -> numpy logits`` over a split, in its order."""
    out = None
    for pos, inputs in batches(tok, ds, length, batch_size):
        got = run(inputs)
        out = np.zeros((len(ds), got.shape[-1]), dtype=np.float32) if out is None else out
        out[pos] = got
    return out if out is not None else np.zeros((0, 1), dtype=np.float32)


def torch_runner(model) -> Callable[[dict], np.ndarray]:
    """A PyTorch model as ``run`` for :func:`logits` (fp32, on the CPU, no gradient)."""
    model = model.float().cpu().eval()

    @torch.inference_mode()
    def run(inputs: dict) -> np.ndarray:
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.float().numpy()
    return run


def predictions(raw: np.ndarray, labels: tuple[str, ...] | None) -> list:
    """Logits to predictions: a class id (classification), a score (regression: one output)."""
    return raw[:, 0].tolist() if labels is None else raw.argmax(-1).tolist()
