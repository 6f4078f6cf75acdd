"""The study renderers: a hand-made StudyTable written as Markdown, CSV, LaTeX and a Pareto plot."""
from __future__ import annotations

import dataclasses
import re
import shutil
import statistics
import subprocess

import pandas as pd
import pytest
from matplotlib.image import imread

from harness.study_plot import frontier
from harness.study_render import latex, latex_document, markdown, write_study_outputs
from harness.study_style import METHODS, latex_escape, p_text
from harness.study_table import MIXED, Cell, Diff, Exclusion, Flag, Row, StudyTable

TEACHER = "teacher (fine-tuned): all-MiniLM-L6-v2"
BASELINE = "no_kd/3L"
ODD = "kd/3L_from_minilm [50% mix]"  # "_" and "%": specials in LaTeX
NO_LATENCY = "kd/6L & #2"  # a row the speed measurement missed
# 17 significant digits: a CSV that rounded them would not give the same floats back
# (an interval across 0 with its p above 0.05, as the statistics give: a test fixture cannot contradict them)
DIFF = Diff(n_pairs=3, mean=0.012345678901234567, low=-0.0031, high=0.026, p=0.3, method=MIXED,
            p_holm=0.6, n_boot=2000)

# a test over one clean seed pair: a difference, no p
ONE_PAIR = Diff(n_pairs=1, mean=0.33, low=float("nan"), high=float("nan"), p=float("nan"), method=MIXED,
                p_holm=float("nan"))


def cell(*scores: float, **kw) -> Cell:
    return Cell(seeds=tuple(range(1, len(scores) + 1)), scores=scores, **kw)


def study(dirty: bool = False) -> StudyTable:
    """2 tasks; a teacher, a baseline with a collapsed seed, a best cell with an exclusion in a row that
    lacks CoLA, and a row without latency with a tie."""
    rows = (
        Row(TEACHER, "teacher", "6L-minilm", {"sst2": cell(0.91, 0.915, 0.905), "cola": cell(0.5, 0.52, 0.51)},
            params=22_713_216, latency_ms=12.34, budget="task 67.3k ex x 3 ep"),
        Row(BASELINE, "student", "3L-minilm",
            {"sst2": cell(0.85, 0.86, 0.855),
             "cola": cell(0.2, 0.25, 0.0, flags=(Flag(3, "one class", 0.971),))},
            params=17_389_056, latency_ms=4.1, budget="task 4.0k ex x 2 ep", baseline=True),
        Row(ODD, "student", "3L-minilm",
            {"sst2": cell(0.87, 0.875, 0.88 + 1 / 3000, retention=95.6, mark="best", vs_baseline=DIFF, mark_vs=NO_LATENCY,
                          mark_test=Diff(2, 0.013, 0.004, 0.02, 0.004, MIXED, p_holm=0.008, n_boot=2000),
                          excluded=(Exclusion("runs/kd_x/sst2/seed4", 4, "another tokenizer"),))},
            params=17_389_056, latency_ms=3.9, budget="task 4.0k ex x 2 ep"),
        Row(NO_LATENCY, "student", "6L-minilm", {"sst2": cell(0.86, 0.87), "cola": cell(0.56, 0.57, mark="tie", mark_vs=BASELINE,
                                                                       mark_test=ONE_PAIR)},
            params=22_713_216, budget="task 4.0k ex x 2 ep"),
    )
    return StudyTable("kd_vs_nokd", "KD against no-KD, 3 seeds", ("sst2", "cola"), rows, commit="0123abcd",
                      dirty=dirty, notes=("Teachers fine-tuned on the full training set.",), seeds=3)


@pytest.fixture
def outputs(tmp_path):
    return tmp_path, write_study_outputs(study(), tmp_path / "out")


