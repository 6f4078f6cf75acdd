"""kd-harness command line: ``python -m harness {run,validate,study,tables,verify,records,compare,list,retime,cache,teachers,export,submit,plot} ...``."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

from harness.cli_parser import parser
from harness.cli_tools import (cmd_cache, cmd_export, cmd_plot, cmd_retime, cmd_study, cmd_submit,
                               cmd_teachers)
from harness.schema import ConfigError




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
    from harness.glue_files import resolve_glue_dir

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
    from harness.records import RecordError, every_record_folder, matches_predictions

    records = every_record_folder(args.results_dir)
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


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "tables": cmd_tables, "verify": cmd_verify,
            "records": cmd_records, "compare": cmd_compare, "list": cmd_list, "retime": cmd_retime,
            "cache": cmd_cache, "study": cmd_study, "export": cmd_export, "submit": cmd_submit, "plot": cmd_plot,
            "teachers": cmd_teachers}


def main(argv: list[str] | None = None) -> int:
    from harness.tasks import GlueDataError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.argv = argv  # the launcher hands each rank the command line as typed
    try:
        return COMMANDS[args.command](args)
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
