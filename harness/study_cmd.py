"""``python -m harness study {plan,run,tables,speed} STUDY``: a study from its file to its tables.

``run`` refuses a dirty tree (unless ``--allow-dirty``: every cell then says so), runs every cell that
lacks a record of this commit with the same skip and cache logic as ``harness run`` (records under
``results/studies/<name>/runs``), measures each architecture's speed once (:mod:`harness.archspeed`)
and writes the tables.  ``tables`` rebuilds the tables from the records under the study's folder (the
committed ones, and any a run has added since).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from harness.options import Options
from harness.paths import REPO_ROOT
from harness.records import code_state, git_state
from harness.schema import ConfigError
from harness.study import StudyPlan


def check_tree(allow_dirty: bool) -> str:
    """The code state a study runs at (records.code_state: its commit, '+dirty' with uncommitted
    changes); a dirty tree, or no git at all, is refused unless allowed."""
    commit, changed = git_state(REPO_ROOT)
    if allow_dirty:
        return code_state(commit, changed)
    if commit is None:
        raise ConfigError("a study records the commit it ran at, and this is not a git checkout (or git is "
                          "missing); run from a clone, or pass --allow-dirty")
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise ConfigError(f"the tree has uncommitted changes ({shown}); a study's records must all come from one "
                          "commit. Commit them first, or pass --allow-dirty (every cell of the table then says so)")
    return commit


def check_stack(sp: StudyPlan, results_dir: Path) -> None:
    """Refuse to add records to a study under other torch, transformers or DeepSpeed versions than its
    records': they compute other numbers from the same commit, and the table keeps the study's only
    (:mod:`harness.study_rules`, one software stack)."""
    from harness.records import STACK, installed, stack_label, stack_of
    from harness.study_records import read_study_records
    from harness.study_rules import Rules

    here, theirs = stack_of(installed(STACK)), Rules(sp, read_study_records(sp.folder(results_dir)), True).stack
    if theirs is None or theirs == here:
        return
    now = dict(here)
    pins = " ".join(f"{p}=={v.split('+')[0]}" for p, v in theirs if v is not None and v != now[p])
    raise ConfigError(f"study {sp.name}'s records were trained under {stack_label(theirs)}, and this environment "
                      f"has {stack_label(here)}: its table would leave the new records out. Install the study's "
                      f"versions (pip install {pins}), or move its records away to run it anew under these.")


def run_study(sp: StudyPlan, opts: Options, allow_dirty: bool, log=print) -> None:
    """Train every cell that lacks a record of this commit, one cell after another (seeds another process
    is training: at the end)."""
    from harness import runner

    from harness.engine import is_main, world
    from harness.progress import Progress

    commit = check_tree(allow_dirty)
    check_stack(sp, opts.results_dir)
    opts = dataclasses.replace(opts, results_dir=sp.folder(opts.results_dir), study_commit=commit)
    progress = (Progress([c.plan for c in sp.cells], opts.results_dir, opts.glue_dir, study_commit=opts.study_commit)
                if is_main() else None)
    # Several processes may run one study (one per GPU, or single-threaded CPU lanes): a seed another
    # one is training is left to it, and this one moves on; it comes back to it at the end, when the
    # record is there (skipped) or, if that process stopped, trains it.
    later = []
    for i, cell in enumerate(sp.cells, 1):
        log(f"== study {sp.name}: cell {i}/{len(sp.cells)}: {cell.row} on {cell.task} "
            f"(seeds {_seeds(sp.study.seeds)})")
        busy = [] if world()[1] == 1 else None
        trained = runner.run_recipe(cell.plan, opts, busy=busy)
        if busy:
            log(f"another harness process is training seed(s) {_seeds(busy)} of this cell: left to it for now")
            later.append((cell, busy))
        if progress is not None:
            log(progress.update(trained))
    for cell, seeds in later:
        log(f"== study {sp.name}: back to {cell.row} on {cell.task} (seeds {_seeds(seeds)}), which another "
            "process was training")
        runner.run_recipe(cell.plan, opts, seeds=seeds)


def _seeds(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds))


def write_tables(sp: StudyPlan, results_dir: Path, allow_dirty: bool) -> tuple[list[Path], str]:
    """The study's GLUE table (md, csv, tex, Pareto plot) and, once speed is measured, its speed table;
    with the table's one-line summary."""
    from harness.study_build import build_table
    from harness.study_render import write_study_outputs
    from harness.study_speed import write_speed

    folder = sp.folder(results_dir)
    table = build_table(sp, results_dir, allow_dirty)
    written = write_study_outputs(table, folder)
    if (folder / "speed.json").is_file():
        teachers = {r.model for r in table.rows if r.kind == "teacher"}
        written += write_speed(json.loads((folder / "speed.json").read_text()), list(sp.study.tasks), teachers, folder)
    return written, table.summary()


