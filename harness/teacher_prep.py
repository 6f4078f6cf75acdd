"""Teachers ready to teach: each card fine-tuned on the task (or the cards co-finetuned together, as
MT-BERT), trained once, cached by content, with a record of its own."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from harness import bench, curves
from harness.cached import cached_run, finish, summary
from harness.cofinetune import cofinetune
from harness.data import tokenize_task
from harness.engine import is_main
from harness.evaluate import evaluate
from harness.hashing import spec_hash
from harness.integrity import model_id
from harness.losses import TERMS
from harness.metrics import task_headline
from harness.models import load_classifier, load_tokenizer
from harness.options import Options
from harness.paths import REPO_ROOT, cache_dir
from harness.precision import key_part
from harness.phases import train_and_evaluate
from harness.recipe_parts import DeepSpeedSettings, SpeedSettings, Training
from harness.resume import Checkpoints
from harness.records import env_info, read_record, same_data, write_record
from harness.resolved import ResolvedTeacher, RunPlan
from harness.run_record import RunRecord, Speed
from harness.tasks import Task, get_task
from harness.glue_files import data_id
from harness.teachers import Card


@dataclass(frozen=True)
class ReadyTeacher:
    """A teacher's model, ready for a student to read, and what the student's record says of it."""

    folder: Path  # its model (a fine-tuned or trained checkpoint, or the pretrained one for no-KD)
    name: str  # how lineages and teacher_scores name it
    lineage: list[str]  # the chain that produced it, itself last
    speed: Speed | None
    score: float | None  # None: not fine-tuned (no term reads it)
    instance: str | None = None  # harness.integrity.model_id of its weights; None: not fine-tuned


def ensure_teacher(rt: ResolvedTeacher, opts: Options) -> ReadyTeacher:
    """The card fine-tuned on the task, from the cache or trained now."""
    card, task, settings = rt.card, get_task(rt.task), rt.finetune
    folder, record_dir = rt.folder(settings.seed), rt.record_dir(opts.results_dir, settings.seed)

    def train(tmps: list[Path]) -> None:
        path = card.pretrained_path()
        torch.manual_seed(settings.seed)  # the new classification head is drawn from this
        model, tok = load_classifier(path, task), load_tokenizer(path)
        resolved = {"kind": "teacher", "card": card.model_dump(mode="json"), "task": task.name,
                    "finetune": settings.model_dump(mode="json"), "deepspeed": DeepSpeedSettings().model_dump()} | \
            key_part("auto", rt.precision)
        ce = TERMS.get("ce")
        checkpoints = Checkpoints.for_run(folder, opts.checkpoint_every, opts.study_commit)
        trained, stats, preds, dev = train_and_evaluate(
            model, tok, [], [(ce(ce.Params()), 1.0)], task, settings, DeepSpeedSettings(), settings.seed,
            f"teacher {card.name}", opts.glue_dir, checkpoints)
        if is_main():
            record = RunRecord.model_validate({
                "kind": "teacher", "name": f"teacher/{card.name}", "task": task.name, "model": card.name,
                "lineage": [card.name], "teachers": [], "terms": ["ce"], "seed": settings.seed,
                "recipe_hash": spec_hash(resolved), "data": data_id(task, opts.glue_dir), "dev": dev,
                "score": task_headline(task, dev), "train": stats,
                **finish(trained, tok, tmps[0], SpeedSettings())})
            write_record(tmps[0] / "record", resolved, record, preds, env_info(REPO_ROOT),
                         curves.record_files(checkpoints.root, [("finetune", None)]))
            summary(record, record_dir)
            warn_if_differs(record_dir, record)
        if not opts.keep_checkpoints:
            checkpoints.clear()

    record = cached_run([(folder, record_dir)], train, data_id(task, opts.glue_dir), opts.study_commit)[0]
    return ReadyTeacher(folder, card.name, [card.name], record.speed, record.score, model_id(folder))


def warn_if_differs(record_dir: Path, record: RunRecord) -> None:
    """Same spec, other score: fp32 training is not bit-reproducible across CPUs (their kernels sum in
    other orders), so a teacher retrained on another machine can differ from the kept record, which
    stays; the students trained now name the teacher they read in their own records (teacher_scores)."""
    if not (record_dir / "metrics.json").exists():
        return
    old = read_record(record_dir)
    if same_data(old, record.data) and old.score != record.score:  # on other data it is replaced
        print(f"note: this teacher scores {100 * record.score:.2f} here; the kept record {record_dir} "
              f"(same spec, trained on {json.loads((record_dir / 'env.json').read_text())['platform']}) says "
              f"{100 * old.score:.2f}. Students trained now read this one (see their teacher_scores).", flush=True)


def untrained_teacher(card: Card, task: Task) -> ReadyTeacher:
    """A teacher no term reads (the no-KD baseline): not fine-tuned, which would spend a teacher's
    training on weights nobody uses.  Its pretrained encoder (with a fresh head, which runs exactly as
    fast as a fine-tuned one) is timed for the speed-up column; it has no score."""
    path = card.pretrained_path()
    s = SpeedSettings()
    speed = bench.measure(load_classifier(path, task), s.seq_len, s.throughput_batch, s.iters) if is_main() else None
    return ReadyTeacher(Path(path), card.name, [card.name], speed and Speed.model_validate(speed), None)


@dataclass(frozen=True)
class JointSpec:
    """What a plan's co-finetuning is and where its teachers go."""

    settings: Training  # the joint run's (the first card's, with the recipe's cofinetune overrides)
    seeds: list[int] | None  # each teacher's own dropout seed; None: one stream for all
    key_src: dict
    key: str
    entries: list[tuple[Path, Path]]  # per teacher: (cache folder, record folder)
    names: list[str]  # how records tell the teachers apart (copies of one card by their seeds)


