"""Reading a speed measurement (:func:`harness.archspeed.measure`'s result, a study's ``speed.json``):
rows by kind, takes combined, layer-only twins that contradict each other, speed-ups within one result."""
from __future__ import annotations

import itertools
import statistics

LAYER_FIELDS = ("num_hidden_layers", "n_layers", "num_layers")  # BERT-likes, DistilBERT, others


def combine_takes(takes: list[list[dict]]) -> list[dict]:
    """Each row kind's figures over every take that measured it: median, quartiles, mean and ex/s over
    the pooled timed passes where the rows carry them (``times_ms``), else the median of the takes'."""
    out = []
    for first in takes[0]:
        same = [r for rows in takes for r in rows if row_kind(r) == row_kind(first)]
        if all("times_ms" in r for r in same):
            times = [t for r in same for t in r["times_ms"]]
            p25, median, p75 = statistics.quantiles(times, n=4, method="inclusive")
            figures = {"median_ms": median, "p25_ms": p25, "p75_ms": p75,
                       "mean_ms": statistics.fmean(times), "throughput": first["batch"] * len(times) / sum(times) * 1e3,
                       "passes": len(times)}
        else:
            figures = {f: statistics.median(r[f] for r in same)
                       for f in ("median_ms", "p25_ms", "p75_ms", "mean_ms", "throughput") if f in first}
        # a take's own peak memory depends on the rows before it in its process: the result's "memory" has it
        keep = {k: v for k, v in first.items() if k not in ("times_ms", "peak_mib", "peak_of")}
        out.append(keep | {k: round(v, 4) for k, v in figures.items()} | {"takes": len(same)})
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


# A deeper twin may take up to its depth ratio times this long before it is flagged.  Not 1: on this
# CPU all-MiniLM-L6-v2 (6 blocks) took 2.0-2.3 times as long as its 3 blocks in most rows, in each of 5
# rounds (results/studies/zoo/speed.json): more layers' weights than the cache holds cost more per layer.
DEPTH_SLACK = 1.5


def inconsistent(result: dict) -> list[tuple[str, str]]:
    """(shallower, deeper) pairs of architectures that differ only in their number of layers, where, in
    any row kind both have, the shallower one's median is the larger, or the deeper one's is more than
    its depth ratio (x DEPTH_SLACK) the shallower one's: a pass costs a fixed part plus a part per
    layer (somewhat more per layer once the weights outgrow the cache), so neither can happen but
    through a measurement error."""
    archs, pairs = result["archs"], []
    for a, b in itertools.permutations(sorted(archs), 2):
        fa, fb = archs[a]["fields"], archs[b]["fields"]
        depth = _depth(fa)
        if depth is None or depth[0] not in fb or depth[1] >= fb[depth[0]] or _without_depth(fa) != _without_depth(fb):
            continue
        bound = fb[depth[0]] / depth[1] * DEPTH_SLACK
        deeper = {row_kind(r): r["median_ms"] for r in archs[b]["rows"]}
        if any(row_kind(r) in deeper and not r["median_ms"] <= deeper[row_kind(r)] <= r["median_ms"] * bound
               for r in archs[a]["rows"]):
            pairs.append((a, b))
    return pairs


def marks(result: dict) -> dict[str, list[str]]:
    """Each architecture of an :func:`inconsistent` pair -> the ones it contradicts, derived from the
    rows on every read, so a table always applies the check of the code that renders it."""
    out: dict[str, list[str]] = {}
    for shallow, deep in inconsistent(result):
        out.setdefault(shallow, []).append(deep)
        out.setdefault(deep, []).append(shallow)
    return out


def speedups(result: dict, reference_key: str, device: str = "cpu", dtype: str = "float32", batch: int = 1,
             lengths: str = "fixed") -> dict[str, float]:
    """Each architecture's speed-up over ``reference_key`` (reference median / its median, > 1 is faster),
    from the one row kind given and from this one result only."""
    archs = result["archs"]
    reference = find_row(archs[reference_key], device, dtype, batch, lengths)["median_ms"]
    return {key: reference / find_row(entry, device, dtype, batch, lengths)["median_ms"]
            for key, entry in archs.items()}
