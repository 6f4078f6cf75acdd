"""Teachers ready to teach: each card fine-tuned on the task (or the cards co-finetuned together, as
MT-BERT), trained once, cached by content, with a record of its own."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from harness import bench
from harness.cofinetune import cofinetune
from harness.losses import TERMS
from harness.metrics import task_headline
from harness.models import count_parameters, load_classifier, load_tokenizer, save_model, weights_size_bytes
from harness.phases import Options, _tokenize_all, barrier, evaluate, is_main, train_and_evaluate
from harness.recipe import recipe_hash
from harness.recipe_parts import DeepSpeedSettings, SpeedSettings
from harness.records import env_info, write_record
from harness.tasks import Task
from harness.teachers import REPO_ROOT, Card, cache_dir, finetuned_dir


def _finish(student, tok, out_dir: Path, speed: SpeedSettings) -> dict:
    """Save the trained model (fp32 safetensors) and time it; rank 0 only."""
    save_model(student, tok, out_dir)
    return {"params": count_parameters(student), "size_bytes": weights_size_bytes(out_dir),
            "speed": bench.measure(student, speed.seq_len, speed.throughput_batch, speed.iters)}


def _summary(m: dict, where: Path) -> None:
    t = m["train"]
    print(f"[{m['name']} seed {m['seed']}] {m['task']} score {100 * m['score']:.2f} | "
          f"{t['train_examples']} train ex, {t['wall_time_s']:.0f}s, {t['samples_per_s']:.0f} ex/s | "
          f"{m['params']['total'] / 1e6:.1f}M params, CPU b1 {m['speed']['cpu']['latency_ms']:.1f} ms | {where}",
          flush=True)


def _warn_if_differs(record_dir: Path, metrics: dict) -> None:
    """Same spec, other score: fp32 training is not bit-reproducible across CPUs (their kernels sum in
    other orders), so a teacher retrained on another machine can differ from the kept record, which
    stays; the students trained now name the teacher they read in their own records (teacher_scores)."""
    kept = record_dir / "metrics.json"
    if kept.exists() and (old := json.loads(kept.read_text())["score"]) != metrics["score"]:
        print(f"note: this teacher scores {100 * metrics['score']:.2f} here; the kept record {record_dir} "
              f"(same spec, trained on {json.loads((record_dir / 'env.json').read_text())['platform']}) says "
              f"{100 * old:.2f}. Students trained now read this one (see their teacher_scores).", flush=True)


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
            _warn_if_differs(record_dir, metrics)
        barrier()
    if is_main() and not (record_dir / "metrics.json").exists():
        shutil.copytree(folder / "record", record_dir, dirs_exist_ok=True)
    barrier()
    return folder, json.loads(done.read_text())


def untrained_teacher(card: Card, task: Task) -> tuple[Path, dict]:
    """A teacher no term reads (the no-KD baseline): not fine-tuned, which would spend a teacher's
    training on weights nobody uses.  Its pretrained encoder (with a fresh head, which runs exactly as
    fast as a fine-tuned one) is timed for the speed-up column; it has no score."""
    path = card.pretrained_path()
    s = SpeedSettings()
    speed = bench.measure(load_classifier(path, task), s.seq_len, s.throughput_batch, s.iters) if is_main() else None
    return path, {"speed": speed, "score": None}


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