def markdown_rows(text: str) -> pd.DataFrame:
    """The Markdown table's cells, by column title and row key."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    frame = pd.DataFrame(cells[2:], columns=cells[0])  # cells[1] is the |:---| line
    return frame.set_index(frame.Row.str.removesuffix(" (baseline)"))


def test_every_file_is_written(outputs):
    _, paths = outputs
    assert [p.name for p in paths] == ["table.md", "table.csv", "table.tex", "pareto.png", "pareto.csv"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_markdown_cells(outputs):
    _, paths = outputs
    text = paths[0].read_text()
    t = markdown_rows(text)
    assert list(t.columns) == ["Row", "Model", "Params (M)", "CPU ms (b1, L128)", "Budget", "SST-2 (Acc)",
                               "CoLA (MCC)", "Avg"]
    bold = [(row, col) for row in t.index for col in t.columns if "**" in t.loc[row, col]]
    assert bold == [(ODD, "SST-2 (Acc)")]
    best = t.loc[ODD, "SST-2 (Acc)"]
    assert best.startswith(f"**{100 * statistics.fmean([0.87, 0.875, 0.88 + 1 / 3000]):.1f} ± ")
    assert "(n=3)‡1" in best and "ret 95.6 %" in best and "Δ +1.2 [−0.3, +2.6] p=0.60" in best
    assert t.loc[NO_LATENCY, "CoLA (MCC)"] == "≈ 56.5 ± 0.7 (n=2)"
    # one dagger per flagged seed; the mean of the others is what "best" and the tests compare
    assert t.loc[BASELINE, "CoLA (MCC)"] == "15.0 ± 13.2 (n=3)†; without †: 22.5 (n=2)"
    assert t.loc[TEACHER, "SST-2 (Acc)"] == "91.0 ± 0.5 (n=3)"
    assert t.Row[BASELINE] == f"{BASELINE} (baseline)"
    assert t.loc[ODD, "CoLA (MCC)"] == "" and t.loc[ODD, "Avg"].endswith("(1 of 2)")
    assert t.loc[NO_LATENCY, "CPU ms (b1, L128)"] == "—" and t.loc[TEACHER, "Params (M)"] == "22.7"
    assert "runs/kd_x/sst2/seed4 (seed 4): another tokenizer" in text
    assert METHODS[MIXED][1] in text and "Holm" in text
    assert "Commit: 0123abcd" in text and "DIRTY" not in text and "dirty" not in t.to_string()
    assert "Teachers fine-tuned on the full training set." in text
    # what bold and ≈ rest on: each task's best against its runner-up
    assert f"SST-2: {ODD} against {NO_LATENCY}, Δ +1.3 [+0.4, +2.0] p=0.008 over 2 clean seed pairs" in text
    assert f"CoLA: {NO_LATENCY} against {BASELINE}, Δ +33.0 over 1 clean seed pair, no test (one seed pair)" in text
    assert "the best student row on the task" in text and "teacher rows do not compete" in text
    assert "not corrected for the number of comparisons" in text  # the interval; p is Holm-corrected


def test_summary_counts_what_a_complete_clean_study_needs(outputs):
    # students: 3 + 3 (one collapsed) + 3 + 2 + 2 seeds in 5 cells, the 6L row's two short of 3 seeds
    assert study().summary() == ("13 student seeds in 5 cells, 2 of them short of the study's 3 seeds; 1 collapsed "
                                 "(7.7 %); 1 records excluded; 2 teacher instances (one per card and task); "
                                 "commit 0123abcd")
    assert study(dirty=True).summary().endswith("commit 0123abcd with uncommitted changes")
    assert f"Summary: {study().summary()}." in outputs[1][0].read_text()


def test_marks_go_on_the_clean_mean_of_a_cell_with_collapsed_seeds(tmp_path):
    """'Best' compares clean means: bold on the mean over all seeds would mark a figure that lost."""
    table = study()
    rows = list(table.rows)
    base = rows[1]
    rows[1] = dataclasses.replace(base, cells=base.cells | {"cola": dataclasses.replace(
        base.cells["cola"], mark="best", mark_vs=NO_LATENCY, mark_test=DIFF)})
    noisy = dataclasses.replace(DIFF, p=float("nan"), p_holm=float("nan"))  # two pairs, every resample undefined
    rows[3] = dataclasses.replace(rows[3], cells=rows[3].cells | {"sst2": dataclasses.replace(
        rows[3].cells["sst2"], vs_baseline=noisy)})
    t = markdown_rows(markdown(dataclasses.replace(table, rows=tuple(rows))))
    assert t.loc[BASELINE, "CoLA (MCC)"] == "15.0 ± 13.2 (n=3)†; without †: **22.5** (n=2)"
    assert "no test (undefined on every resample of the dev examples)" in t.loc[NO_LATENCY, "SST-2 (Acc)"]


def test_p_values_print_apart_on_either_side_of_alpha():
    assert [p_text(p) for p in (0.0004, 0.0496, 0.054, 0.1, 0.456)] == [
        "p<0.001", "p=0.050", "p=0.054", "p=0.10", "p=0.46"]


def test_negative_scores_print_a_minus_sign():
    row = Row("distilbert/3L", "student", "3L-minilm", {"cola": cell(-0.03, -0.018)})
    table = StudyTable("neg", "", ("cola",), (row,), commit="0123abcd", dirty=False)
    assert r"$-2.4$ $\pm$ 0.8 (n=2)" in latex(table) and "−2.4 ± 0.8 (n=2)" in markdown(table)


def test_dirty_is_said_in_every_cell(tmp_path):
    paths = write_study_outputs(study(dirty=True), tmp_path)
    text = paths[0].read_text()
    t = markdown_rows(text)
    shown = [t.loc[r, c] for r in t.index for c in [*t.columns[5:]] if t.loc[r, c]]
    assert len(shown) == 11 and all(s.endswith("dirty") for s in shown)
    assert "**DIRTY TREE: run with --allow-dirty" in text
    assert pd.read_csv(paths[1]).dirty.all()
    assert "DIRTY TREE" in paths[2].read_text() and "dirty" in paths[2].read_text()


def test_csv_gives_back_exact_numbers(outputs):
    _, paths = outputs
    csv = pd.read_csv(paths[1], keep_default_na=False, na_values=[""])
    assert len(csv) == 7  # one line per cell: the row without CoLA has none for it
    by = csv.set_index(["row", "task"])
    for row in study().rows:
        for task, c in row.cells.items():
            line = by.loc[(row.key, task)]
            assert line["mean"] == c.mean and line["n"] == c.n and line["params"] == row.params
            assert line["scores"] == ";".join(map(repr, c.scores))
            assert line["std"] == c.std
    odd = by.loc[(ODD, "sst2")]
    assert (odd.diff_mean, odd.diff_low, odd.diff_high, odd.p, odd.p_holm) == (
        DIFF.mean, DIFF.low, DIFF.high, DIFF.p, DIFF.p_holm)
    assert odd.n_pairs == 3 and odd.method == MIXED and odd.mark == "best" and odd.retention == 95.6
    assert odd.excluded == 1 and odd.excluded_reasons == "seed 4 (runs/kd_x/sst2/seed4): another tokenizer"
    flagged = by.loc[(BASELINE, "cola")]
    assert flagged["flags"] == "seed 3: one class 0.971" and flagged.flagged_share == 0.971
    assert by.loc[(NO_LATENCY, "cola")].mark == "tie" and pd.isna(flagged.mark)
    assert pd.isna(by.loc[(TEACHER, "sst2")].diff_mean) and pd.isna(by.loc[(NO_LATENCY, "cola")].latency_ms)
    assert set(csv.commit) == {"0123abcd"} and not csv.dirty.any()


def latex_problems(tex: str, columns: int) -> list[str]:
    """What would keep ``tex`` from compiling: unbalanced braces or $, an environment not closed in
    order, an unescaped _ or %, or a table line whose & count is not the column count's."""
    body = [ln for ln in tex.splitlines() if not ln.startswith("%")]
    # drop escaped specials and \\ line breaks, so what is left of { } $ _ % & is markup
    bare = [re.sub(r"\\[\\{}_%&#$]", "", ln) for ln in body]
    problems, depth, open_envs = [], 0, []
    for ch in "".join(bare):
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            problems.append("a } closes nothing")
            depth = 0
    if depth:
        problems.append(f"{depth} {{ never closed")
    for verb, env in re.findall(r"\\(begin|end)\{([^}]*)\}", "".join(bare)):
        if verb == "begin":
            open_envs.append(env)
        elif not open_envs or open_envs.pop() != env:
            problems.append(f"\\end{{{env}}} closes no \\begin{{{env}}}")
    problems += [f"\\begin{{{env}}} never closed" for env in open_envs]
    text = "".join(bare)
    problems += ["unbalanced $"] * (text.count("$") % 2) + [f"unescaped {c}" for c in "_%#" if c in text]
    # a table line ends with \\ (gone from its bare form); its unescaped & separate the columns
    problems += [f"{b.count('&')} & in a line of {columns} columns: {b[:40]}" for ln, b in zip(body, bare)
                 if ln.endswith("\\\\") and "&" in b and b.count("&") != columns - 1]
    return problems


