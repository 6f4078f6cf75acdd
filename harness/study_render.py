"""A study's table (:class:`harness.study_table.StudyTable`) written as ``table.md``, ``table.csv`` and
``table.tex``, with its Pareto plot (:mod:`harness.study_plot`).

Everything here formats; nothing computes a statistic.  Markdown and LaTeX show scores x 100 with one
decimal; the CSV keeps the exact fractions, one line per (row, task) cell, so nothing is lost to rounding.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from harness.metrics import headline_name
from harness.study_plot import tasks_with_scores, write_pareto
from harness.study_table import Cell, Diff, Exclusion, Row, StudyTable
from harness.tasks import get_task

# Diff.method -> (tag in a cell when a table mixes methods, what its interval is)
METHODS = {"bootstrap": ("boot", "paired bootstrap over dev examples and seeds"),
           "t": ("t", "t interval over seeds, paired by seed (n of at least 5)")}
MARKS = (None, "best", "tie")
CSV_COLUMNS = ["row", "kind", "model", "baseline", "params", "latency_ms", "budget", "cell_budget", "task", "n",
               "seeds", "scores", "mean", "std", "retention", "flags", "flagged_share", "n_pairs", "diff_mean",
               "diff_low", "diff_high", "p", "p_holm", "method", "mark", "excluded", "excluded_reasons",
               "commit", "dirty"]

_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "%": r"\%", "&": r"\&",
                   "#": r"\#", "$": r"\$", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                   # pdflatex's utf8 input knows none of these symbols: math mode does
                   "±": r"$\pm$", "≈": r"$\approx$", "Δ": r"$\Delta$", "−": r"$-$", "→": r"$\rightarrow$",
                   "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "†": r"$\dagger$", "‡": r"$\ddagger$"}
# one pass, so the braces that an escape adds are not escaped again; "--" would print as a dash
_LATEX_RE = re.compile("|".join(map(re.escape, _LATEX_SPECIALS)) + "|-(?=-)")


def latex_escape(text: str) -> str:
    """``text`` as LaTeX prints it literally: its specials escaped, a few Unicode symbols in math mode."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIALS[m.group()] if m.group() != "-" else "-{}", text)


@dataclass(frozen=True)
class Style:
    """How one output writes a cell's symbols: Markdown in Unicode, LaTeX with its own commands."""

    text: Callable[[str], str]  # free text (row keys, reasons, notes), escaped
    math: Callable[[str], str]  # a number or formula such as "p<0.001" or "-0.3"
    pm: str
    tie: str
    bold: Callable[[str], str]
    marks: Callable[[str], str]  # the † and ‡ marks after a cell's head
    dagger: str
    ddagger: str
    delta: str
    percent: str
    dash: str  # a figure the row does not have
    stack: Callable[[list[str]], str]  # a cell's parts: one line in Markdown, stacked in LaTeX


