"""A study's Pareto plot: each row's average score against what it costs, in CPU latency and in size.

``write_pareto`` writes ``pareto.png`` (two panels: score vs latency, score vs parameters, both on a
log axis) and ``pareto.csv``, the data behind it.  It computes nothing but which rows are dominated;
the average is :attr:`harness.study_table.Row.avg`.  The CSV keeps exact values (avg a fraction,
params a count); the plot shows avg x 100 and params in millions.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.ticker import LogFormatter
from matplotlib.figure import Figure

from harness.study_table import Row, StudyTable

# (panel name, Row attribute, x-axis label, scale to the axis's unit, what a row lacks without it)
PANELS = (
    ("latency", "latency_ms", "CPU latency, ms (fp32, batch 1, length 128)", 1.0, "no CPU latency"),
    ("params", "params", "parameters, millions", 1e-6, "no parameter count"),
)
LABEL_CHARS = 28  # a point's label: long keys would cover the neighbouring points
LABEL_GAP = 0.04  # between two labels' centres, in axes fractions (a 7-point line is about 0.02 of a panel)


def frontier(points: list[tuple[str, float, float]]) -> set[str]:
    """The names of the non-dominated points among (name, cost, score): lower cost and higher score
    are better.  A point is dominated when another is at least as good on both and better on one, so
    two points with the same cost and score are both on the frontier: neither beats the other."""
    names = [name for name, _, _ in points]
    if len(set(names)) != len(names):
        raise ValueError(f"frontier needs distinct names, got {sorted(names)}")
    # quadratic, and clearer than a sweep: a study table has tens of rows, not thousands
    return {name for name, cost, score in points
            if not any(c <= cost and s >= score and (c < cost or s > score) for _, c, s in points)}


def tasks_with_scores(row: Row, tasks: tuple[str, ...]) -> list[str]:
    """The table's tasks on which the row has a mean (a cell whose every record was excluded has none)."""
    return [t for t in tasks if t in row.cells and row.cells[t].mean is not None]


def short_label(key: str) -> str:
    """At most LABEL_CHARS characters; a trailing collapse mark " †" survives the cut."""
    mark = " †" if key.endswith(" †") else ""
    key = key.removesuffix(mark)
    cut = LABEL_CHARS - len(mark)
    return (key if len(key) <= cut else key[:cut - 1] + "…") + mark


def pareto_frame(table: StudyTable) -> pd.DataFrame:
    """One line per row: its avg, costs, whether it is on each panel's frontier, and why not plotted.

    A row whose avg covers fewer tasks than the table's is drawn but kept off the frontiers: an
    average that skips a hard task would dominate rows that did not skip it.  So is a row with a
    collapsed seed: being on the frontier is a claim of "best", which a collapsed seed never supports."""
    lines = [{"row": r.key, "kind": r.kind, "avg": r.avg, "tasks": len(tasks_with_scores(r, table.tasks)),
              "collapsed": sum(len(c.flags) for c in r.cells.values()),
              "latency_ms": r.latency_ms, "params": r.params, "notes": [],
              "suspect": r.latency_suspect} for r in table.rows]
    for line in lines:
        if line["avg"] is None:
            line["notes"].append("left out of both panels: no task score")
            continue
        if line["tasks"] < len(table.tasks):
            line["notes"].append(f"avg over {line['tasks']} of {len(table.tasks)} tasks: drawn, kept off the frontiers")
        if line["collapsed"]:
            line["notes"].append(f"{line['collapsed']} collapsed seed(s) in its avg (†): drawn, kept off the frontiers")
    for panel, attr, _, _, lacks in PANELS:
        full = [x for x in lines if x["avg"] is not None and x[attr] is not None and x["tasks"] == len(table.tasks)
                and not x["collapsed"] and not (panel == "latency" and x["suspect"])]
        on = frontier([(x["row"], float(x[attr]), x["avg"]) for x in full])
        for line in lines:
            drawn = line["avg"] is not None and line[attr] is not None
            line[f"on_frontier_{panel}"] = line["row"] in on if drawn else None
            if line["avg"] is not None and line[attr] is None:
                line["notes"].append(f"left out of the {panel} panel: {lacks}")
            elif drawn and panel == "latency" and line["suspect"]:
                line["notes"].append("latency slower than a deeper twin's after re-measurement: drawn, kept off "
                                     "the latency frontier")
    frame = pd.DataFrame(lines, columns=["row", "kind", "avg", "tasks", "collapsed", "latency_ms", "params",
                                         "on_frontier_latency", "on_frontier_params", "notes"])
    frame["notes"] = frame["notes"].map("; ".join)
    return frame.astype({"params": "Int64"})


