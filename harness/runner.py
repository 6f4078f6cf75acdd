"""Running recipes: fine-tune (or reuse) teachers, distil the student, evaluate, time, record.

Every rank runs this same code; rank 0 alone writes files, and barriers keep the ranks in step.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from transformers import DataCollatorForLanguageModeling

from harness import bench
from harness.cofinetune import cofinetune
from harness.data import corpus_lines, tokenize, tokenize_corpus
from harness.distill import Teacher, device, predict, train_stage, world
from harness.features import Need
from harness.losses import TERMS, Shape
from harness.metrics import compute_metrics, task_headline
from harness.models import (build_student, count_parameters, encoder_layers, load_classifier, load_tokenizer,
                            save_model, tokenizer_id, weights_size_bytes)
from harness.recipe import (Corpus, DeepSpeedSettings, Progressive, Recipe, SpeedSettings, Training, build_terms,
                            recipe_hash)
from harness.results import env_info, write_record
from harness.tasks import Task, get_task
from harness.teachers import REPO_ROOT, Card, cache_dir, find_card, finetuned_dir, load_card
from harness.weighting import WeightingSpec


@dataclass
class Options:
    results_dir: Path
    glue_dir: Path | None
    teachers_dir: Path | None = None
    force: bool = False
    teacher_cache: bool = True


def init_distributed() -> None:
    """Join (or, for a plain ``python -m harness run``, create) the process group DeepSpeed uses."""
    if dist.is_initialized():
        return
    if "MASTER_PORT" not in os.environ:  # a lone process: any free port, so two runs can coexist
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for k, v in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(k, v)
    backend = "gloo" if get_accelerator().device_name() == "cpu" else get_accelerator().communication_backend_name()
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def is_main() -> bool:
    return world()[0] == 0


def _tokenize_all(task: Task, tok, training: Training, glue_dir: Path | None):
    """Rank 0 tokenizes first and fills the cache; the other ranks then read it."""
    out = None
    for turn in (0, 1):
        if (world()[0] == 0) == (turn == 0):
            train = tokenize(task, "train", tok, training.max_length, glue_dir, training.max_train_examples)
            devs = {s: tokenize(task, s, tok, training.max_length, glue_dir) for s in task.dev_splits}
            out = (train, devs)
        barrier()
    return out


def evaluate(student, tok, devs: dict, task: Task, training: Training, label: str):
    preds, dev_metrics = {}, {}
    for split, ds in devs.items():
        rows = predict(student, ds, task, training.eval_batch_size, tok.pad_token_id, desc=f"eval {label} {split}")
        preds[split] = rows
        dev_metrics[split] = compute_metrics(task, [r[1] for r in rows], [r[2] for r in rows])
    return preds, dev_metrics


def train_and_evaluate(model, tok, teachers: list[Teacher], terms, task: Task, training: Training,
                       settings: DeepSpeedSettings, seed: int, label: str, glue_dir: Path | None):
    """One task phase then dev evaluation (teacher fine-tuning uses this)."""
    train_ds, devs = _tokenize_all(task, tok, training, glue_dir)
    engine, stats = train_stage(model, teachers, terms, train_ds, task.is_regression, training, settings,
                                tok.pad_token_id, seed, desc=f"train {label} on {task.display}")
    student = engine.module.student
    preds, dev_metrics = evaluate(student, tok, devs, task, training, label)
    if settings.zero_stage == 3:
        student = _gather_zero3(student)
    return student, stats, preds, dev_metrics


def shape_of(model) -> Shape:
    return Shape(len(encoder_layers(model)), model.config.hidden_size, model.config.num_attention_heads)


def _progressive_scale(block: int, spec: Progressive):
    """lr multipliers while block ``block`` is trained: 1 for it, 0 (frozen) or spec.lr_scale for what is
    below it (embeddings, shared position bias, lower blocks), 0 for the blocks above and the head."""
    lower = 0.0 if spec.lower == "freeze" else spec.lr_scale

    def scale(name: str) -> float:
        m = re.search(r"encoder\.layer\.(\d+)\.", name)
        if m:
            b = int(m.group(1))
            return 1.0 if b == block else lower if b < block else 0.0
        return lower if ".embeddings." in name or "encoder." in name else 0.0
    return scale


def train_phases(recipe: Recipe, path: Path, model, tok, finetuned: list[Teacher], task: Task, seed: int,
                 label: str, opts: Options):
    """Run the recipe's phases in order on one student; returns (student, per-phase stats, train data)."""
    s_shape = shape_of(model)
    stats = []
    for where, phase in recipe.named_phases():
        training = recipe.phase_training(phase)
        mask_tokens = None
        weighting = WeightingSpec()
        if phase.corpus is None:
            train_ds, _ = _tokenize_all(task, tok, training, opts.glue_dir)
            teachers = [t if t.tokenizer is None else  # its own tokenization of the same rows
                        replace(t, data=_tokenize_all(task, t.tokenizer, training, opts.glue_dir)[0],
                                pad_id=t.tokenizer.pad_token_id) for t in finetuned]
            weighting = recipe.teacher_weighting
        else:  # general distillation: the pretrained encoders teach, on masked text
            # (an assistant stage has no pretrained form: its trained model teaches here too)
            teachers = [Teacher(load_classifier(c.pretrained_path(), task), t.weight, c.pretrained_path())
                        if c is not None else ft for c, t, ft in zip(_cards(recipe, path, opts), recipe.teachers, finetuned)]
            if phase.corpus.files or phase.corpus.glue:
                train_ds = _corpus(phase.corpus, tok, training, path.parent, opts.glue_dir)
            else:  # the task's own (capped) training text, labels unused
                train_ds = _tokenize_all(task, tok, training, opts.glue_dir)[0].remove_columns("label")
            if any(t.term == "mlm" for t in phase.objective):
                mlm = DataCollatorForLanguageModeling(tok, mlm_probability=phase.corpus.mlm_probability)
                mask_tokens = lambda ids: mlm.torch_mask_tokens(ids)  # noqa: E731  (global RNG, seeded per stage)
        t_shapes = [shape_of(t.model) for t in teachers]
        blocks = list(range(s_shape.layers)) if phase.progressive else [None]
        # what the teachers must expose over all blocks: one teacher-output cache serves every block
        phase_needs = [Need() for _ in teachers]
        for term, _ in build_terms(phase, s_shape, t_shapes, where):
            if term.needs_teacher:
                phase_needs = [n | term.teacher_need(i) for i, n in enumerate(phase_needs)]
        for block in blocks:
            terms = build_terms(phase, s_shape, t_shapes, where)
            lr_scale = None
            if block is not None:
                terms = [(t, w) for t, w in terms if t.restrict(block)]
                lr_scale = _progressive_scale(block, phase.progressive)
                if not terms:
                    continue
            desc = f"{phase.name}{'' if block is None else f' block {block}'}: {label}"
            if any(t.data is not None for t in teachers) and any(tm.level == "features" for tm, _ in terms):
                raise ValueError(f"{path}: {where}objective: intermediate terms need teachers with the "
                                 "student's tokenizer (see `harness validate`)")
            engine, st = train_stage(model, teachers, terms, train_ds, task.is_regression, training, recipe.deepspeed,
                                     tok.pad_token_id, seed, desc, mask_tokens, lr_scale, opts.teacher_cache,
                                     weighting, phase_needs if block is not None else None)
            model = engine.module.student
            if recipe.deepspeed.zero_stage == 3:  # a plain full model for the next stage and for saving
                model = _gather_zero3(model).to(device())
            stats.append({"phase": phase.name, "block": block, "terms": [t.term for t in phase.objective], **st})
            del engine
    for p in model.parameters():
        p.requires_grad_(True)
    return model, stats


