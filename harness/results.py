"""The tables rendered from the run records (:mod:`harness.records`), never typed by hand.

``build_tables`` reads every record and writes ``glue.{md,csv,tex}`` and ``speed.{md,csv,tex}``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from tabulate import tabulate

from harness.losses import TERMS
from harness.records import load_records, read_predictions
from harness.run_record import RunRecord
from harness.tasks import TASKS, get_task


@dataclass(frozen=True)
class TableRecord:
    """A RunRecord with what its row and cell need from the files beside it."""

    record: RunRecord
    folder: str  # the record's folder, relative to the results folder
    device: str  # env.json's device
    cap: int | None  # a teacher's own training cap (None: full set, or not a teacher)
    teacher_caps: tuple[int, ...]  # the caps of the card teachers a student read
    single_class: bool  # predicts one class for every dev example


def _teacher_cap(record: Path) -> int | None:
    """The training cap a teacher was fine-tuned with (its resolved spec): teachers fine-tuned with
    different caps are different rows."""
    r = yaml.safe_load((record / "recipe.yaml").read_text())
    settings = r["finetune"] if "finetune" in r else r["cofinetune"]["settings"]
    return settings["max_train_examples"]


def _teacher_caps(record: Path, terms: list[str]) -> tuple[int, ...]:
    """The caps its card teachers were fine-tuned with, for a student some term of which reads a
    teacher (its resolved recipe's teacher_checkpoints); () when none is capped or none teaches.  A
    student taught by a 2k-example teacher and one taught by a fully trained teacher are different
    experiments, and the cell says which it is."""
    if not any(TERMS.get(t).needs_teacher for t in terms):
        return ()  # no-KD: a teacher may be listed (shared defaults) but teaches nothing
    r = yaml.safe_load((record / "recipe.yaml").read_text())
    return tuple(sorted({c["finetune"]["max_train_examples"] for c in r["teacher_checkpoints"]
                         if "finetune" in c and c["finetune"]["max_train_examples"] is not None}))


def single_class(folder: Path, task: str) -> bool:
    """Whether a classifier's record predicts one class for every dev example: its score is then the
    constant predictor's (e.g. MRPC's 74.8 = all-positive F1/acc), whatever the method."""
    t = get_task(task)
    if t.is_regression:
        return False
    preds = {p for f in sorted((folder / "predictions").glob("*.tsv")) for p in read_predictions(f, False)[0]}
    return len(preds) == 1


def row_key(t: TableRecord) -> str:
    """Rows gather one method/student over tasks: 'glue/sst2/kd/3L_from_x' -> 'kd/3L_from_x'."""
    m = t.record
    if m.kind == "teacher":
        how = f"co-finetuned with {', '.join(m.cofinetuned_with)}" if m.cofinetuned_with else "fine-tuned"
        return f"teacher ({how}{f', cap {t.cap}' if t.cap else ''}): {m.model}"
    if m.kind == "stage":  # stages/<task>/<name>
        return f"assistant stage: {m.name.split('/')[-1]}"
    parts = m.name.split("/")
    if len(parts) > 2 and parts[0] == "glue" and parts[1] in TASKS:
        parts = parts[2:]
    return "/".join(parts)


def _size(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else f"{n}"


def _cell(scores: pd.Series, n_train: int, epochs: float, task: str, teacher_caps: set[int],
          say_seeds: bool = False) -> str:
    txt = f"{100 * scores.mean():.1f}"
    if len(scores) > 1:
        txt += f" ± {100 * scores.std(ddof=1):.1f}"
    # a row whose cells have different seed counts says each cell's, so a 1-seed figure is not read
    # as if it were a mean like its neighbours
    notes = [f"{len(scores)} seed{'s' * (len(scores) > 1)}"] if say_seeds else []
    if n_train < get_task(task).train_size:
        # a capped run's budget is its size and its epochs: 2k examples for 1 epoch and for 2 are not
        # the same experiment, and rows of one table may differ in either
        notes.append(f"{_size(n_train)}, {epochs:g} ep")
    caps = sorted(c for c in teacher_caps if c < get_task(task).train_size)
    if caps:
        notes.append("teacher " + "/".join(_size(c) for c in caps))
    return txt + (f" ({'; '.join(notes)})" if notes else "")


def _split_reruns(long: pd.DataFrame) -> None:
    """A teacher or assistant stage trained twice for the same task and seed under different specs
    (another fine-tuning spec, or the same one from an older harness whose hash differs) is two
    models, not two seeds: each gets its own row, marked with its spec key, so no cell averages them."""
    # runs/teachers/<card>/<task>/<spec>  and  runs/stages/<task>/<name>/<spec>/seed<N>
    teacher = long.row.str.startswith("teacher (")
    stage = long.row.str.startswith("assistant stage: ")
    clash = (teacher | stage) & long.duplicated(["row", "task", "seed"], keep=False)
    spec = [Path(d).parts[-1 if t else -2][:6] for d, t in zip(long.record, teacher)]
    long.loc[clash, "row"] = long.row[clash] + " [" + pd.Series(spec, index=long.index)[clash] + "]"


def glue_table(recs: list[TableRecord]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(display table, long CSV frame).  Cells: mean (± std over seeds) of the task's headline x 100."""
    long = pd.DataFrame([{
        "row": row_key(t), "model": t.record.model, "lineage": " → ".join(t.record.lineage), "task": t.record.task,
        "seed": t.record.seed, "score": t.record.score, "train_examples": t.record.train.train_examples,
        "epochs": t.record.train.epochs, "teacher_train_cap": "/".join(map(str, t.teacher_caps)),
        "device": t.device, "single_class": t.single_class, "record": t.folder} for t in recs])
    if long.empty:
        return long, long
    _split_reruns(long)
    order = [t for t in TASKS if t in set(long.task)]
    rows = []
    for (row, model), g in long.groupby(["row", "model"], sort=False):
        r = {"Recipe": row, "Model": g.lineage.iloc[0]}
        seeds = g.groupby("task").seed.nunique()  # one record per seed and task (reruns split above)
        mixed = seeds.min() != seeds.max()
        means = []
        for t in order:
            gt = g[g.task == t]
            if len(gt):
                caps = {int(c) for cs in gt.teacher_train_cap for c in cs.split("/") if c}
                cell = _cell(gt.score, int(gt.train_examples.max()), float(gt.epochs.max()), t, caps, mixed)
                r[get_task(t).display] = cell + " †" * bool(gt.single_class.any())
                means.append(gt.score.mean())
            else:
                r[get_task(t).display] = ""
        # a mean over fewer tasks than the table's columns is not comparable with a full one: say so
        r["Avg"] = f"{100 * sum(means) / len(means):.1f}" + (f" ({len(means)} of {len(order)})" if len(means) < len(order) else "")
        r["Seeds"] = f"{seeds.min()}–{seeds.max()}" if mixed else str(seeds.max())
        r["Device"] = ", ".join(sorted(set(g.device)))
        rows.append(r)
    return pd.DataFrame(rows), long