def dev_lengths(sp: StudyPlan, glue_dir: Path | None) -> tuple[dict[str, list[int]], dict[str, dict]]:
    """Each task's dev token lengths, tokenized as the task's first cell tokenizes them (its student card's
    tokenizer, its recipe's max_length): the distribution the 'dev' speed rows draw their batches from;
    and, per task, what they were measured from (for the speed table's notes)."""
    import statistics

    from harness.glue_files import load_split
    from harness.models import load_tokenizer
    from harness.tasks import get_task

    lengths, about = {}, {}
    for name in sp.study.tasks:
        plan = next(c.plan for c in sp.cells if c.task == name and c.plan.student_card is not None)
        task, max_length = get_task(name), plan.recipe.training.max_length
        rows = load_split(task, task.dev_splits[0], glue_dir)
        pairs = (list(rows["text_a"]), list(rows["text_b"])) if task.is_pair else (list(rows["text_a"]),)
        ids = load_tokenizer(plan.student_card.pretrained_path())(*pairs, truncation=True,
                                                                  max_length=max_length)["input_ids"]
        lengths[name] = [len(x) for x in ids]
        about[name] = {"split": task.dev_splits[0], "tokenizer": plan.student_card.name, "max_length": max_length,
                       "examples": len(ids), "mean": round(statistics.fmean(lengths[name]), 1),
                       "median": statistics.median(lengths[name]), "max": max(lengths[name])}
    return lengths, about


def speed_is_current(result: dict, configs: dict[str, dict], threads: int | None) -> bool:
    """Whether a study's ``speed.json`` already measured every architecture among ``configs`` on this CPU
    model at this thread count (``study run`` then keeps it; ``study speed`` measures again)."""
    from harness import archspeed

    wanted = {archspeed.arch_key(c) for c in configs.values()}
    return (wanted <= set(result["archs"]) and result["machine"]["cpu"] == archspeed.cpu_model()
            and result["machine"]["threads"] == (threads or archspeed.default_threads()))


def measure_speed(sp: StudyPlan, results_dir: Path, glue_dir: Path | None, threads: int | None,
                  rounds: int = 3, again: bool = True) -> list[Path]:
    """Every architecture of the study's models (:func:`harness.study_models.speed_configs`: from its
    recipes and cards, no training needed) measured in ``rounds`` rounds, each take in a fresh
    process (:func:`harness.archspeed.measure`); ``speed.json``.  ``again=False``: nothing is measured
    where the study's speed.json is current (:func:`speed_is_current`)."""
    from harness import archspeed
    from harness.study_models import speed_configs

    configs = speed_configs(sp, results_dir)
    out = sp.folder(results_dir) / "speed.json"
    if not again and out.is_file() and speed_is_current(json.loads(out.read_text()), configs, threads):
        print(f"speed: {out} already measured every architecture of the study on this CPU at this thread "
              f"count; kept (`study speed` measures again)")
        return []
    lengths, about = dev_lengths(sp, glue_dir)
    result = archspeed.measure(configs, lengths, threads, rounds=rounds)
    result["settings"]["dev_lengths"] = about
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return [out]