def _corpus(corpus: Corpus, tok, training: Training, recipe_dir: Path, glue_dir: Path | None):
    files = [Path(f).expanduser() if Path(f).expanduser().is_absolute() else recipe_dir / f for f in corpus.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"corpus files not found: {missing}")
    out = None
    for turn in (0, 1):  # rank 0 tokenizes into the cache first
        if (world()[0] == 0) == (turn == 0):
            lines = corpus_lines(files, [get_task(t) for t in corpus.glue], glue_dir)
            out = tokenize_corpus(lines, tok, training.max_length, corpus.max_examples)
        barrier()
    return out


def _cards(recipe: Recipe, path: Path, opts: Options) -> list[Card | None]:
    """Each teacher's card (None for an assistant stage)."""
    return [load_card(find_card(t.card, path.parent, opts.teachers_dir)) if t.card is not None else None
            for t in recipe.teachers]


def _gather_zero3(student):
    """Under ZeRO-3 each rank holds a shard of every weight: gather them into a plain full copy."""
    with deepspeed.zero.GatheredParameters(list(student.parameters()), modifier_rank=None):
        state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in student.state_dict().items()}
    plain = type(student)(student.config)
    plain.load_state_dict(state)
    return plain


def _finish(student, tok, out_dir: Path, speed: SpeedSettings) -> dict:
    """Save the trained model (fp32 safetensors) and time it; rank 0 only."""
    save_model(student, tok, out_dir)
    return {"params": count_parameters(student), "size_bytes": weights_size_bytes(out_dir),
            "speed": bench.measure(student, speed.seq_len, speed.throughput_batch, speed.iters)}


