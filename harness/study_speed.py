"""A study's speed table: one row per architecture, from the study's one measurement (``speed.json``,
:mod:`harness.archspeed`), never from the records' own per-run figures.

Every figure of a row, and every speed-up between rows, comes from that one sitting: fresh process per
architecture, threads pinned and stated, median and interquartile range over the timed passes (over the
takes, where a family was measured again).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.archspeed_result import find_row, marks, row_kind, speedups
from harness.tasks import get_task

DTYPES = {("cpu", "float32"): "CPU fp32", ("cpu", "bfloat16"): "CPU bf16", ("cuda", "bfloat16"): "GPU bf16",
          ("cuda", "float32"): "GPU fp32"}


def reference_key(result: dict, teachers: set[str]) -> str:
    """The architecture speed-ups are against: a teacher's (the largest, if several), else the largest."""
    archs = result["archs"]
    pool = [k for k, e in archs.items() if set(e["names"]) & teachers] or list(archs)
    return max(pool, key=lambda k: archs[k]["params"])


def long_frame(result: dict) -> pd.DataFrame:
    """Every measured row: architecture, device, dtype, batch, lengths, median, quartiles, ex/s, memory."""
    lines, flagged = [], marks(result)
    for key, e in result["archs"].items():
        memory = {row_kind(m): m for m in e["memory"]}
        for r in e["rows"]:
            peak = memory.get(row_kind(r), {})
            lines.append({"arch": key, "label": e["label"], "models": "; ".join(e["names"]), "params": e["params"],
                          "threads": e["threads"], "inconsistent_with": "; ".join(flagged.get(key, []))} | r
                         | {"peak_mib": peak.get("peak_mib"), "peak_of": peak.get("peak_of")})
    return pd.DataFrame(lines)


def _fmt(row: dict) -> str:
    return f"{row['median_ms']:.1f} [{row['p25_ms']:.1f}–{row['p75_ms']:.1f}]"


def _columns(entry: dict, tasks: list[str], settings: dict) -> dict[str, str]:
    """One architecture's table cells, for each precision it was measured in."""
    out, one, many, length = {}, settings["batches"][0], settings["batches"][-1], settings["length"]
    for (device, dtype), name in DTYPES.items():
        try:
            small, large = find_row(entry, device, dtype, one), find_row(entry, device, dtype, many)
        except KeyError:
            continue  # not measured on this machine (no GPU, or no native bf16)
        out[f"{name} b{one} L{length} ms [IQR]"] = _fmt(small)
        out[f"{name} b{many} L{length} ex/s"] = f"{large['throughput']:.0f}"
        dev = []
        for t in tasks:
            try:
                dev.append(f"{get_task(t).display} {find_row(entry, device, dtype, many, f'dev:{t}')['throughput']:.0f}")
            except KeyError:
                continue
        if dev:
            out[f"{name} b{many} dev ex/s"] = "; ".join(dev)
        try:
            memory = find_row({"rows": entry["memory"]}, device, dtype, many)
            out[f"{name} peak MiB (b{many} L{length})"] = f"{memory['peak_mib']:.0f}"
        except KeyError:
            pass
    return out


def speed_frame(result: dict, tasks: list[str], teachers: set[str]) -> pd.DataFrame:
    ref = reference_key(result, teachers)
    ups = speedups(result, ref)
    rows, flagged = [], marks(result)
    for key, e in sorted(result["archs"].items(), key=lambda kv: -kv[1]["params"]):
        r = {"Architecture": e["label"] + (" ⚠" if key in flagged else ""), "Models": ", ".join(e["names"]),
             "Params (M)": f"{e['params'] / 1e6:.1f}"} | _columns(e, tasks, result["settings"])
        r[f"Speed-up vs {result['archs'][ref]['label']} (CPU fp32 b{result['settings']['batches'][0]} "
          f"L{result['settings']['length']})"] = f"{ups[key]:.2f}x"
        rows.append(r)
    return pd.DataFrame(rows).fillna("")


def _cpus(result: dict) -> str:
    found = sorted({tuple(e["cpus"]) for e in result["archs"].values()})
    return " / ".join(",".join(map(str, c)) for c in found)


def _dev_note(settings: dict) -> str:
    about = settings.get("dev_lengths")  # absent from measurements taken before it was recorded
    if not about:
        return ""
    return " Dev lengths: " + "; ".join(
        f"{get_task(t).display} {a['split']} ({a['examples']} examples, {a['tokenizer']} tokenizer, at most "
        f"{a['max_length']}: mean {a['mean']}, median {a['median']}, max {a['max']})" for t, a in about.items()) + "."


def _width_note(settings: dict) -> str:
    if not settings.get("warm_every_width"):  # absent from measurements taken before the worker did it
        return ""
    return " (and, before timing, one pass at every further batch width the timed ones have)"


def write_speed(result: dict, tasks: list[str], teachers: set[str], folder: Path) -> list[Path]:
    m, s = result["machine"], result["settings"]
    rounds = max(len(e["takes"]) for e in result["archs"].values())
    notes = [f"Measured in {rounds} rounds, each architecture once per round in a fresh process, in a shuffled "
             f"order each round, with {m['threads']} threads and no inter-op threads, the process pinned to CPUs "
             f"{_cpus(result)}, on {m['cpu']}{' and ' + m['gpu'] if m['gpu'] else ''} (torch {m['torch']}, "
             f"transformers {m['transformers']}), {m['started']} to {m['finished']}: {s['warmup']} warm-up then "
             f"{s['passes']} timed passes per figure and round{_width_note(s)}; median [25th–75th percentile] over the pooled "
             "passes of every round; ex/s: examples over the time the timed passes took. Random token ids; "
             f"L{s['length']}: every example {s['length']} tokens; dev: batches of the task's dev-set lengths drawn "
             "at random with replacement (the same for every architecture), each padded to its longest, not "
             "sorted by length as the harness's own evaluation batches are." + _dev_note(s)
             + " Speed-ups: ratios of these medians, from one measurement. bf16: autocast over fp32 weights.",
             "Peak MiB: " + "; ".join(v for k, v in result["peak_of"].items()
                                      if any(r["peak_of"] == k for e in result["archs"].values() for r in e["memory"]))
             + "."]
    if marks(result):
        notes.append("⚠: measured slower than a deeper model of the same width, or a deeper one more than its "
                     "depth ratio x 1.5 slower, in some row, even after two more rounds of every architecture (a noisy "
                     "machine); do not read its speed-ups.")
    table = speed_frame(result, tasks, teachers)
    md = folder / "speed.md"
    md.write_text("<!-- generated by kd-harness from speed.json; do not edit -->\n\n"
                  + table.to_markdown(index=False, disable_numparse=True) + "\n\n" + "\n".join(f"- {n}" for n in notes)
                  + "\n")
    csv = folder / "speed.csv"
    long_frame(result).to_csv(csv, index=False)
    return [md, csv]