def joint_spec(plan: RunPlan, results_dir: Path) -> JointSpec:
    """With per-teacher seeds (copies of one card) the seeds join the key and each folder ends in its
    teacher's seed, so each copy is a cached model with a record of its own; without, the key and the
    folders are what they were before seeds could be given."""
    cards, task = [t.card for t in plan.teachers], plan.task
    settings = cards[0].finetune_for(task.name, plan.recipe.cofinetune)
    seeds = plan.cofinetune_seeds()
    key_src = {"cards": [[c.name, c.source_spec()] for c in cards], "task": task.name,
               "settings": settings.model_dump(mode="json")} | key_part("auto", plan.teachers[0].precision)
    if seeds:
        key_src["teacher_seeds"] = seeds
    key = "co-" + spec_hash(key_src)
    tags = [f"-seed{s}" for s in seeds] if seeds else [""] * len(cards)
    entries = [(cache_dir() / "teachers" / c.name / task.name / (key + tag),
                results_dir / "runs" / "teachers" / c.name / task.name / (key + tag))
               for c, tag in zip(cards, tags)]
    names = [f"{c.name} (seed {s})" for c, s in zip(cards, seeds)] if seeds else [c.name for c in cards]
    return JointSpec(settings, seeds, key_src, key, entries, names)


def ensure_cofinetuned(plan: RunPlan, opts: Options) -> list[ReadyTeacher]:
    """The plan's card teachers fine-tuned jointly (MT-BERT co-finetuning), from the cache or trained
    now; one ReadyTeacher per card, like ensure_teacher."""
    cards, task, js = [t.card for t in plan.teachers], plan.task, joint_spec(plan, opts.results_dir)
    settings, names = js.settings, js.names

    def train(tmps: list[Path]) -> None:
        torch.manual_seed(settings.seed)  # the new shared head is drawn from this
        models = [load_classifier(c.pretrained_path(), task) for c in cards]
        toks = [load_tokenizer(c.pretrained_path()) for c in cards]
        data = [tokenize_task(task, tok, settings, opts.glue_dir) for tok in toks]
        checkpoints = Checkpoints.for_run(js.entries[0][0], opts.checkpoint_every, opts.study_commit)
        trained, stats = cofinetune(models, [d[0] for d in data], [t.pad_token_id for t in toks],
                                    task.is_regression, settings, settings.seed,
                                    f"co-finetune {' + '.join(names)} on {task.display}", checkpoints.stage(0),
                                    js.seeds)
        resolved = {"kind": "teacher", "cofinetune": js.key_src, "deepspeed": DeepSpeedSettings().model_dump()}
        for i, (c, model, tok, (_, devs), tmp, (folder, _)) in enumerate(zip(cards, trained, toks, data, tmps,
                                                                              js.entries)):
            preds, dev = evaluate(model, tok, devs, task, settings, f"teacher {names[i]} (co-finetuned)")
            if is_main():
                record = RunRecord.model_validate({
                    "kind": "teacher", "name": f"teacher/{c.name}", "task": task.name, "model": c.name,
                    "cofinetuned_with": names[:i] + names[i + 1:], "lineage": [c.name], "teachers": [],
                    "terms": ["ce"], "seed": js.seeds[i] if js.seeds else settings.seed, "recipe_hash": js.key[3:],
                    "data": data_id(task, opts.glue_dir),
                    "dev": dev, "score": task_headline(task, dev), "train": stats,
                    **finish(model, tok, tmp, SpeedSettings())})
                write_record(tmp / "record", resolved, record, preds, env_info(REPO_ROOT))
                summary(record, folder)
        if not opts.keep_checkpoints:
            checkpoints.clear()

    records = cached_run(js.entries, train, data_id(task, opts.glue_dir), opts.study_commit)
    labels = [f"{c.name} (co-ft, seed {s})" for c, s in zip(cards, js.seeds)] if js.seeds else \
        [f"{c.name} (co-ft)" for c in cards]
    return [ReadyTeacher(folder, label, [label], r.speed, r.score, model_id(folder))
            for label, (folder, _), r in zip(labels, js.entries, records)]