def ensure_teacher(card: Card, task: Task, overrides: dict, opts: Options) -> tuple[Path, dict]:
    """The card fine-tuned on the task, from the cache or trained now; returns (folder, its metrics)."""
    settings = card.finetune_for(task.name, overrides)
    folder = finetuned_dir(card, task.name, settings)
    record_dir = opts.results_dir / "runs" / "teachers" / card.name / task.name / folder.name
    done = folder / "record" / "metrics.json"
    if not done.exists():
        path = card.pretrained_path()
        torch.manual_seed(settings.seed)  # the new classification head is drawn from this
        model, tok = load_classifier(path, task), load_tokenizer(path)
        resolved = {"kind": "teacher", "card": card.model_dump(mode="json"), "task": task.name,
                    "finetune": settings.model_dump(mode="json"), "deepspeed": DeepSpeedSettings().model_dump()}
        student, stats, preds, dev = train_and_evaluate(
            model, tok, [], [(TERMS.get("ce")(TERMS.get("ce").Params()), 1.0)], task, settings,
            DeepSpeedSettings(), settings.seed, f"teacher {card.name}", opts.glue_dir)
        if is_main():
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            extra = _finish(student, tok, tmp, SpeedSettings())
            metrics = {"kind": "teacher", "name": f"teacher/{card.name}", "task": task.name, "model": card.name,
                       "lineage": [card.name], "teachers": [], "terms": ["ce"], "seed": settings.seed,
                       "recipe_hash": recipe_hash(resolved), "dev": dev, "score": task_headline(task, dev),
                       "train": stats, **extra}
            write_record(tmp / "record", resolved, metrics, preds, env_info(REPO_ROOT))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
            _summary(metrics, record_dir)
        barrier()
    if is_main() and not (record_dir / "metrics.json").exists():
        shutil.copytree(folder / "record", record_dir, dirs_exist_ok=True)
    barrier()
    return folder, json.loads(done.read_text())