def test_latex_checker_finds_mistakes():
    assert latex_problems(r"\begin{table}\begin{tabular}{ll} a & b \\ \end{tabular}\end{table}", 2) == []
    assert latex_problems(r"\begin{table}{\end{table}", 1) == ["1 { never closed"]
    assert latex_problems(r"\begin{a}\begin{b}\end{a}\end{b}", 1) == [
        r"\end{a} closes no \begin{a}", r"\end{b} closes no \begin{b}"]
    assert latex_problems(r"\begin{a}$x", 1) == [r"\begin{a} never closed", "unbalanced $"]
    assert latex_problems("kd_x & 50% & 1 \\\\", 2) == [
        "unescaped _", "unescaped %", "2 & in a line of 2 columns: kd_x & 50% & 1 "]
    assert latex_problems(r"a \& b & c \\", 2) == []  # an escaped & separates nothing


def test_latex_is_well_formed(outputs):
    _, paths = outputs
    tex = paths[2].read_text()
    assert latex_problems(tex, 8) == []
    assert latex_problems(latex_document(tex), 8) == []
    for needed in (r"\toprule", r"\midrule", r"\bottomrule", r"$\pm$", r"\textbf{", r"$^{\dagger}$",
                   r"kd/3L\_from\_minilm [50\% mix]", r"kd/6L \& \#2", r"no\_kd/3L (baseline)"):
        assert needed in tex