def _speed_reference(m: RunRecord) -> str:
    """The model a record's speed-up is measured against: its first teacher (a card, or an assistant
    stage's model), or itself for a teacher."""
    if m.teacher_speed is None:
        return m.model
    first = m.teachers[0]
    return first.card or first.stage


def speed_table(recs: list[TableRecord]) -> pd.DataFrame:
    """One row per (model, the teacher its speed-up is against): a student taught by two different
    teachers in different recipes gets a row for each."""
    rows = {}
    for m in (t.record for t in recs):
        sp = m.speed
        key = (m.model, _speed_reference(m))
        if key in rows:
            continue
        r = {"Model": m.model, "Params (M)": round(m.params.total / 1e6, 1),
             "Size (MB)": round(m.size_bytes / 2**20, 1),
             f"CPU latency b1 L{sp.seq_len} (ms)": sp.cpu.latency_ms,
             f"CPU throughput b{sp.throughput_batch} (ex/s)": sp.cpu.throughput}
        for label, other in (("bf16", sp.cpu_bf16), ("int8", sp.cpu_int8)):  # taken in the same sitting as fp32
            if other is not None:
                r[f"CPU {label} latency b1 (ms)"] = other.latency_ms
                r[f"CPU {label} throughput b{sp.throughput_batch} (ex/s)"] = other.throughput
        if sp.gpu is not None:
            r["GPU"] = sp.gpu.device
            r["GPU latency b1 (ms)"] = sp.gpu.latency_ms
            r[f"GPU throughput b{sp.throughput_batch} (ex/s)"] = sp.gpu.throughput
        t = m.teacher_speed
        r["CPU speed-up vs teacher"] = (
            f"{t.cpu.latency_ms / sp.cpu.latency_ms:.2f}x vs {key[1]}" if t else "1.00x (teacher)")
        r["CPU threads"] = sp.cpu.threads
        rows[key] = r
    return pd.DataFrame(list(rows.values())).fillna("")  # a figure a record does not have is left blank


