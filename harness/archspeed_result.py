"""Reading a speed measurement (:func:`harness.archspeed.measure`'s result, a study's ``speed.json``):
rows by kind, takes combined, layer-only twins that contradict each other, speed-ups within one result."""
from __future__ import annotations

import itertools
import statistics

LAYER_FIELDS = ("num_hidden_layers", "n_layers", "num_layers")  # BERT-likes, DistilBERT, others


def combine_takes(takes: list[list[dict]]) -> list[dict]:
    """Each row kind's figures as the median over the takes that measured it (one take: unchanged)."""
    out = []
    for first in takes[0]:
        same = [r for rows in takes for r in rows if row_kind(r) == row_kind(first)]
        out.append(first | {f: statistics.median(r[f] for r in same)
                            for f in ("median_ms", "p25_ms", "p75_ms", "mean_ms", "throughput", "peak_mib")
                            if f in first} | {"takes": len(same)})
    return out


def row_kind(r: dict) -> tuple:
    """(device, dtype, batch, lengths): what a row measured."""
    return r["device"], r["dtype"], r["batch"], r["lengths"]


def find_row(entry: dict, device: str = "cpu", dtype: str = "float32", batch: int = 1,
             lengths: str = "fixed") -> dict:
    """The row of one architecture's entry for (device, dtype, batch, lengths); KeyError if it has none."""
    for r in entry["rows"]:
        if (r["device"], r["dtype"], r["batch"], r["lengths"]) == (device, dtype, batch, lengths):
            return r
    raise KeyError(f"no row {device}/{dtype}/batch {batch}/{lengths}")


def model_speed(speed: dict, model: str) -> dict | None:
    """The entry of ``speed`` (a study's ``speed.json``) that measured the architecture of ``model`` (a
    card or student label); None where none did."""
    return next((e for e in speed["archs"].values() if model in e["names"]), None)


def _depth(fields: dict) -> tuple[str, int] | None:
    return next(((n, fields[n]) for n in LAYER_FIELDS if n in fields), None)


def _without_depth(fields: dict) -> dict:
    depth = _depth(fields)
    return {k: v for k, v in fields.items() if depth is None or k != depth[0]}


def twins(archs: dict, key: str) -> list[str]:
    """The architectures that differ from ``key``'s in their number of layers at most (itself included)."""
    return [k for k, e in archs.items() if _without_depth(e["fields"]) == _without_depth(archs[key]["fields"])]


def inconsistent(result: dict) -> list[tuple[str, str]]:
    """(shallower, deeper) pairs of architectures that differ only in their number of layers, where the
    shallower one's median is the larger in any row kind both have: a measurement error."""
    archs, pairs = result["archs"], []
    for a, b in itertools.permutations(sorted(archs), 2):
        fa, fb = archs[a]["fields"], archs[b]["fields"]
        depth = _depth(fa)
        if depth is None or depth[0] not in fb or depth[1] >= fb[depth[0]] or _without_depth(fa) != _without_depth(fb):
            continue
        deeper = {row_kind(r): r["median_ms"] for r in archs[b]["rows"]}
        if any(r["median_ms"] > deeper.get(row_kind(r), float("inf")) for r in archs[a]["rows"]):
            pairs.append((a, b))
    return pairs


def speedups(result: dict, reference_key: str, device: str = "cpu", dtype: str = "float32", batch: int = 1,
             lengths: str = "fixed") -> dict[str, float]:
    """Each architecture's speed-up over ``reference_key`` (reference median / its median, > 1 is faster),
    from the one row kind given and from this one result only."""
    archs = result["archs"]
    reference = find_row(archs[reference_key], device, dtype, batch, lengths)["median_ms"]
    return {key: reference / find_row(entry, device, dtype, batch, lengths)["median_ms"]
            for key, entry in archs.items()}