def latex_stack(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else r"\begin{tabular}[t]{@{}c@{}}" + r" \\ ".join(parts) + r"\end{tabular}"


# Markdown escapes "|", which would end the cell, and "*", which could fake the bold of a best cell
MARKDOWN = Style(lambda s: s.replace("|", r"\|").replace("*", r"\*"), lambda s: s.replace("-", "−"), " ± ", "≈ ",
                 lambda s: f"**{s}**", lambda s: s, "†", "‡", "Δ", " %", "—", "; ".join)
LATEX = Style(latex_escape, lambda s: f"${s}$", r" $\pm$ ", r"$\approx$\,", lambda s: rf"\textbf{{{s}}}",
              lambda s: f"$^{{{s}}}$", r"\dagger", r"\ddagger", r"$\Delta$", r"\,\%", "--", latex_stack)


def p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def diff_text(d: Diff, style: Style, tag_method: bool) -> str:
    if d.method not in METHODS:
        raise ValueError(f"Diff.method {d.method!r} is none of {sorted(METHODS)}")
    p = p_text(d.p_holm) if d.p_holm is not None else p_text(d.p) + " uncorrected"
    tag = f" ({METHODS[d.method][0]})" if tag_method else ""
    mean, low, high = (style.math(f"{100 * x:+.1f}") for x in (d.mean, d.low, d.high))
    return f"{style.delta} {mean} [{low}, {high}] {style.math(p)}{tag}"


def numbered_exclusions(table: StudyTable) -> list[tuple[int, Row, str, Exclusion]]:
    """Every excluded record with the number of its footnote mark, in table order."""
    found = [(row, task, e) for row in table.rows for task in table.tasks if task in row.cells
             for e in row.cells[task].excluded]
    return [(i, row, task, e) for i, (row, task, e) in enumerate(found, 1)]


def cell_text(cell: Cell, row: Row, marks: list[int], style: Style, dirty: bool, tag_method: bool) -> str:
    if cell.mark not in MARKS:
        raise ValueError(f"Cell.mark {cell.mark!r} is none of {MARKS}")
    head = style.dash if cell.mean is None else f"{100 * cell.mean:.1f}" + (
        f"{style.pm}{100 * cell.std:.1f}" if cell.std is not None else "")
    head = style.bold(head) if cell.mark == "best" else style.tie + head if cell.mark == "tie" else head
    symbols = style.dagger * len(cell.flags) + "".join(f"{style.ddagger}{i}" for i in marks)
    parts = [f"{head} (n={cell.n})" + (style.marks(symbols) if symbols else "")]
    if cell.retention is not None:
        parts.append(f"ret {cell.retention:.1f}{style.percent}")
    if cell.vs_baseline is not None:
        parts.append(diff_text(cell.vs_baseline, style, tag_method))
    if cell.budget and cell.budget != row.budget:  # the row's Budget column holds the usual one
        parts.append(style.text(cell.budget))
    if dirty:
        parts.append("dirty")
    return style.stack(parts)


def header(table: StudyTable) -> list[str]:
    tasks = [f"{get_task(t).display} ({headline_name(t)})" for t in table.tasks]
    return ["Row", "Model", "Params (M)", "CPU ms (b1, L128)", "Budget", *tasks, "Avg"]


def row_texts(row: Row, table: StudyTable, style: Style, marks: dict[tuple[str, str], list[int]],
              tag_method: bool) -> list[str]:
    cells = [cell_text(row.cells[t], row, marks[row.key, t], style, table.dirty, tag_method)
             if t in row.cells else "" for t in table.tasks]
    k = len(tasks_with_scores(row, table.tasks))
    avg = style.dash if row.avg is None else f"{100 * row.avg:.1f}" + (
        f" ({k} of {len(table.tasks)})" if k < len(table.tasks) else "")  # an avg over fewer tasks is not comparable
    return [style.text(row.key) + (" (baseline)" if row.baseline else ""), style.text(row.model),
            style.dash if row.params is None else f"{row.params / 1e6:.1f}",
            style.dash if row.latency_ms is None else f"{row.latency_ms:.1f}", style.text(row.budget),
            *cells, avg + (" dirty" if table.dirty else "")]


def table_texts(table: StudyTable, style: Style) -> list[list[str]]:
    """Every row's texts, in the table's column order."""
    marks: dict[tuple[str, str], list[int]] = {(r.key, t): [] for r in table.rows for t in r.cells}
    for i, row, task, _ in numbered_exclusions(table):
        marks[row.key, task].append(i)
    # a cell names its interval's method only where the table mixes them; else the notes say it once
    tag = len({c.vs_baseline.method for r in table.rows for c in r.cells.values() if c.vs_baseline}) > 1
    return [row_texts(r, table, style, marks, tag) for r in table.rows]


def symbol_notes(table: StudyTable, style: Style) -> list[str]:
    """What the marks that the table uses mean, each with the cells or records it concerns."""
    cells = [(r, t, r.cells[t]) for r in table.rows for t in table.tasks if t in r.cells]
    diffs = [c.vs_baseline for _, _, c in cells if c.vs_baseline is not None]
    t = style.text
    out = []
    if diffs:
        base = [r.key for r in table.rows if r.baseline]
        how = "; ".join(f"{METHODS[m][0]}: {METHODS[m][1]}" for m in sorted({d.method for d in diffs}))
        out.append(f"{style.delta}: the row minus the baseline ({t(', '.join(base) or 'none marked')}) x 100, "
                   f"paired by seed, with its 95{style.percent} interval ({t(how)}). p: two-sided, Holm-corrected "
                   "across every comparison of the table (a p that says 'uncorrected' is not).")
    if any(c.mark == "best" for _, _, c in cells):
        out.append(f"{style.bold('Bold')}: best on the task, significantly better than the runner-up.")
    if any(c.mark == "tie" for _, _, c in cells):
        out.append(f"{style.tie.strip()}: best on the task, not significantly better than the runner-up (not bold).")
    flagged = [f"{t(get_task(task).display)}, {t(r.key)}: seed {f.seed} {t(f.kind)} {f.share:.2f}"
               for r, task, c in cells for f in c.flags]
    if flagged:
        out.append(f"{style.marks(style.dagger)}: one per collapsed seed (one class: the majority class's share of "
                   "predictions; flat: std of predictions over std of labels), kept in the mean and shown, never "
                   "counted for best or significance: " + "; ".join(flagged) + ".")
    for i, _, _, e in numbered_exclusions(table):
        out.append(f"{style.marks(f'{style.ddagger}{i}')}: excluded from every figure: {t(e.record)} "
                   f"(seed {e.seed}): {t(e.reason)}.")
    return out


def notes(table: StudyTable, style: Style) -> list[str]:
    out = []
    if table.dirty:
        out.append(style.bold(style.text(
            f"DIRTY TREE: run with --allow-dirty on uncommitted changes to commit {table.commit or 'unknown'}; "
            "no commit reproduces these figures, and every cell says 'dirty'.")))
    out.append(f"Commit: {style.text(table.commit)}" + (" (with uncommitted changes)" if table.dirty else "")
               if table.commit else "Commit: unknown (not run from a git checkout).")
    out.append(f"Cells: the task's dev-set headline x 100 (its metric in the header), mean{style.pm}std over "
               "seeds; (n=k): the seeds whose records passed every check; ret: retention, the cell's mean as a "
               "share of its teacher's. Budget: what every phase of the row's runs cost; a cell whose runs cost "
               "otherwise says its own. Avg: mean over the row's tasks, '(k of n)' when it lacks some of the table's.")
    return out + symbol_notes(table, style) + [style.text(n) for n in table.notes]


def markdown(table: StudyTable) -> str:
    frame = pd.DataFrame(table_texts(table, MARKDOWN), columns=header(table))
    lines = [f"<!-- generated by kd-harness from study {table.name}; do not edit -->", "", f"## {table.name}", ""]
    lines += [table.description, ""] if table.description else []
    lines += [frame.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(lines + [f"- {n}" for n in notes(table, MARKDOWN)]) + "\n"


def latex(table: StudyTable) -> str:
    """A ``table`` float with a booktabs tabular and its notes; needs booktabs and graphicx."""
    cols = header(table)
    spec = "llrrl" + "c" * len(table.tasks) + "r"
    caption = latex_escape(table.name + (f": {table.description}" if table.description else ""))
    label = re.sub(r"[^A-Za-z0-9]+", "-", table.name)
    lines = [f"% generated by kd-harness from study {table.name}; do not edit", r"\begin{table}[htbp]",
             r"\centering",
             rf"\caption{{{caption}{' (DIRTY TREE)' if table.dirty else ''}}}\label{{tab:study-{label}}}",
             # wide tables shrink to the text width rather than run off the page
             rf"\resizebox{{\textwidth}}{{!}}{{\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(texts) + r" \\" for texts in table_texts(table, LATEX)]
    lines += [r"\bottomrule", r"\end{tabular}}", r"\par\smallskip",
              r"\parbox{\textwidth}{\footnotesize " + " \\par\n".join(notes(table, LATEX)) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex_document(table_tex: str) -> str:
    """``table_tex`` in the smallest document that compiles it, for checking that it does."""
    return ("\\documentclass{article}\n\\usepackage[utf8]{inputenc}\n\\usepackage{booktabs}\n"
            "\\usepackage{graphicx}\n\\begin{document}\n" + table_tex + "\\end{document}\n")


def diff_fields(d: Diff | None) -> dict[str, object]:
    values = (None,) * 7 if d is None else (d.n_pairs, d.mean, d.low, d.high, d.p, d.p_holm, d.method)
    return dict(zip(["n_pairs", "diff_mean", "diff_low", "diff_high", "p", "p_holm", "method"], values))


def csv_frame(table: StudyTable) -> pd.DataFrame:
    """One line per (row, task) cell, with exact values; a task a row lacks has no line."""
    lines = []
    for row in table.rows:
        for task in (t for t in table.tasks if t in row.cells):
            c = row.cells[task]
            lines.append({
                "row": row.key, "kind": row.kind, "model": row.model, "baseline": row.baseline, "params": row.params,
                "latency_ms": row.latency_ms, "budget": row.budget, "cell_budget": c.budget, "task": task, "n": c.n,
                # repr: the shortest text that reads back as the same float
                "seeds": ";".join(map(str, c.seeds)), "scores": ";".join(map(repr, c.scores)), "mean": c.mean,
                "std": c.std, "retention": c.retention,
                "flags": "; ".join(f"seed {f.seed}: {f.kind} {f.share!r}" for f in c.flags),
                "flagged_share": max((f.share for f in c.flags), default=None), **diff_fields(c.vs_baseline),
                "mark": c.mark, "excluded": len(c.excluded),
                "excluded_reasons": "; ".join(f"seed {e.seed} ({e.record}): {e.reason}" for e in c.excluded),
                "commit": table.commit, "dirty": table.dirty})
    # Int64: a count that some lines lack stays a count, not 2.0
    return pd.DataFrame(lines, columns=CSV_COLUMNS).astype({"params": "Int64", "n_pairs": "Int64"})


def write_study_outputs(table: StudyTable, folder: Path) -> list[Path]:
    """table.md, table.csv, table.tex, pareto.png and pareto.csv in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    md, csv, tex = folder / "table.md", folder / "table.csv", folder / "table.tex"
    md.write_text(markdown(table))
    csv_frame(table).to_csv(csv, index=False)
    tex.write_text(latex(table))
    return [md, csv, tex, *write_pareto(table, folder)]