SPEED_NOTES = ("Rough figures: each record's own quick measurement, taken when its run finished (random ids "
               "at a fixed length, fp32 on CPU, bf16 on GPU; median of the recipe's speed.iters passes at batch 1, "
               "of a quarter as many at the larger batch), whatever else the machine was doing; a speed-up compares "
               "two such draws. To quote a speed, run a study: `python -m harness study speed STUDY` measures each "
               "architecture once, in a fresh process, 30 passes per figure.")
SPEED_LOW_PRECISION = (" CPU bf16: autocast, on a CPU with native bf16; CPU int8: dynamic quantization of the linear "
                       "layers (torch.ao); both timed in the same sitting as the fp32 figures of their row.")
NOTES = ("Cells: GLUE dev headline x 100 (CoLA MCC; STS-B mean of Pearson/Spearman; MRPC, QQP mean of F1/acc; "
         "MNLI mean of matched/mismatched acc; others acc), mean ± std over seeds. Seeds: per cell; 'a–b' "
         "when a row's cells differ, each cell then saying its own count (n seeds). (Nk, E ep): trained on N "
         "examples, fewer than GLUE's full training set, for E epochs (of the last phase, for methods with "
         "several). (teacher N): its teachers were fine-tuned on N examples, fewer than the full training set. †: a seed predicts one class for every dev example (the constant predictor's score). Avg: mean over the row's tasks, '(k of n)' when it lacks some of the table's. "
         "QQP dev here is a held-out sample of GLUE train, not GLUE dev.")


def annotated_records(results_dir: Path) -> list[TableRecord]:
    """Every record, with what its row and cell need from the files beside metrics.json: device, the
    teachers' training caps, and whether it predicts one class everywhere."""
    out = []
    for rel, m in load_records(results_dir):
        folder = results_dir / rel
        teacher = m.kind == "teacher"
        out.append(TableRecord(m, str(rel), json.loads((folder / "env.json").read_text())["device"],
                               _teacher_cap(folder) if teacher else None,
                               () if teacher else _teacher_caps(folder, m.terms), single_class(folder, m.task)))
    return out


def build_tables(results_dir: Path) -> list[Path]:
    recs = annotated_records(results_dir)
    glue, long = glue_table(recs)
    speed = speed_table(recs)
    written = []
    for stem, df, csv_df in (("glue", glue, long), ("speed", speed, speed)):
        md = results_dir / f"{stem}.md"
        body = df.to_markdown(index=False, disable_numparse=True) if not df.empty else "(no run records yet)"
        note = NOTES if stem == "glue" else SPEED_NOTES + (SPEED_LOW_PRECISION if any("bf16" in c or "int8" in c for c in
                                                                                  df.columns) else "")
        md.write_text(f"<!-- generated by `python -m harness tables` from results/runs; do not edit -->\n\n{body}\n\n{note}\n")
        csv_df.to_csv(results_dir / f"{stem}.csv", index=False)
        tex = results_dir / f"{stem}.tex"
        tex.write_text(tabulate(df, headers="keys", tablefmt="latex_booktabs", showindex=False) + "\n")
        written += [md, results_dir / f"{stem}.csv", tex]
    return written
