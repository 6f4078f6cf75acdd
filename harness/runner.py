"""Running recipes: teachers and assistant stages first, then the student, evaluated, timed, recorded.

Every rank runs this same code; rank 0 alone writes files, and barriers keep the ranks in step.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness.distill import Teacher
from harness.metrics import task_headline
from harness.models import build_student, load_classifier, load_tokenizer, tokenizer_id
from harness.phases import Options, _cards, _tokenize_all, barrier, evaluate, is_main, train_phases
from harness.recipe import Recipe, recipe_hash
from harness.records import env_info, git_state, write_record
from harness.tasks import Task, get_task
from harness.teacher_prep import _finish, _summary, ensure_cofinetuned, ensure_teacher, untrained_teacher
from harness.teachers import REPO_ROOT, Card, cache_dir


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


def _resolved(recipe: Recipe, cards: list[Card | None], seed: int, task: Task, path: Path, opts: Options) -> dict:
    """What a run's record stores and its hash keys: the recipe, the seed, and what each teacher is
    (a card's checkpoint and fine-tuning, or an assistant stage's own resolved hash)."""
    checkpoints = []
    for c, t in zip(cards, recipe.teachers):
        if c is not None:
            checkpoints.append({"card": c.name, "source": c.source_spec(),
                                "finetune": c.finetune_for(task.name, t.finetune).model_dump(mode="json")})
        else:
            stage = recipe.stage_recipe(t.stage)
            sub = _resolved(stage, _cards(stage, path, opts), seed, task, path, opts)
            checkpoints.append({"stage": t.stage, "hash": recipe_hash(sub)})
    return recipe.resolved() | {"seed": seed, "teacher_checkpoints": checkpoints}


def _train_and_record(recipe: Recipe, path: Path, seed: int, opts: Options, resolved: dict, ckpt: Path,
                      out: Path, final: Path | None = None) -> list[dict]:
    """Train the recipe's student for one seed (its teachers and stages first), save it to ``ckpt``
    and write its record to ``out`` (the summary line names ``final`` instead when the caller moves it
    there); returns the training stats of every stage trained here."""
    task = get_task(recipe.task)
    cards = _cards(recipe, path, opts)
    teacher_info, trained = [], []
    if recipe.cofinetune is not None:  # validation made sure they are all cards
        teacher_info = ensure_cofinetuned(cards, task, recipe.cofinetune, opts)
    elif not recipe.reads_teachers() and None not in cards:  # no-KD: the teachers are only timed
        teacher_info = [untrained_teacher(c, task) for c in cards]
    else:
        for c, t in zip(cards, recipe.teachers):
            if c is not None:
                teacher_info.append(ensure_teacher(c, task, t.finetune, opts))
            else:
                folder, info, stage_stats = ensure_stage(recipe, t.stage, path, seed, opts)
                teacher_info.append((folder, info))
                trained += stage_stats
    teachers = [Teacher(load_classifier(folder, task), t.weight, folder)
                for (folder, _), t in zip(teacher_info, recipe.teachers)]
    model, tok, label = build_student(recipe, task, path.parent, opts.teachers_dir, seed)
    for t, (folder, _) in zip(teachers, teacher_info):
        t_tok = load_tokenizer(folder)
        if tokenizer_id(t_tok) != tokenizer_id(tok):  # it reads the text through its own tokenizer
            t.tokenizer = t_tok
    student, phase_stats = train_phases(recipe, path, model, tok, teachers, task, seed, label, opts)
    last_training = recipe.phase_training(recipe.named_phases()[-1][1])
    _, devs = _tokenize_all(task, tok, last_training, opts.glue_dir)
    preds, dev = evaluate(student, tok, devs, task, last_training, label)
    stats = dict(phase_stats[-1])  # the task phase: what the tables' training-size marks read
    if len(phase_stats) > 1:
        stats["phases"] = phase_stats
    if is_main():
        # a teacher's name in lineages: its card, or the chain that produced an assistant
        names = [c.name + " (co-ft)" * bool(info.get("cofinetuned_with")) if c is not None
                 else " → ".join(info["lineage"]) for c, (_, info) in zip(cards, teacher_info)]
        if len(names) == 1:  # a chain: the assistant's own lineage, then this student
            lineage = (teacher_info[0][1]["lineage"] if cards[0] is None else names) + [label]
        else:
            lineage = [teacher_stage(names, [t.weight for t in recipe.teachers], recipe.teacher_weighting.scheme)] \
                * bool(names) + [label]
        metrics = {"kind": "stage" if recipe.name.startswith("stages/") else "student", "name": recipe.name,
                   "task": task.name, "model": label, "lineage": lineage,
                   "teachers": [{"card": c.name} if c is not None else {"stage": t.stage} for c, t in
                                zip(cards, recipe.teachers)],
                   "teacher_weighting": recipe.teacher_weighting.model_dump(),
                   "terms": list(dict.fromkeys(t.term for _, p in recipe.named_phases() for t in p.objective)),
                   "seed": seed, "recipe_hash": recipe_hash(resolved),
                   "dev": dev, "score": task_headline(task, dev), "train": stats,
                   **_finish(student, tok, ckpt, recipe.speed),
                   "teacher_speed": teacher_info[0][1]["speed"] if teacher_info else None,
                   "teacher_scores": {n: info["score"] for n, (_, info) in zip(names, teacher_info)
                                      if info["score"] is not None},
                   "checkpoint": str(ckpt)}
        for m, t in zip(metrics["teachers"], recipe.teachers):
            m["weight"] = t.weight
        shutil.rmtree(out, ignore_errors=True)
        write_record(out, resolved, metrics, preds, env_info(REPO_ROOT))
        _summary(metrics, final or out)
        trained += stats.get("phases", [stats])
    barrier()
    return trained


def ensure_stage(recipe: Recipe, name: str, path: Path, seed: int, opts: Options) -> tuple[Path, dict, list[dict]]:
    """Assistant ``name`` trained for ``seed``: from the cache when a stage with the same resolved spec
    was trained before (by any recipe), else trained now.  Returns (model folder, its metrics, stats)."""
    stage = recipe.stage_recipe(name)
    task = get_task(stage.task)
    resolved = _resolved(stage, _cards(stage, path, opts), seed, task, path, opts)
    key = recipe_hash(resolved)
    folder = cache_dir() / "stages" / task.name / f"{name}-{key}-seed{seed}"
    record_dir = opts.results_dir / "runs" / stage.name / key / f"seed{seed}"
    done = folder / "record" / "metrics.json"
    trained = []
    if done.exists():
        if is_main():
            print(f"[{stage.name} seed {seed}] reusing the trained assistant in {folder}", flush=True)
    else:
        tmp = folder.with_name(folder.name + ".tmp")
        trained = _train_and_record(stage, path, seed, opts, resolved, folder, tmp / "record", record_dir)
        if is_main():  # the model went to `folder` (the checkpoint), its record beside it
            shutil.rmtree(folder / "record", ignore_errors=True)
            (tmp / "record").rename(folder / "record")
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
    if is_main() and not (record_dir / "metrics.json").exists():
        shutil.copytree(folder / "record", record_dir, dirs_exist_ok=True)
    barrier()
    return folder, json.loads(done.read_text()), trained


def run_recipe(path: Path, recipe: Recipe, opts: Options) -> list[dict]:
    """Run every seed of a recipe; returns the training stats of the runs trained now (rank 0)."""
    git_state(REPO_ROOT)  # the code as it is now, before anyone edits it while this trains
    trained = []
    task = get_task(recipe.task)
    cards = _cards(recipe, path, opts)
    for seed in recipe.training.seeds:
        resolved = _resolved(recipe, cards, seed, task, path, opts)
        rhash = recipe_hash(resolved)
        out = opts.results_dir / "runs" / recipe.name / f"seed{seed}"
        if (out / "metrics.json").exists() and not opts.force:
            old = json.loads((out / "metrics.json").read_text())
            # A record is reused when it is of this very recipe and its model was trained with this
            # cache; a record that came with a checkout (trained elsewhere) is reproduced instead.
            if old["recipe_hash"] == rhash and Path(old["checkpoint"]).exists():
                if is_main():
                    print(f"[{recipe.name} seed {seed}] skipped: record exists ({out}); --force to rerun", flush=True)
                continue
            if is_main():
                why = "the recipe changed" if old["recipe_hash"] != rhash else "its model is not in this cache"
                print(f"[{recipe.name} seed {seed}] rerunning: a record exists but {why}", flush=True)
        ckpt = cache_dir() / "students" / recipe.name / f"seed{seed}-{rhash}"
        trained += _train_and_record(recipe, path, seed, opts, resolved, ckpt, out)
    return trained


def cache_summary(stages: list[dict]) -> str | None:
    """One line: teacher forward passes (in examples) the teacher-output cache saved in this run."""
    with_teacher = [s["teacher_cache"] for s in stages if s.get("teacher_cache", {}).get("status") != "no teacher"]
    if not with_teacher:
        return None
    would = sum(c["teacher_forward_examples_uncached"] for c in with_teacher)
    did = sum(c["teacher_forward_examples_cached"] if not c["status"].startswith("off")
              else c["teacher_forward_examples_uncached"] for c in with_teacher)
    if did >= would:  # every stage ran its teachers live (cache off, or MixKD's mixed inputs)
        return f"teacher-output cache: saved nothing; teachers ran over all {would:,} examples"
    return (f"teacher-output cache: teachers ran over {did:,} examples instead of {would:,} "
            f"({100 * (1 - did / would):.0f}% of teacher forward passes saved)")