def test_latex_escape():
    assert latex_escape("a_b%c&d#e$f") == r"a\_b\%c\&d\#e\$f"
    assert latex_escape(r"x\y{z}") == r"x\textbackslash{}y\{z\}"  # the added braces are not escaped again
    assert latex_escape("~^") == r"\textasciitilde{}\textasciicircum{}"
    assert latex_escape("--set a→b ± 1") == r"-{}-set a$\rightarrow$b $\pm$ 1"
    assert latex_escape("plain text, 3L-minilm") == "plain text, 3L-minilm"
    assert latex_escape("a<b>c|d") == r"a\textless{}b\textgreater{}c\textbar{}d"  # pdflatex's OT1 prints ¡ ¿ —


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (texlive-latex-base)")
def test_latex_compiles(tmp_path):
    table = dataclasses.replace(study(dirty=True), notes=("caps: 4k ~ 50% of {SST-2} & $x^2$ \\ → ≈",))
    paths = write_study_outputs(table, tmp_path / "out")
    (tmp_path / "doc.tex").write_text(latex_document(paths[2].read_text()))
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_pareto(outputs):
    _, paths = outputs
    image = imread(paths[3])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    p = pd.read_csv(paths[4], keep_default_na=False, na_values=[""]).set_index("row")
    assert list(p.columns) == ["kind", "avg", "tasks", "collapsed", "latency_ms", "params", "on_frontier_latency",
                               "on_frontier_params", "notes"]
    # latency: the baseline (4.1 ms, cheapest) has a collapsed CoLA seed, so only the teacher is on it
    assert p.on_frontier_latency.drop(NO_LATENCY).to_dict() == {TEACHER: True, BASELINE: False, ODD: False}
    assert pd.isna(p.on_frontier_latency[NO_LATENCY])  # not drawn: neither on nor off
    # params: the 6L student has the teacher's size and a higher average: the teacher is dominated
    assert p.on_frontier_params.to_dict() == {TEACHER: False, BASELINE: False, ODD: False, NO_LATENCY: True}
    assert "left out of the latency panel: no CPU latency" in p.notes[NO_LATENCY]
    assert "avg over 1 of 2 tasks" in p.notes[ODD]
    assert p.collapsed[BASELINE] == 1 and "1 collapsed seed(s) in its avg" in p.notes[BASELINE]
    assert p.avg[TEACHER] == study().row(TEACHER).avg


