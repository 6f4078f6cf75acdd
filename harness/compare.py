"""Two rows of the GLUE table compared on the runs they share: ``python -m harness compare A B``.

The table's averages put a 3-seed mean beside a 1-seed figure, and at small training budgets the
run-to-run spread is as large as the gaps between methods.  Pairing the two rows' records by task and
seed (same data order, same initialisation of what is not copied from a teacher) removes what the
two runs share, and a sign test over the pairs says how often so many wins would come by chance.  The
sign test looks only at which run scored higher: the tasks' headline metrics (MCC, accuracy,
correlations) are on different scales, so a test on the sizes of the differences would let one task
weigh more than another.  ``scipy.stats.binomtest`` does the arithmetic.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import pandas as pd
from scipy.stats import binomtest

from harness.results import annotated_records, glue_table
from harness.schema import ConfigError
from harness.tasks import TASKS, get_task


def _pick(long: pd.DataFrame, name: str) -> pd.DataFrame:
    """The records of one table row, by its Recipe column ('kd/6L_from_mpnet')."""
    rows = sorted(set(long.row))
    if name not in rows:
        close = difflib.get_close_matches(name, rows, n=3, cutoff=0.4)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"no table row {name!r} in these records.{hint} "
                          f"Rows are the GLUE table's Recipe column: {', '.join(rows)}")
    sub = long[long.row == name]
    if sub.model.nunique() > 1:  # the table shows one row per (recipe, model)
        raise ConfigError(f"row {name!r} holds several models ({', '.join(sorted(set(sub.model)))}); "
                          "compare rows of one model each")
    return sub


def pairs(long: pd.DataFrame, a: str, b: str) -> tuple[pd.DataFrame, list[str]]:
    """(one line per task and seed both rows ran: task, seed, a, b, diff (a - b) x 100,
    what was left unpaired)."""
    ra, rb = _pick(long, a), _pick(long, b)
    key = ["task", "seed"]
    both = ra[key + ["score"]].merge(rb[key + ["score"]], on=key, suffixes=("_a", "_b"))
    both = both.rename(columns={"score_a": "a", "score_b": "b"})
    both[["a", "b"]] *= 100
    both["diff"] = both.a - both.b
    order = {t: i for i, t in enumerate(TASKS)}
    both = both.sort_values(["task", "seed"], key=lambda c: c.map(order) if c.name == "task" else c)
    left = []
    for name, r in ((a, ra), (b, rb)):
        alone = r.merge(both[key], on=key, how="left", indicator=True)
        alone = alone[alone._merge == "left_only"]
        left += [f"{name}: {get_task(t).display} seed {s}" for t, s in zip(alone.task, alone.seed)]
    return both.reset_index(drop=True), left


def summary(both: pd.DataFrame, a: str, b: str) -> tuple[pd.DataFrame, dict]:
    """(per-task table, overall figures).  The overall means weigh each task once, whatever its number
    of seeds, like the GLUE table's Avg; wins, losses and the sign test count every pair."""
    per_task = both.groupby("task", sort=False)[["a", "b", "diff"]].mean()
    lines = []
    for task, g in both.groupby("task", sort=False):
        d, m = g["diff"], per_task.loc[task]
        lines.append({"Task": get_task(task).display, "Seeds": ", ".join(map(str, g.seed)),
                      a: f"{m.a:.1f}", b: f"{m.b:.1f}",
                      "Difference": f"{m['diff']:+.1f}" + (f" ± {d.std(ddof=1):.1f}" if len(d) > 1 else ""),
                      "Wins–losses": f"{(d > 0).sum()}–{(d < 0).sum()}"})
    wins, losses = int((both["diff"] > 0).sum()), int((both["diff"] < 0).sum())
    overall = {"tasks": len(per_task), "pairs": len(both), "mean_a": per_task.a.mean(), "mean_b": per_task.b.mean(),
               "mean_diff": per_task["diff"].mean(), "wins": wins, "losses": losses,
               "ties": len(both) - wins - losses,
               # ties say nothing about which is better and are left out, as the sign test does
               "sign_p": binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else float("nan")}
    lines.append({"Task": f"Mean over {overall['tasks']} tasks", "Seeds": f"{overall['pairs']} pairs",
                  a: f"{overall['mean_a']:.1f}", b: f"{overall['mean_b']:.1f}",
                  "Difference": f"{overall['mean_diff']:+.1f}", "Wins–losses": f"{wins}–{losses}"})
    return pd.DataFrame(lines), overall


def report(results_dir: Path, a: str, b: str) -> str:
    """The Markdown report ``harness compare`` prints."""
    _, long = glue_table(annotated_records(results_dir))
    if long.empty:
        raise ConfigError(f"no run records under {results_dir / 'runs'}")
    both, left = pairs(long, a, b)
    if both.empty:
        raise ConfigError(f"{a!r} and {b!r} share no task and seed: nothing to pair")
    table, o = summary(both, a, b)
    out = [f"{a} vs {b}: GLUE dev headline x 100, paired by task and seed; Difference: {a} minus {b} "
           "(mean ± std over the task's pairs)", "",
           table.to_markdown(index=False, disable_numparse=True), ""]
    if o["wins"] + o["losses"]:
        out.append(f"Sign test over the {o['wins'] + o['losses']} pairs that differ ({o['ties']} ties left out): "
                   f"{a} scores higher in {o['wins']}; two-sided p = {o['sign_p']:.3g}.")
    else:
        out.append("Every pair ties: no sign test.")
    out.append("Unpaired records, left out: " + ("; ".join(left) if left else "none") + ".")
    return "\n".join(out)
