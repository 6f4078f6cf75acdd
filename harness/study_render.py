"""A study's table (:class:`harness.study_table.StudyTable`) written as ``table.md``, ``table.csv`` and
``table.tex``, with its Pareto plot (:mod:`harness.study_plot`).

Everything here formats; nothing computes a statistic.  Markdown and LaTeX show scores x 100 with one
decimal; the CSV keeps the exact fractions, one line per (row, task) cell, so nothing is lost to rounding.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from harness.metrics import headline_name
from harness.study_plot import tasks_with_scores, write_pareto
from harness.study_style import LATEX, MARKDOWN, METHODS, Style, diff_text, latex_escape, number
from harness.study_table import ALPHA, Cell, Diff, Exclusion, Row, StudyTable
from harness.tasks import get_task

MARKS = (None, "best", "tie")
CSV_COLUMNS = ["row", "kind", "model", "baseline", "params", "latency_ms", "latency_suspect",
               "budget", "cell_budget", "capped", "task", "n",
               "seeds", "scores", "mean", "std", "retention", "flags", "flagged_share", "clean_mean", "n_pairs",
               "diff_mean", "diff_low", "diff_high", "p", "p_holm", "method", "n_boot", "mark", "mark_vs",
               "mark_p_holm", "excluded", "excluded_reasons",
               "commit", "dirty"]

def numbered_exclusions(table: StudyTable) -> list[tuple[int, Row, str, Exclusion]]:
    """Every excluded record with the number of its footnote mark, in table order."""
    found = [(row, task, e) for row in table.rows for task in table.tasks if task in row.cells
             for e in row.cells[task].excluded]
    return [(i, row, task, e) for i, (row, task, e) in enumerate(found, 1)]


def cell_text(cell: Cell, row: Row, marks: list[int], style: Style, dirty: bool, tag_method: bool) -> str:
    if cell.mark not in MARKS:
        raise ValueError(f"Cell.mark {cell.mark!r} is none of {MARKS}")
    head = style.dash if cell.mean is None else number(cell.mean, style) + (
        f"{style.pm}{100 * cell.std:.1f}" if cell.std is not None else "")
    clean = number(cell.clean_mean, style) if cell.flags and cell.clean_mean is not None else None
    # the mark goes on what "best" compared: the clean seeds' mean where the cell has collapsed seeds
    if clean is None:
        head = style.bold(head) if cell.mark == "best" else style.tie + head if cell.mark == "tie" else head
    else:
        clean = style.bold(clean) if cell.mark == "best" else style.tie + clean if cell.mark == "tie" else clean
    symbols = style.dagger * len(cell.flags) + "".join(f"{style.ddagger}{i}" for i in marks)
    parts = [f"{head} (n={cell.n})" + (style.marks(symbols) if symbols else "")]
    if clean is not None:  # what "best" and the tests compare
        parts.append(f"without {style.marks(style.dagger)}: {clean} (n={len(cell.clean_scores)})")
    if cell.retention is not None:
        parts.append(f"ret {cell.retention:.1f}{style.percent}")
    if cell.vs_baseline is not None:
        parts.append(diff_text(cell.vs_baseline, style, tag_method, cell.n))
    if dirty:
        parts.append("dirty")
    return style.stack(parts)


def capped_tasks(table: StudyTable) -> list[str]:
    return [t for t in table.tasks if any(t in r.cells and r.cells[t].capped for r in table.rows)]


def header(table: StudyTable) -> list[str]:
    capped = capped_tasks(table)
    tasks = [f"{get_task(t).display} ({headline_name(t)})" + (" capped" if t in capped else "") for t in table.tasks]
    return ["Row", "Model", "Params (M)", "CPU ms (b1, L128)", "Budget", *tasks, "Avg"]


def row_texts(row: Row, table: StudyTable, style: Style, marks: dict[tuple[str, str], list[int]],
              tag_method: bool) -> list[str]:
    cells = [cell_text(row.cells[t], row, marks[row.key, t], style, table.dirty, tag_method)
             if t in row.cells else "" for t in table.tasks]
    k = len(tasks_with_scores(row, table.tasks))
    avg = style.dash if row.avg is None else number(row.avg, style) + (
        f" ({k} of {len(table.tasks)})" if k < len(table.tasks) else "")  # an avg over fewer tasks is not comparable
    return [style.text(row.key) + (" (baseline)" if row.baseline else ""), style.text(row.model),
            style.dash if row.params is None else f"{row.params / 1e6:.1f}",
            style.dash if row.latency_ms is None else f"{row.latency_ms:.1f}" + style.warn * row.latency_suspect,
            style.text(row.budget),
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
    tests = diffs + [c.mark_test for _, _, c in cells if c.mark_test is not None]
    t = style.text
    out = []
    if diffs:
        base = [r.key for r in table.rows if r.baseline]
        how = "; ".join(f"{METHODS[m][0]}: {METHODS[m][1]}" for m in sorted({d.method for d in tests}))
        out.append(f"{style.delta}: the row minus the baseline ({t(', '.join(base) or 'none marked')}) x 100, "
                   f"paired by seed over the seeds not collapsed in either row, with its 95{style.percent} interval, "
                   f"not corrected for the number of comparisons ({t(how)}). p: two-sided, Holm-corrected across the "
                   "table's comparisons with the baseline (a p that says 'uncorrected' is not); one clean seed "
                   "pair gets no interval and no test.")
    contests = [(get_task(task).display, r.key, c) for r, task, c in cells if c.mark_vs is not None]
    if contests:
        out.append(f"{style.bold('Bold')}: the best student row on the task by the mean of its clean seeds (teacher "
                   "rows do not compete), and better than the "
                   f"runner-up at a Holm-corrected p below {ALPHA} (paired as {style.delta} is, Holm across the "
                   f"tasks' best-against-runner-up tests); {style.tie.strip()}: the best and the runner-up where "
                   "it is not. Per task: " + "; ".join(
                       f"{t(task)}: {t(best)} against {t(c.mark_vs)}, " + (
                           diff_text(c.mark_test, style, False, c.n) if c.mark_test else "no clean seed in common")
                       for task, best, c in contests) + ".")
    flagged = [f"{t(get_task(task).display)}, {t(r.key)}: seed {f.seed} {t(f.kind)} {f.share:.2f}"
               for r, task, c in cells for f in c.flags]
    if flagged:
        out.append(f"{style.marks(style.dagger)}: one per collapsed seed (one class: the majority class's share of "
                   "predictions; flat: std of predictions over std of labels), kept in the mean and shown, never "
                   "counted for best or significance: " + "; ".join(flagged) + ".")
    capped = [get_task(task).display for task in capped_tasks(table)]
    if capped:
        out.append(f"capped: {t(', '.join(capped))}: trained on fewer examples than GLUE's training set holds "
                   "(each row's Budget names how many, for every phase; the teacher row, its own), so these columns "
                   "are not comparable with full-data results elsewhere.")
    suspect = [r.key for r in table.rows if r.latency_suspect]
    if suspect:
        out.append(f"{style.warn.strip()}: CPU latency measured slower than a deeper model of the same width, "
                   f"even after measuring the family again (a noisy machine); do not read it: {t(', '.join(suspect))}.")
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
    out.append((f"Commit: {style.text(table.commit)}" + (" (with uncommitted changes)" if table.dirty else "")
                if table.commit else "Commit: none (records from outside a git checkout, or split between "
                                     "commits: see the notes).") +
               (f"; trained under {style.text(table.stack)}" if table.stack else "") +
               (f"; tables built by the harness at {style.text(table.rendered_at)} from these records"
                if table.rendered_at and table.rendered_at != table.commit else ""))
    out.append(f"Summary: {style.text(table.summary())}.")
    out.append(f"Cells: the task's dev-set headline x 100 (its metric in the header), mean{style.pm}std over "
               "seeds; (n=k): the seeds whose records passed every check; ret: retention, the cell's mean as a "
               "share of its (strongest) teacher's. Budget: what every phase of the row's runs cost, and in "
               "brackets the tasks whose runs cost otherwise (the CSV gives every cell's own). Avg: mean over the "
               "row's tasks of the cells' means (collapsed seeds included, as in the cells), '(k of n)' when it "
               "lacks some of the table's.")
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
    values = (None,) * 8 if d is None else (d.n_pairs, d.mean, d.low, d.high, d.p, d.p_holm, d.method, d.n_boot)
    return dict(zip(["n_pairs", "diff_mean", "diff_low", "diff_high", "p", "p_holm", "method", "n_boot"], values))


def csv_frame(table: StudyTable) -> pd.DataFrame:
    """One line per (row, task) cell, with exact values; a task a row lacks has no line."""
    lines = []
    for row in table.rows:
        for task in (t for t in table.tasks if t in row.cells):
            c = row.cells[task]
            lines.append({
                "row": row.key, "kind": row.kind, "model": row.model, "baseline": row.baseline, "params": row.params,
                "latency_ms": row.latency_ms, "latency_suspect": row.latency_suspect, "budget": row.budget, "cell_budget": c.budget, "capped": c.capped, "task": task, "n": c.n,
                # repr: the shortest text that reads back as the same float
                "seeds": ";".join(map(str, c.seeds)), "scores": ";".join(map(repr, c.scores)), "mean": c.mean,
                "std": c.std, "retention": c.retention,
                "flags": "; ".join(f"seed {f.seed}: {f.kind} {f.share!r}" for f in c.flags),
                "flagged_share": max((f.share for f in c.flags), default=None), "clean_mean": c.clean_mean,
                **diff_fields(c.vs_baseline), "mark": c.mark, "mark_vs": c.mark_vs,
                "mark_p_holm": c.mark_test.p_holm if c.mark_test else None, "excluded": len(c.excluded),
                "excluded_reasons": "; ".join(f"seed {e.seed} ({e.record}): {e.reason}" for e in c.excluded),
                "commit": table.commit, "dirty": table.dirty})
    # Int64: a count that some lines lack stays a count, not 2.0
    return pd.DataFrame(lines, columns=CSV_COLUMNS).astype({"params": "Int64", "n_pairs": "Int64", "n_boot": "Int64"})


def write_study_outputs(table: StudyTable, folder: Path) -> list[Path]:
    """table.md, table.csv, table.tex, pareto.png and pareto.csv in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    md, csv, tex = folder / "table.md", folder / "table.csv", folder / "table.tex"
    md.write_text(markdown(table))
    csv_frame(table).to_csv(csv, index=False)
    tex.write_text(latex(table))
    return [md, csv, tex, *write_pareto(table, folder)]