def draw_panel(ax, frame: pd.DataFrame, panel: str, attr: str, scale: float, n_tasks: int) -> None:
    drawn = frame[frame.avg.notna() & frame[attr].notna()]
    if drawn.empty:
        ax.text(0.5, 0.5, f"no row has {attr}", ha="center", va="center", transform=ax.transAxes)
        return
    x = drawn[attr].astype(float) * scale
    y = drawn.avg.astype(float) * 100
    for kind, marker, size, color in (("teacher", "*", 160, "tab:red"), ("student", "o", 50, "tab:blue")):
        for partial in (False, True):
            pick = (drawn.kind == kind) & ((drawn.tasks < n_tasks) == partial)
            if pick.any():
                # hollow: an average over fewer tasks, not comparable with the filled points
                ax.scatter(x[pick], y[pick], marker=marker, s=size, edgecolors=color,
                           facecolors="none" if partial else color,
                           label=f"{kind}{' (avg over fewer tasks)' if partial else ''}")
    on = drawn[drawn[f"on_frontier_{panel}"] == True].sort_values(attr)  # noqa: E712 (object column)
    if len(on):
        # a step: past a frontier point's cost, the best score on offer stays its score until the next
        ax.step(on[attr].astype(float) * scale, on.avg.astype(float) * 100, where="post", color="0.4",
                linestyle="--", label="Pareto frontier")
    ax.set_xscale("log")
    for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        # "4", "10" rather than 4x10^0; LogFormatter drops the minor labels itself when a range is wide
        axis(LogFormatter(labelOnlyBase=False))
    ax.margins(x=0.25, y=0.1)  # room for the labels of the outermost points
    label_points(ax, list(x), list(y), [row + " †" * (n > 0) for row, n in zip(drawn.row, drawn.collapsed)])
    ax.legend(fontsize=8, loc="best")


def label_points(ax, x: list[float], y: list[float], keys: list[str]) -> None:
    """Each point's label just right of it, at its height where it can be, else moved up or down just
    enough that no two labels overlap, with a thin line back to its point: a study's students often
    share one size, and ten labels at one x would print over each other."""
    ax.autoscale_view()  # the limits, before data points become axes fractions
    to_axes = ax.transData + ax.transAxes.inverted()  # scale and limits only: the layout does not move it
    at = [to_axes.transform((xi, yi)) for xi, yi in zip(x, y)]
    order = sorted(range(len(at)), key=lambda i: at[i][1])
    for i, height in zip(order, spread([at[i][1] for i in order], LABEL_GAP)):
        ax.annotate(short_label(keys[i]), xy=(x[i], y[i]), xytext=(at[i][0] + 0.02, height),
                    textcoords="axes fraction", fontsize=7, va="center",
                    arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5})


def spread(heights: list[float], gap: float, low: float = 0.02, high: float = 0.98) -> list[float]:
    """Ascending label heights (axes fractions) moved as little as keeps ``gap`` between neighbours:
    pushed up from the lowest, then, where the run overflows ``high``, pushed down from the top."""
    out: list[float] = []
    for h in heights:
        out.append(max(h, low) if not out else max(h, out[-1] + gap))
    if out and out[-1] > high:
        out[-1] = high
        for i in range(len(out) - 2, -1, -1):
            out[i] = min(out[i], out[i + 1] - gap)
    return out


def write_pareto(table: StudyTable, folder: Path) -> list[Path]:
    """``pareto.png`` and ``pareto.csv`` in ``folder``; returns their paths."""
    frame = pareto_frame(table)
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global figure registry
    for ax, (panel, attr, label, scale, _) in zip(fig.subplots(1, 2), PANELS):
        draw_panel(ax, frame, panel, attr, scale, len(table.tasks))
        ax.set_xlabel(f"{label} (log scale)")
        ax.set_ylabel(f"average dev score x 100 over {len(table.tasks)} tasks")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(table.name + ("  -  DIRTY TREE: uncommitted changes, not reproducible" if table.dirty else ""),
                 color="red" if table.dirty else "black")
    png, csv = folder / "pareto.png", folder / "pareto.csv"
    fig.savefig(png, dpi=120)
    frame.to_csv(csv, index=False)
    return [png, csv]
