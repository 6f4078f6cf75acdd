"""``python -m harness plot RUN_DIR``: a run record's training curves as one PNG (matplotlib, Agg).

From the record's ``curves.csv`` (:mod:`harness.curves`): loss and each term's, learning rate,
examples/s and the teachers' weights, against examples trained on; the stages of a run with several
phases (or progressive blocks) lie end to end, a dotted line between two.  A record from before curves
were kept has none of that, but its ``metrics.json`` holds the loss history (loss and each term's per
logged step) and the teacher weights per epoch: the plot is drawn from those, and says so.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.curves import CURVES_FILE, read_curves
from harness.records import read_record
from harness.run_record import RunRecord
from harness.schema import ConfigError
from harness.tasks import get_task

# (panel title, which curve names it draws, y-axis label)
PANELS = (
    ("loss", lambda n: n == "loss" or n.startswith("loss_"), "mean loss since the previous point"),
    ("learning rate", lambda n: n == "lr", "lr"),
    ("throughput", lambda n: n == "examples_per_s", "examples/s"),
    ("teacher weights", lambda n: n.startswith("teacher_weight_"), "mean weight over the epoch"),
)


def teacher_label(m: RunRecord, name: str) -> str:
    """``teacher_weight_1`` -> the record's second teacher, by card or stage."""
    k = int(name.removeprefix("teacher_weight_"))
    t = m.teachers[k] if k < len(m.teachers) else None
    return name if t is None else (t.card or f"stage {t.stage}")


def curve_series(m: RunRecord, rows: list[dict]) -> tuple[dict, list[tuple[float, str]]]:
    """{(panel, label): ([x], [y])} with every stage after the previous one's end on x, and the
    (x, phase) where each stage after the first begins."""
    ends: dict[int, int] = defaultdict(int)
    for r in rows:
        ends[r["stage"]] = max(ends[r["stage"]], r["examples"])
    offset, at, starts = 0, {}, []
    for stage in sorted(ends):
        at[stage] = offset
        phase = next(r for r in rows if r["stage"] == stage)
        if stage:
            starts.append((offset, phase["phase"] + (f" block {phase['block']}" if phase["block"] else "")))
        offset += ends[stage]
    series: dict = defaultdict(lambda: ([], []))
    for r in sorted(rows, key=lambda r: (r["stage"], r["examples"])):
        panel = next(title for title, wanted, _ in PANELS if wanted(r["name"]))
        label = teacher_label(m, r["name"]) if panel == "teacher weights" else r["name"].removeprefix("loss_")
        xs, ys = series[(panel, label)]
        xs.append(at[r["stage"]] + r["examples"])
        ys.append(r["value"])
    return dict(series), starts


def history_series(m: RunRecord) -> tuple[dict, list[tuple[float, str]]]:
    """The same from metrics.json (records without curves.csv): loss per logged step, teacher weights
    per epoch, stages end to end."""
    series: dict = defaultdict(lambda: ([], []))
    starts, step0, epoch0 = [], 0, 0
    for i, st in enumerate(m.train.phases or [m.train]):
        if i:
            starts.append((step0, (st.phase or "") + (f" block {st.block}" if st.block is not None else "")))
        names = st.terms or m.terms
        for p in st.loss_history:
            for label, v in [("loss", p.loss)] + list(zip(names, p.terms or [])):
                series[("loss", label)][0].append(step0 + p.step)
                series[("loss", label)][1].append(v)
        for e in (st.teacher_weighting.per_epoch if st.teacher_weighting else []):
            for k, w in enumerate(e.mean):
                xs, ys = series[("teacher weights", teacher_label(m, f"teacher_weight_{k}"))]
                xs.append(epoch0 + e.epoch)
                ys.append(w)
        step0, epoch0 = step0 + st.steps, epoch0 + int(round(st.epochs))
    return dict(series), starts


def draw(series: dict, starts: list[tuple[float, str]], title: str, xlabels: dict[str, str], out: Path) -> None:
    """One panel per kind of curve that has points; ``xlabels``: each panel's x axis.  Stage starts
    are marked on the panels whose x is the loss panel's."""
    panels = [p for p in PANELS if any(key[0] == p[0] for key in series)]
    fig = Figure(figsize=(8, 2.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (name, _, ylabel) in zip(axes, panels):
        labels = [label for panel, label in series if panel == name]
        for label in labels:
            xs, ys = series[(name, label)]
            main = label == "loss" or name != "loss"  # a term's curve is dashed under the total
            ax.plot(xs, ys, label=label, lw=2 if label == "loss" else 1.2, ls="-" if main else "--",
                    marker="o" if len(xs) < 12 else None)
        for x, phase in starts if xlabels[name] == xlabels["loss"] else []:
            ax.axvline(x, color="grey", ls=":", lw=1)
            ax.annotate(phase, (x, 1), xycoords=("data", "axes fraction"), va="top", fontsize=7, color="grey")
        ax.set_title(name, fontsize=10, loc="left")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel(xlabels[name], fontsize=8)
        if len(labels) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(out, dpi=110)


def plot_run(run_dir: Path, out: Path | None = None) -> tuple[Path, str | None]:
    """Draw a record's curves into ``out`` (default ``RUN_DIR/curves.png``); returns it and a note
    when they were drawn from metrics.json's loss history instead of ``curves.csv``."""
    if not (run_dir / "metrics.json").is_file():
        seeds = sorted(p.name for p in run_dir.glob("seed*") if (p / "metrics.json").is_file())
        hint = f"; plot one of its seeds: {', '.join(str(run_dir / s) for s in seeds)}" if seeds else ""
        raise ConfigError(f"{run_dir} is not a run record folder (no metrics.json){hint}")
    m, rows = read_record(run_dir), read_curves(run_dir)
    title = f"{m.name} seed {m.seed}: {get_task(m.task).display} dev score {100 * m.score:.2f}"
    out = out or run_dir / "curves.png"
    if rows:
        series, starts = curve_series(m, rows)
        x = "examples trained on (optimiser steps x batch size)"
        draw(series, starts, title, {name: x for name, _, _ in PANELS}, out)
        return out, None
    series, starts = history_series(m)
    if not series:
        raise ConfigError(f"{run_dir} has no curves: no {CURVES_FILE} (the run was recorded before curves were "
                          "kept, or with deepspeed.monitor.csv: false) and its metrics.json logged no loss")
    draw(series, starts, title + " (from metrics.json)", {"loss": "optimiser steps", "teacher weights": "epochs"}, out)
    return out, (f"{run_dir} has no {CURVES_FILE} (recorded before curves were kept, or with the CSV monitor "
                 "off): drawn from the loss history in its metrics.json (loss per term per logged step, teacher "
                 "weights per epoch; no learning rate or throughput)")
