"""Running a plan: teachers and assistant stages first, then the student, evaluated, timed, recorded.

Every rank runs this same code; rank 0 alone writes files, and barriers keep the ranks in step.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from harness import curves
from harness.cached import cached_run, finish, summary
from harness.data import tokenize_task
from harness.distill import Teacher
from harness.engine import barrier, is_main
from harness.evaluate import evaluate
from harness.integrity import claimed, intact, locked, model_id, write_manifest
from harness.metrics import task_headline
from harness.models import build_student, load_classifier, load_tokenizer, tokenizer_id
from harness.options import Options
from harness.paths import REPO_ROOT, cache_dir
from harness.phases import train_phases
from harness.resume import Checkpoints
from harness.records import (env_info, git_state, read_record, record_commit, same_data, short_state, twin_record,
                             write_record)
from harness.resolved import RunPlan
from harness.run_record import RunRecord
from harness.glue_files import data_id
from harness.teacher_prep import ReadyTeacher, ensure_cofinetuned, ensure_teacher, untrained_teacher


def run_recipe(plan: RunPlan, opts: Options, seeds: list[int] | None = None,
               busy: list[int] | None = None) -> list[dict]:
    """Run every seed of a plan (or those of ``seeds``); returns the training stats of the runs trained
    now (rank 0).  With ``busy`` (a study's cell, one rank) a seed whose record another process is
    training is not waited for: it is appended to ``busy``, for the caller to come back to."""
    git_state(REPO_ROOT)  # the code as it is now, before anyone edits it while this trains
    trained = []
    for seed in plan.recipe.training.seeds if seeds is None else seeds:
        out = opts.results_dir / "runs" / plan.name / f"seed{seed}"
        # one process at a time per record: a second one waits (or goes on), then finds the record and skips
        with _record_lock(out, f"{plan.name} seed {seed}", busy is not None) as mine:
            if not mine:
                busy.append(seed)
                continue
            barrier()
            if _needs_run(plan, seed, out, opts):
                ckpt = cache_dir() / "students" / plan.name / f"seed{seed}-{plan.hash(seed)}"
                trained += train_and_record(plan, seed, opts, ckpt, out)
                if is_main():  # last: a student without it is not reused (it is trained again)
                    write_manifest(ckpt)
            barrier()
    return trained


@contextlib.contextmanager
def _record_lock(out: Path, what: str, go_on: bool):
    """Rank 0 holds the record's lock for every rank; yields False, holding nothing, when ``go_on`` and
    another process holds it (one rank only: the other ranks could not tell)."""
    if not is_main():
        yield True
    elif go_on:
        with claimed(out) as free:
            yield free
    else:
        with locked(out, what):
            yield True


def _needs_run(plan: RunPlan, seed: int, out: Path, opts: Options) -> bool:
    """A record is reused when it is of this very recipe, read this data, and its model was trained
    with this cache; a record that came with a checkout (trained elsewhere) is reproduced instead."""
    if opts.study_commit is not None and not opts.force and _copy_twin(plan, seed, out, opts):
        return False
    if not (out / "metrics.json").exists() or opts.force:
        return True
    old, rhash, data = read_record(out), plan.hash(seed), data_id(plan.task, opts.glue_dir)
    why = "the recipe changed" if old.recipe_hash != rhash else \
        f"it read other data ({old.data}; this run reads {data})" if not same_data(old, data) else None
    if opts.study_commit is not None and why is None:  # a study cell: its record is the claim
        if (was := record_commit(out)) == opts.study_commit:
            if is_main():
                print(f"[{plan.name} seed {seed}] skipped: this study's record exists ({out})", flush=True)
            return False
        why = f"it comes from commit {short_state(was)} and this study runs at {short_state(opts.study_commit)}"
    elif why is None and old.checkpoint is not None and intact(Path(old.checkpoint), "a trained student"):
        if is_main():
            print(f"[{plan.name} seed {seed}] skipped: record exists ({out}); --force to rerun", flush=True)
        return False
    if is_main():
        print(f"[{plan.name} seed {seed}] rerunning: a record exists but {why or 'its model is not in this cache'}",
              flush=True)
    return True


def _copy_twin(plan: RunPlan, seed: int, out: Path, opts: Options) -> bool:
    """A study cell that another study has already run at this commit (same recipe hash): its record is
    copied here instead of trained again, and the teacher records it names are brought in beside it
    (from the cache; trained only if the cache lacks them, as a run would)."""
    if (out / "metrics.json").exists() and record_commit(out) == opts.study_commit:
        return False  # this study's own record: the usual skip
    rel = out.relative_to(opts.results_dir)
    data = data_id(plan.task, opts.glue_dir)
    twin = twin_record(opts.results_dir, rel, plan.hash(seed), opts.study_commit, data)
    if twin is None:
        return False
    if plan.reads_teachers():  # no-KD names no teacher record; the others' records come in beside it
        ready = {t.instance for t in ready_teachers(plan, seed, opts)[0]}
        read = {e.instance for e in read_record(twin).teachers}
        if read != ready:  # a teacher trained again since: the twin read weights this study's cache lacks
            if is_main():
                print(f"[{plan.name} seed {seed}] not copied from {twin}: it read teacher instances "
                      f"{sorted(map(str, read))}, this cache holds {sorted(map(str, ready))}", flush=True)
            return False
    if is_main():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(twin, out)
        print(f"[{plan.name} seed {seed}] copied: study {twin.parents[len(rel.parts) - 1].name} ran this very "
              f"recipe and seed at this commit ({twin})", flush=True)
    barrier()
    return True


def ready_teachers(plan: RunPlan, seed: int, opts: Options) -> tuple[list[ReadyTeacher], list[dict]]:
    """Every teacher of the plan ready to teach (fine-tuned, co-finetuned, or its stage trained; only
    timed for no-KD), and the training stats of the stages trained on the way."""
    if plan.recipe.cofinetune is not None:  # validation made sure they are all cards
        return ensure_cofinetuned(plan, opts), []
    if not plan.reads_teachers() and all(t.card is not None for t in plan.teachers):
        return [untrained_teacher(t.card, plan.task) for t in plan.teachers], []  # no-KD: only timed
    ready, trained = [], []
    for t in plan.teachers:
        if t.card is not None:
            ready.append(ensure_teacher(t, opts))
        else:
            stage_ready, stage_stats = ensure_stage(t.stage, seed, opts)
            ready.append(stage_ready)
            trained += stage_stats
    return ready, trained


def train_and_record(plan: RunPlan, seed: int, opts: Options, ckpt: Path, out: Path, shown: Path | None = None,
                     checkpoint: Path | None = None) -> list[dict]:
    """Train the plan's student for one seed (its teachers and stages first), save it to ``ckpt`` and
    write its record to ``out``.  A stage trained into a temporary folder names its final ``checkpoint``
    in the record and ``shown`` in the summary line.  Returns the training stats of every stage trained."""
    task = plan.task
    ready, trained = ready_teachers(plan, seed, opts)
    teachers = [Teacher(load_classifier(r.folder, task), rt.weight, r.folder) for r, rt in zip(ready, plan.teachers)]
    model, tok, label = build_student(plan.recipe.student, plan.student_card, task, seed)
    for t, r in zip(teachers, ready):
        t_tok = load_tokenizer(r.folder)
        if tokenizer_id(t_tok) != tokenizer_id(tok):  # it reads the text through its own tokenizer
            t.tokenizer = t_tok
    checkpoints = Checkpoints.for_run(checkpoint or ckpt, opts.checkpoint_every, opts.study_commit)
    student, phase_stats = train_phases(plan, model, tok, teachers, seed, label, opts, checkpoints)
    last_training = plan.recipe.phase_training(plan.recipe.named_phases()[-1][1])
    _, devs = tokenize_task(task, tok, last_training, opts.glue_dir)
    preds, dev = evaluate(student, tok, devs, task, last_training, label)
    stats = dict(phase_stats[-1])  # the task phase: what the tables' training-size marks read
    if len(phase_stats) > 1:
        stats["phases"] = phase_stats
    if is_main():
        finished = finish(student, tok, ckpt, plan.recipe.speed)
        record = student_record(plan, seed, label, ready, dev, stats, finished, checkpoint or ckpt,
                                data_id(task, opts.glue_dir))
        stages = [(s["phase"], s["block"]) for s in phase_stats]  # in the order they trained: stage0, 1, ...
        write_record(out, plan.resolved(seed), record, preds, env_info(REPO_ROOT),
                     curves.record_files(checkpoints.root, stages))
        summary(record, shown or out)
        trained += stats["phases"] if "phases" in stats else [stats]
    barrier()
    if not opts.keep_checkpoints:
        checkpoints.clear()
    return trained


def student_record(plan: RunPlan, seed: int, label: str, ready: list[ReadyTeacher], dev: dict, stats: dict,
                   finished: dict, checkpoint: Path, data: str) -> RunRecord:
    recipe = plan.recipe
    if len(ready) == 1:  # a chain: the assistant's own lineage, then this student
        lineage = ready[0].lineage + [label]
    else:
        names = [r.name for r in ready]
        lineage = ([teacher_stage(names, [t.weight for t in recipe.teachers], recipe.teacher_weighting.scheme)]
                   if ready else []) + [label]
    return RunRecord.model_validate({
        "kind": plan.kind, "name": plan.name, "task": plan.task.name, "model": label, "lineage": lineage,
        "teachers": [({"card": t.card.name} if t.card is not None else {"stage": t.ref.stage}) | {"weight": t.weight}
                     | ({"instance": r.instance} if r.instance is not None else {}) for t, r in zip(plan.teachers, ready)],
        "teacher_weighting": recipe.teacher_weighting.model_dump(),
        "terms": list(dict.fromkeys(t.term for _, p in recipe.named_phases() for t in p.objective)),
        "seed": seed, "recipe_hash": plan.hash(seed), "data": data, "dev": dev,
        "score": task_headline(plan.task, dev),
        "train": stats, **finished, "teacher_speed": ready[0].speed if ready else None,
        "teacher_scores": {r.name: r.score for r in ready if r.score is not None}, "checkpoint": str(checkpoint),
    })


def teacher_stage(names: list[str], weights: list[float], scheme: str) -> str:
    """How a lineage shows the teachers of one stage: 'a' or 'a + b (mtbert)' or 'a + b (static 2:1)'."""
    if len(names) == 1:
        return names[0]
    how = scheme
    if scheme != "uniform" and len(set(weights)) > 1:
        how += " " + ":".join(f"{w:g}" for w in weights)
    elif scheme == "static":
        how = "uniform"  # equal static weights are the uniform mixture
    return f"{' + '.join(names)} ({how})"


def ensure_stage(plan: RunPlan, seed: int, opts: Options) -> tuple[ReadyTeacher, list[dict]]:
    """An assistant stage trained for ``seed``: from the cache when a stage with the same resolved spec
    was trained before (by any recipe), else trained now.  Returns it and the stats of what was trained."""
    folder = plan.stage_folder(seed)
    record_dir = opts.results_dir / "runs" / plan.name / plan.hash(seed) / f"seed{seed}"
    trained = []
    if is_main() and (folder / "record" / "metrics.json").exists():
        print(f"[{plan.name} seed {seed}] reusing the trained assistant in {folder}", flush=True)

    def train(tmps: list[Path]) -> None:
        trained.extend(train_and_record(plan, seed, opts, tmps[0], tmps[0] / "record", record_dir, folder))

    record = cached_run([(folder, record_dir)], train, data_id(plan.task, opts.glue_dir), opts.study_commit)[0]
    return ReadyTeacher(folder, " → ".join(record.lineage), record.lineage, record.speed, record.score,
                        model_id(folder)), trained


def cache_summary(stages: list[dict]) -> str | None:
    """One line: teacher forward passes (in examples) the teacher-output cache saved in this run (a
    general phase read from the cache trained in another run: its stages do not count)."""
    with_teacher = [s["teacher_cache"] for s in stages if "teacher_cache" in s and "reused_from" not in s
                    and s["teacher_cache"]["status"] != "no teacher"]
    if not with_teacher:
        return None
    would = sum(c["teacher_forward_examples_uncached"] for c in with_teacher)
    did = sum(c["teacher_forward_examples_cached"] if not c["status"].startswith("off")
              else c["teacher_forward_examples_uncached"] for c in with_teacher)
    if did >= would:  # every stage ran its teachers live (cache off, or MixKD's mixed inputs)
        return f"teacher-output cache: saved nothing; teachers ran over all {would:,} examples"
    return (f"teacher-output cache: teachers ran over {did:,} examples instead of {would:,} "
            f"({100 * (1 - did / would):.0f}% of teacher forward passes saved)")