def ensure_cofinetuned(cards: list[Card], task: Task, overrides: dict, opts: Options) -> list[tuple[Path, dict]]:
    """The cards fine-tuned jointly (MT-BERT co-finetuning), from the cache or trained now; returns
    (folder, metrics) per card, like ensure_teacher."""
    settings = cards[0].finetune_for(task.name, overrides)
    key_src = {"cards": [[c.name, c.source_spec()] for c in cards], "task": task.name,
               "settings": settings.model_dump(mode="json")}
    key = "co-" + recipe_hash(key_src)
    folders = [cache_dir() / "teachers" / c.name / task.name / key for c in cards]
    records = [opts.results_dir / "runs" / "teachers" / c.name / task.name / key for c in cards]
    if not all((f / "record" / "metrics.json").exists() for f in folders):
        torch.manual_seed(settings.seed)  # the new shared head is drawn from this
        models = [load_classifier(c.pretrained_path(), task) for c in cards]
        toks = [load_tokenizer(c.pretrained_path()) for c in cards]
        data = [_tokenize_all(task, tok, settings, opts.glue_dir) for tok in toks]
        names = [c.name for c in cards]
        trained, stats = cofinetune(models, [d[0] for d in data],
                                    [t.pad_token_id for t in toks], task.is_regression, settings, settings.seed,
                                    f"co-finetune {' + '.join(names)} on {task.display}")
        resolved = {"kind": "teacher", "cofinetune": key_src, "deepspeed": DeepSpeedSettings().model_dump()}
        for c, model, tok, (_, devs), folder in zip(cards, trained, toks, data, folders):
            preds, dev = evaluate(model, tok, devs, task, settings, f"teacher {c.name} (co-finetuned)")
            if is_main():
                tmp = folder.with_name(folder.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                metrics = {"kind": "teacher", "name": f"teacher/{c.name}", "task": task.name, "model": c.name,
                           "cofinetuned_with": [n for n in names if n != c.name], "lineage": [c.name],
                           "teachers": [], "terms": ["ce"], "seed": settings.seed, "recipe_hash": key[3:],
                           "dev": dev, "score": task_headline(task, dev), "train": stats,
                           **_finish(model, tok, tmp, SpeedSettings())}
                write_record(tmp / "record", resolved, metrics, preds, env_info(REPO_ROOT))
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
                _summary(metrics, folder)
        barrier()
    for folder, record_dir in zip(folders, records):
        if is_main() and not (record_dir / "metrics.json").exists():
            shutil.copytree(folder / "record", record_dir, dirs_exist_ok=True)
    barrier()
    return [(f, json.loads((f / "record" / "metrics.json").read_text())) for f in folders]


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


def _summary(m: dict, where: Path) -> None:
    t = m["train"]
    print(f"[{m['name']} seed {m['seed']}] {m['task']} score {100 * m['score']:.2f} | "
          f"{t['train_examples']} train ex, {t['wall_time_s']:.0f}s, {t['samples_per_s']:.0f} ex/s | "
          f"{m['params']['total'] / 1e6:.1f}M params, CPU b1 {m['speed']['cpu']['latency_ms']:.1f} ms | {where}",
          flush=True)


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
                      out: Path) -> list[dict]:
    """Train the recipe's student for one seed (its teachers and stages first), save it to ``ckpt``
    and write its record to ``out``; returns the training stats of every stage trained here."""
    task = get_task(recipe.task)
    cards = _cards(recipe, path, opts)
    teacher_info, trained = [], []
    if recipe.cofinetune is not None:  # validation made sure they are all cards
        teacher_info = ensure_cofinetuned(cards, task, recipe.cofinetune, opts)
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
                   "teacher_scores": {n: info["score"] for n, (_, info) in zip(names, teacher_info)},
                   "checkpoint": str(ckpt)}
        for m, t in zip(metrics["teachers"], recipe.teachers):
            m["weight"] = t.weight
        shutil.rmtree(out, ignore_errors=True)
        write_record(out, resolved, metrics, preds, env_info(REPO_ROOT))
        _summary(metrics, out)
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
        trained = _train_and_record(stage, path, seed, opts, resolved, folder, tmp / "record")
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
    return (f"teacher-output cache: teachers ran over {did:,} examples instead of {would:,} "
            f"({100 * (1 - did / would) if would else 0:.0f}% of teacher forward passes saved)")
