"""Teacher outputs computed once per (teacher weights, tokenized data, outputs read) and reused.

A frozen teacher in eval mode gives the same outputs for the same inputs every epoch, seed and
recipe, so a distillation stage need not run it every step.  ``prepare`` runs the teacher once over
the training set and writes what the terms read: logits (fp32, ``logits.npy``) and, per stored
hidden state or Q/K/V projection, one memory-mapped array of all real tokens end to end
(``<name>.<f32|bf16|f16>``, row offsets in ``offsets.npy``).  Features are stored in the precision the
stage computes in, the teacher's own (fp32 on CPU, bf16 on GPUs that have it): a cached run then reads
what the teacher would have produced, rather than a rounding of it that sends training elsewhere (an
fp32 run reading fp16 features ended 0.8 points away from its uncached twin on SST-2).
``CachedTeacher.features(rows, mask)`` turns a batch's rows back into padded
:class:`~harness.features.Features`.

The cache is bypassed, with a log line saying why, when the teacher must see new inputs every step
(MixKD's mixed embeddings, masked-LM inputs) or when it would exceed the size cap.  Folders live in
``$KD_HARNESS_CACHE/teacher_outputs/<key>/``; ``python -m harness cache ls|clear`` manages them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from harness.features import Features, Need, forward_features
from harness.integrity import MANIFEST, intact, locked, write_manifest
from harness.paths import cache_dir

MAX_GB_ENV = "KD_HARNESS_TEACHER_CACHE_MAX_GB"
DEFAULT_MAX_GB = 20.0


def root() -> Path:
    return cache_dir() / "teacher_outputs"


# a feature precision -> (file suffix, numpy storage dtype); numpy has no bfloat16, so its bits go as uint16
STORAGE = {torch.float32: ("f32", np.float32), torch.bfloat16: ("bf16", np.uint16), torch.float16: ("f16", np.float16)}
BY_SUFFIX = {suffix: dtype for dtype, (suffix, _) in STORAGE.items()}


def _to_numpy(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    x = x.to("cpu", dtype)
    return x.view(torch.int16).numpy().view(np.uint16) if dtype == torch.bfloat16 else x.numpy()


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(a)
    return t.view(torch.int16).view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _weights_id(source: Path) -> list:
    """A retrained teacher (same folder, new weights) must miss: name, size and mtime of its weights."""
    source = Path(source)
    files = sorted(source.glob("*.safetensors")) + sorted(source.glob("*.bin"))
    return [str(source.resolve())] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _data_id(ds) -> str:
    """The tokenized inputs themselves (ids, token types, row order): tokenizer and max length included."""
    h = hashlib.sha256()
    for col in ("input_ids", "token_type_ids"):
        if col in ds.column_names:
            arr = ds.data.column(col).combine_chunks()
            h.update(col.encode())
            h.update(np.asarray(arr.offsets).tobytes())
            h.update(np.asarray(arr.values).tobytes())
    return h.hexdigest()


def stored_names(need: Need) -> list[str]:
    return [f"h{i}" for i in sorted(need.layers)] + [f"{a}{b}" for b in sorted(need.qkv) for a in "qkv"]


def cache_key(source: Path, ds, need: Need, dtype: torch.dtype = torch.float32) -> str:
    spec = {"teacher": _weights_id(source), "data": _data_id(ds), "stored": stored_names(need),
            "dtype": STORAGE[dtype][0], "format": 2}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def estimate_bytes(ds, need: Need, hidden: int, dtype: torch.dtype = torch.float32) -> int:
    tokens = int(np.sum(ds["length"]))
    return tokens * hidden * np.dtype(STORAGE[dtype][1]).itemsize * len(stored_names(need))


@dataclass
class CachedTeacher:
    folder: Path
    model: nn.Module  # kept for MPNet's position bias, which depends on the length only
    heads: int
    num_layers: int

    def __post_init__(self):
        meta = json.loads((self.folder / "meta.json").read_text())
        self.names = meta["stored"]
        self.stored = BY_SUFFIX[meta["dtype"]]
        suffix, np_dtype = STORAGE[self.stored]
        self.logits = np.load(self.folder / "logits.npy", mmap_mode="r")
        self.offsets = np.load(self.folder / "offsets.npy")
        self.arrays = {n: np.memmap(self.folder / f"{n}.{suffix}", dtype=np_dtype, mode="r",
                                    shape=(int(self.offsets[-1]), meta["hidden"])) for n in self.names}

    def features(self, rows: np.ndarray, mask: torch.Tensor, dtype: torch.dtype) -> Features:
        """Padded Features for dataset rows ``rows`` (positions, in batch order); mask [B, T]."""
        dev = mask.device
        b, t = mask.shape
        logits = torch.from_numpy(np.asarray(self.logits[rows])).to(dev)

        def padded(name: str) -> torch.Tensor:
            arr = self.arrays[name]
            out = np.zeros((b, t, arr.shape[1]), dtype=arr.dtype)  # padding: zeros (bf16's bits too)
            for j, r in enumerate(rows):
                lo, hi = self.offsets[r], self.offsets[r + 1]
                out[j, :hi - lo] = arr[lo:hi]
            return _from_numpy(out, self.stored).to(dev, dtype=dtype)

        hidden = None
        if any(n.startswith("h") for n in self.names):
            hidden = tuple(padded(f"h{i}") if f"h{i}" in self.arrays else None for i in range(self.num_layers + 1))
        qkv = {a: {int(n[1:]): padded(n) for n in self.names if n[0] == a} for a in "qkv"}
        bias = None
        rel = getattr(self.model.base_model.encoder, "relative_attention_bias", None)
        if qkv["q"] and rel is not None:  # MPNet: relative position bias for this length
            with torch.no_grad():
                bias = self.model.base_model.encoder.compute_position_bias(mask.new_zeros(1, t, 1))[:1].to(dtype)
        return Features(logits=logits, mask=mask, heads=self.heads, hidden=hidden,
                        q=qkv["q"], k=qkv["k"], v=qkv["v"], position_bias=bias)


@torch.inference_mode()
def _build(model: nn.Module, ds, need: Need, collate, folder: Path, batch_size: int, device: torch.device,
           dtype: torch.dtype, desc: str) -> None:
    lengths = np.asarray(ds["length"])
    offsets = np.zeros(len(ds) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    hidden = model.config.hidden_size
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = stored_names(need)
    suffix, np_dtype = STORAGE[dtype]
    arrays = {n: np.memmap(tmp / f"{n}.{suffix}", dtype=np_dtype, mode="w+", shape=(int(offsets[-1]), hidden))
              for n in names}
    logits = None
    order = np.argsort(-lengths, kind="stable")  # long first: little padding
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, dynamic_ncols=True):
        rows = order[start:start + batch_size]
        batch = collate([ds[int(i)] for i in rows])
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        f = forward_features(model, inputs, need)
        lg = f.logits.float().cpu().numpy()
        if logits is None:
            logits = np.zeros((len(ds), lg.shape[1]), dtype=np.float32)
        logits[rows] = lg
        for n in names:
            x = _to_numpy(f.hidden[int(n[1:])] if n[0] == "h" else getattr(f, n[0])[int(n[1:])], dtype)
            for j, r in enumerate(rows):
                arrays[n][offsets[r]:offsets[r + 1]] = x[j, :lengths[r]]
    for a in arrays.values():
        a.flush()
    np.save(tmp / "logits.npy", logits)
    np.save(tmp / "offsets.npy", offsets)
    (tmp / "meta.json").write_text(json.dumps({"stored": names, "hidden": hidden, "dtype": suffix, "examples": len(ds),
                                               "created": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    write_manifest(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def prepare(model: nn.Module, source: Path, ds, need: Need, collate, device: torch.device, batch_size: int,
            is_main: bool, barrier, label: str) -> tuple[CachedTeacher | None, str]:
    """(cached teacher, how) where how is 'hit', 'built' or 'off: <why>'.  Rank 0 builds; all read.
    Features are stored in the precision of ``model``'s weights: the one the stage runs it in."""
    dtype = next(model.parameters()).dtype
    size = estimate_bytes(ds, need, model.config.hidden_size, dtype)
    cap = float(os.environ.get(MAX_GB_ENV, DEFAULT_MAX_GB)) * 2**30
    if size > cap:
        return None, f"off: would take {size / 2**30:.1f} GiB > cap {cap / 2**30:.1f} GiB ({MAX_GB_ENV})"
    folder = root() / cache_key(source, ds, need, dtype)
    how = "hit" if (folder / MANIFEST).exists() else "built"
    if is_main:  # under the set's lock: another process building it is waited for, then read
        with locked(folder, f"{label}'s cached outputs"):
            if not intact(folder, f"{label}'s cached outputs"):
                how = "built"
                _build(model, ds, need, collate, folder, batch_size, device, dtype, desc=f"caching {label} outputs")
    barrier()
    return CachedTeacher(folder, model, model.config.num_attention_heads, model.config.num_hidden_layers), how


def listing() -> list[dict]:
    out = []
    for d in sorted(root().glob("*")) if root().exists() else []:
        meta = d / "meta.json"
        if meta.exists():
            m = json.loads(meta.read_text())
            out.append({"key": d.name, "bytes": sum(f.stat().st_size for f in d.iterdir()), **m})
    return out


def clear() -> int:
    n = sum(f.stat().st_size for f in root().rglob("*") if f.is_file()) if root().exists() else 0
    shutil.rmtree(root(), ignore_errors=True)
    return n
