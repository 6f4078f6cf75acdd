"""The commands around the runs: the cache, studies, retiming, and what leaves the harness (export,
submission, plots, teacher installs).  Each takes the parsed arguments (:mod:`harness.cli_parser`) and
returns the exit status."""
from __future__ import annotations

from pathlib import Path


def cmd_cache(args) -> int:
    from harness import teacher_cache

    if args.action == "verify":
        return verify_cache()
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


def verify_cache() -> int:
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
    from harness.glue_files import resolve_glue_dir

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
    from harness.engine import is_main

    if not is_main():  # under a launcher, one process measures and writes; the others are done
        return 0
    if args.action in ("run", "speed"):
        for p in study_cmd.measure_speed(sp, args.results_dir, glue_dir, args.threads, args.rounds,
                                          again=args.action == "speed"):
            print(f"wrote {p}")
    written, summary = study_cmd.write_tables(sp, args.results_dir, args.allow_dirty)
    for p in written:
        print(f"wrote {p}")
    print(f"study {sp.name}: {summary}")
    return 0


def cmd_retime(args) -> int:
    from harness.bench import retime

    n = retime(args.results_dir)
    print(f"re-timed {n} records; `python -m harness tables` to rebuild the speed table")
    return 0


def cmd_export(args) -> int:
    from harness.export import check_lines, export
    from harness.glue_files import resolve_glue_dir

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
    from harness.glue_files import resolve_glue_dir

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