def test_frontier():
    assert frontier([]) == set()
    assert frontier([("a", 1.0, 0.5)]) == {"a"}
    points = [("cheap", 1.0, 0.6), ("mid", 2.0, 0.7), ("dominated", 3.0, 0.65), ("top", 5.0, 0.9),
              ("same cost, worse", 2.0, 0.69), ("same score, dearer", 2.5, 0.7)]
    assert frontier(points) == {"cheap", "mid", "top"}
    # a tie on both counts: neither beats the other, so both stay
    assert frontier([("a", 1.0, 0.8), ("b", 1.0, 0.8), ("c", 2.0, 0.8)]) == {"a", "b"}
    with pytest.raises(ValueError, match="distinct names"):
        frontier([("a", 1.0, 0.8), ("a", 2.0, 0.9)])


def test_unknown_mark_or_method_is_an_error(tmp_path):
    bad = dataclasses.replace(study(), rows=(Row("r", "student", "m", {"sst2": cell(0.5, mark="bets")}),))
    with pytest.raises(ValueError, match="bets"):
        write_study_outputs(bad, tmp_path)
    diff = dataclasses.replace(DIFF, method="bootstrapped")
    bad = dataclasses.replace(study(), rows=(Row("r", "student", "m", {"sst2": cell(0.5, vs_baseline=diff)}),))
    with pytest.raises(ValueError, match="bootstrapped"):
        write_study_outputs(bad, tmp_path)


def test_a_suspect_latency_is_marked_everywhere(tmp_path):
    table = study()
    rows = tuple(dataclasses.replace(r, latency_suspect=r.key == BASELINE) for r in table.rows)
    paths = write_study_outputs(dataclasses.replace(table, rows=rows), tmp_path)
    text = paths[0].read_text()
    assert markdown_rows(text).loc[BASELINE, "CPU ms (b1, L128)"] == "4.1 ⚠"
    assert "⚠: CPU latency measured slower than a deeper model of the same width" in text and BASELINE in text
    csv = pd.read_csv(paths[1]).set_index(["row", "task"])
    assert csv.latency_suspect[(BASELINE, "sst2")] and not csv.latency_suspect[(TEACHER, "sst2")]
    assert r"4.1\textsuperscript{\S}" in paths[2].read_text()
    p = pd.read_csv(paths[4], keep_default_na=False, na_values=[""]).set_index("row")
    assert not p.on_frontier_latency[BASELINE] and "kept off the latency frontier" in p.notes[BASELINE]


def test_labels_spread_apart_as_little_as_needed():
    from harness.study_plot import spread

    assert spread([0.1, 0.5, 0.9], 0.04) == [0.1, 0.5, 0.9]  # far apart: each at its point
    got = spread([0.5, 0.5, 0.51, 0.9], 0.04)
    assert got[0] == 0.5 and all(b - a >= 0.04 - 1e-12 for a, b in zip(got, got[1:])) and got[3] == 0.9
    top = spread([0.97, 0.97, 0.98], 0.04)  # a run at the top is pushed down, not off the panel
    assert top[-1] == 0.98 and all(b - a >= 0.04 - 1e-12 for a, b in zip(top, top[1:]))


def test_a_capped_task_is_named_in_its_header_and_a_note():
    from harness.study_render import header, markdown

    table = study()
    base = next(r for r in table.rows if r.baseline)
    capped_row = dataclasses.replace(base, cells=base.cells | {"sst2": dataclasses.replace(base.cells["sst2"], capped=True)})
    table = dataclasses.replace(table, rows=tuple(capped_row if r is base else r for r in table.rows))
    assert [h for h in header(table) if "capped" in h] == ["SST-2 (Acc) capped"]
    assert "- capped: SST-2: trained on fewer examples than GLUE's training set holds" in markdown(table)
    assert "capped" not in " ".join(header(study())) and "- capped:" not in markdown(study())


def test_the_notes_say_which_harness_built_the_tables():
    from harness.study_render import markdown

    same = dataclasses.replace(study(), rendered_at="0123abcd")
    assert "- Commit: 0123abcd\n" in markdown(same)  # built by the records' own commit: nothing to add
    later = dataclasses.replace(study(), rendered_at="fedc9876")
    assert "- Commit: 0123abcd; tables built by the harness at fedc9876 from these records" in markdown(later)
