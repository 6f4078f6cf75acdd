"""The model card (``README.md``) of an exported student: a YAML metadata block the Hugging Face Hub
reads (base model, datasets, metric values as a ``model-index``), then what the record knows: lineage,
recipe, dev scores per seed, speed, training budget, the teachers' licenses.

Everything comes from the run record folders (metrics.json, recipe.yaml, env.json) and the teacher
cards; nothing is measured here.  Licenses are read from each teacher's installed checkpoint (its
README metadata, NOTICE or LICENSE file); one that is not installed or states none is "unknown".
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import yaml

from harness.inference import max_length
from harness.run_record import RunRecord, Speed
from harness.schema import ConfigError
from harness.tasks import Task, get_task
from harness.teachers import find_card, load_card


KINDS = {"student": "student", "stage": "teacher-assistant stage", "teacher": "fine-tuned teacher"}


def checkpoint_license(folder: Path) -> str | None:
    """The license a checkpoint folder states, as a Hub license id where one is recognisable."""
    readme = folder / "README.md"
    if readme.is_file() and (m := re.match(r"---\n(.*?)\n---", readme.read_text(), re.S)):
        meta = yaml.safe_load(m.group(1)) or {}
        if "license" in meta:
            return str(meta["license"])
    notice = folder / "NOTICE"
    if notice.is_file() and (m := re.search(r"^License:\s*(\S+)", notice.read_text(), re.M)):
        return m.group(1).lower()
    lic = folder / "LICENSE"
    head = lic.read_text()[:400] if lic.is_file() else ""
    if "Apache License" in head and "Version 2.0" in head:
        return "apache-2.0"
    return "mit" if "MIT License" in head else None


def card_names(resolved) -> list[str]:
    """Every teacher card a resolved spec names (teachers, assistants, the student's card, a teacher
    record's own card), in order of appearance."""
    found = []
    if isinstance(resolved, dict):
        for k, v in resolved.items():
            if k == "card" and isinstance(v, str):
                found.append(v)
            elif k == "card" and isinstance(v, dict):
                found.append(v["name"])
            else:
                found += card_names(v)
    elif isinstance(resolved, list):
        for v in resolved:
            found += card_names(v)
    return list(dict.fromkeys(found))


def card_license(name: str, teachers_dir: Path | None) -> tuple[str | None, str]:
    """(license id or None, where it was read or why it is unknown) of a card's pretrained checkpoint."""
    try:
        card = load_card(find_card(name, None, teachers_dir))
    except ConfigError:
        return None, "its card is not in this checkout"
    folder = card.local_checkpoint()
    if folder is None:
        return None, f"checkpoint not installed (python -m harness teachers install {name})"
    found = checkpoint_license(folder)
    return found, f"stated in {folder.name}/" if found else "the checkpoint states none"


def base_card(resolved: dict) -> str | None:
    """The teacher card whose pretrained weights the model starts from; None when it starts from a
    config (random weights), a checkpoint of its own, or several co-finetuned cards."""
    if "kind" in resolved:  # a teacher record: its own card, fine-tuned
        return resolved["card"]["name"] if "card" in resolved else None
    s = resolved["student"]
    return (s["card"] or resolved["teachers"][0]["card"]) if s["init"] == "teacher_layers" else None


def base_model(resolved: dict, teachers_dir: Path | None) -> str | None:
    """The Hub id of the pretrained checkpoint the model's weights start from, when it has one."""
    if "student" in resolved and resolved["student"]["init"] == "pretrained":
        ckpt = resolved["student"]["checkpoint"]
        return None if ckpt.startswith(("/", ".", "~")) else ckpt  # a local folder has no Hub id
    name = base_card(resolved)
    if name is None:
        return None
    if "kind" in resolved:
        return resolved["card"]["checkpoint"]["hub"]
    for c in resolved["teacher_checkpoints"]:
        if "source" in c and c["card"] == name:
            return c["source"]["hub"]
    try:
        return load_card(find_card(name, None, teachers_dir)).checkpoint.hub
    except ConfigError:
        return None


def metadata(m: RunRecord, task: Task, seeds: list[RunRecord], base: str | None, license_id: str | None) -> dict:
    """The card's YAML block: a model-index entry per dev split, each metric with the exported seed's
    value and, from a cell with several seeds, their mean."""
    hub_split = {"dev": "validation", "dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"}
    results = []
    for split, values in m.dev.items():
        metrics = [{"type": k, "value": round(v, 4), "name": f"dev {k} (seed {m.seed})"} for k, v in values.items()]
        if len(seeds) > 1:
            metrics += [{"type": k, "value": round(statistics.mean(r.dev[split][k] for r in seeds), 4),
                         "name": f"dev {k}, mean of {len(seeds)} seeds"} for k in values]
        results.append({"task": {"type": "text-classification", "name": "Text Classification"},
                        "dataset": {"name": f"GLUE {task.display}", "type": "nyu-mll/glue", "config": task.hub_config,
                                    "split": hub_split[split]},
                        "metrics": metrics})
    meta = {"language": "en", "library_name": "transformers", "pipeline_tag": "text-classification",
            "tags": ["knowledge-distillation", "kd-harness", "glue", task.name], "datasets": ["nyu-mll/glue"],
            "metrics": list(task.metrics), "model-index": [{"name": f"{m.name} seed {m.seed}", "results": results}]}
    return ({"license": license_id} if license_id else {}) | ({"base_model": base} if base else {}) | meta


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def scores_table(m: RunRecord, task: Task, seeds: list[RunRecord]) -> list[str]:
    keys = [(s, k) for s in m.dev for k in m.dev[s]]
    lines = ["| seed | " + " | ".join(f"{s} {k}" for s, k in keys) + " | score |",
             "|---" * (len(keys) + 2) + "|"]
    for r in seeds:
        mark = " (exported)" if r.seed == m.seed else ""
        lines.append(f"| {r.seed}{mark} | " + " | ".join(_pct(r.dev[s][k]) for s, k in keys) + f" | {_pct(r.score)} |")
    if len(seeds) > 1:
        sd = statistics.stdev(r.score for r in seeds)
        lines.append("| mean ± std | " + " | ".join(_pct(statistics.mean(r.dev[s][k] for r in seeds)) for s, k in keys)
                     + f" | {_pct(statistics.mean(r.score for r in seeds))} ± {_pct(sd)} |")
    return lines


def speed_lines(m: RunRecord) -> list[str]:
    def row(name: str, s: Speed | None) -> str:
        if s is None:
            return f"| {name} | – | – | – | – |"
        opt = lambda c: f"{c.latency_ms:.1f} ms, {c.throughput:.0f}/s" if c else "–"  # noqa: E731
        return (f"| {name} | {s.cpu.latency_ms:.1f} ms, {s.cpu.throughput:.0f}/s ({s.cpu.threads} threads) | "
                f"{opt(s.cpu_bf16)} | {opt(s.cpu_int8)} | {opt(s.gpu)} |")
    s = m.speed
    lines = [f"Batch-1 latency and throughput at batch {s.throughput_batch}, sequences of {s.seq_len} tokens "
             f"(CPU: {s.cpu.device}): rough, one quick measurement taken when the run finished; a study's speed "
             "table measures each architecture once, with 30 passes per figure.", "", "| model | CPU fp32 | CPU bf16 | CPU int8 | GPU |", "|---|---|---|---|---|",
             row(f"this model ({m.params.total / 1e6:.1f}M params, {m.size_bytes / 2**20:.0f} MiB)", s)]
    if m.teacher_speed is not None and m.teachers:  # the first teacher's (or assistant's) speed
        first = m.teachers[0].card or f"assistant {m.teachers[0].stage}"
        lines += [row(f"its teacher {first}", m.teacher_speed), "",
                  f"Speed-up over the teacher on CPU, batch 1: {m.teacher_speed.cpu.latency_ms / s.cpu.latency_ms:.1f}x."]
    return lines


def budget_lines(m: RunRecord, task: Task, resolved: dict) -> list[str]:
    lines = ["| phase | examples | epochs | steps | wall time | examples/s | precision | ranks |", "|---" * 8 + "|"]
    corpus = {p["name"] for p in resolved["phases"] or [] if p["corpus"] is not None} if "phases" in resolved else set()
    for st in m.train.phases or [m.train]:
        name = (st.phase or ("fine-tuning" if m.kind == "teacher" else "task")) + \
            (f" block {st.block}" if st.block is not None else "")
        of = "text lines" if st.phase in corpus else f"of GLUE's {task.train_size:,}"  # a corpus phase: not the task's
        lines.append(f"| {name} | {st.train_examples:,} ({of}) | {st.epochs:g} | {st.steps} | "
                     f"{st.wall_time_s:.0f} s | {st.samples_per_s:.0f} | {st.precision} | {st.world_size} |")
    for c in resolved["teacher_checkpoints"] if "teacher_checkpoints" in resolved else []:
        if "finetune" in c:
            cap = c["finetune"]["max_train_examples"]
            lines.append(f"\nTeacher {c['card']} was fine-tuned on {f'{cap:,}' if cap else 'all'} training examples "
                         f"for {c['finetune']['epochs']:g} epochs.")
    return lines


def license_lines(resolved: dict, teachers_dir: Path | None) -> list[str]:
    lines = []
    for name in card_names(resolved):
        found, where = card_license(name, teachers_dir)
        lines.append(f"- teacher checkpoint {name}: {found or 'unknown'} ({where})")
    return lines + ["- training data: GLUE; each task's dataset has its own license (see the GLUE folder's README)."]


def card_text(record_dir: Path, m: RunRecord, seeds: list[RunRecord], extra: list[str],
              teachers_dir: Path | None) -> str:
    """The whole README.md; ``extra``: further markdown lines (the ONNX section)."""
    task = get_task(m.task)
    resolved = yaml.safe_load((record_dir / "recipe.yaml").read_text())
    base, origin = base_model(resolved, teachers_dir), base_card(resolved)
    lic = card_license(origin, teachers_dir)[0] if origin is not None else None  # its weights derive from it
    env = json.loads((record_dir / "env.json").read_text())
    head = yaml.safe_dump(metadata(m, task, seeds, base, lic), sort_keys=False, allow_unicode=True)
    use = "function_to_apply='none'" if task.is_regression else "truncation=True"
    body = [
        f"# {m.name}: {m.model} on GLUE {task.display}", "",
        f"A {m.params.total / 1e6:.1f}M-parameter {KINDS[m.kind]} trained with kd-harness. Lineage: {' → '.join(m.lineage)}.",
        f"Objective terms: {', '.join(m.terms)}.", "", "```python", "from transformers import pipeline",
        f"clf = pipeline('text-classification', model='PATH/TO/THIS/FOLDER', {use})",
        "```", "", f"Inputs were truncated at {max_length(record_dir)} tokens in training and evaluation; "
        "the tokenizer's model_max_length is set to that.", "",
        "## Dev scores", "", *scores_table(m, task, seeds), "",
        "## Speed", "", *speed_lines(m), "", "## Training budget", "", *budget_lines(m, task, resolved), "",
        *extra, "## Licenses", "", *license_lines(resolved, teachers_dir), "",
        "## Provenance", "", f"Run record `{record_dir}`, recipe hash `{m.recipe_hash}`, harness commit "
        f"`{env['git_commit']}`{' (with uncommitted changes)' if env['git_dirty'] else ''}, device {env['device']}.",
        "", "<details><summary>resolved recipe</summary>", "", "```yaml",
        yaml.safe_dump(resolved, sort_keys=False).rstrip(), "```", "", "</details>"]
    return f"---\n{head}---\n\n" + "\n".join(body) + "\n"

