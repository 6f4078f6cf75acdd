"""How a study's table writes its figures and symbols: Markdown in Unicode, LaTeX with its own commands.

:mod:`harness.study_render` lays the table out; this module says how one number, difference or mark
reads in each output, so that the two outputs cannot drift apart.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from harness.study_table import MIXED, T_SEEDS, Diff

# Diff.method -> (tag in a cell when a table mixes methods, what its interval is)
METHODS = {MIXED: ("boot+t", "2 to 4 seed pairs: the dev examples' variance from a paired bootstrap, one "
                          "resample for both rows and every seed, plus the seeds' variance of the mean; t with "
                          "(seeds - 1) degrees of freedom"),
           T_SEEDS: ("t", "5 or more seed pairs: paired t interval over seeds")}
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "%": r"\%", "&": r"\&",
                   "#": r"\#", "$": r"\$", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                   # pdflatex's utf8 input knows none of these symbols: math mode does
                   "±": r"$\pm$", "≈": r"$\approx$", "Δ": r"$\Delta$", "−": r"$-$", "→": r"$\rightarrow$",
                   "×": r"$\times$", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "≥": r"$\geq$", "≤": r"$\leq$", "†": r"$\dagger$", "‡": r"$\ddagger$"}
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
    warn: str  # after a latency the speed measurement could not make consistent


def latex_stack(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else r"\begin{tabular}[t]{@{}c@{}}" + r" \\ ".join(parts) + r"\end{tabular}"


# Markdown escapes "|", which would end the cell, and "*", which could fake the bold of a best cell
MARKDOWN = Style(lambda s: s.replace("|", r"\|").replace("*", r"\*"), lambda s: s.replace("-", "−"), " ± ", "≈ ",
                 lambda s: f"**{s}**", lambda s: s, "†", "‡", "Δ", " %", "—", "; ".join, " ⚠")
LATEX = Style(latex_escape, lambda s: f"${s}$", r" $\pm$ ", r"$\approx$\,", lambda s: rf"\textbf{{{s}}}",
              lambda s: f"$^{{{s}}}$", r"\dagger", r"\ddagger", r"$\Delta$", r"\,\%", "--", latex_stack, r"\textsuperscript{\S}")


def p_text(p: float) -> str:
    # three decimals below 0.1, so that no p on either side of 0.05 prints as "p=0.05"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def number(x: float, style: Style, sign: str = "") -> str:
    """A score x 100 with one decimal; a minus sign is a minus, not a hyphen."""
    text = f"{100 * x:{sign}.1f}"
    return style.math(text) if text[0] in "+-" else text


def diff_text(d: Diff, style: Style, tag_method: bool, cell_n: int) -> str:
    if d.method not in METHODS:
        raise ValueError(f"Diff.method {d.method!r} is none of {sorted(METHODS)}")
    pairs = f" over {d.n_pairs} clean seed pair{'s' * (d.n_pairs != 1)}" if d.n_pairs < cell_n else ""
    if math.isnan(d.mean):
        return f"{style.delta} undefined (a seed's score is){pairs}"
    if math.isnan(d.p):
        why = "one seed pair" if d.n_pairs == 1 else "undefined on every resample of the dev examples"
        return f"{style.delta} {number(d.mean, style, '+')}{pairs}, no test ({why})"
    p = p_text(d.p_holm) if d.p_holm is not None else p_text(d.p) + " uncorrected"
    tag = f" ({METHODS[d.method][0]})" if tag_method else ""
    mean, low, high = (number(x, style, "+") for x in (d.mean, d.low, d.high))
    return f"{style.delta} {mean} [{low}, {high}] {style.math(p)}{tag}{pairs}"
