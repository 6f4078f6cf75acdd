"""``python -m harness export RUN_DIR --out DIR``: a run's trained model as a plain Hugging Face folder.

The folder holds config.json, model.safetensors and the tokenizer, saved with ``save_pretrained``, so
``AutoModelForSequenceClassification`` and ``pipeline`` load it without the harness; the config names
the task's labels and the tokenizer truncates where training did.  ``README.md`` is its model card
(:mod:`harness.model_card`).  ``RUN_DIR`` is one record folder, or a folder of seeds (a recipe's
``results/runs/<name>/``, a study cell): the card then shows every seed, and the best seed on dev is
exported unless ``--seed`` says which.  The exported folder is scored again on the dev set and the
card gives both scores, its own and the record's (``--no-check`` skips it).  ``--onnx`` adds ``onnx/model.onnx`` (torch.onnx) and checks it
against the PyTorch model on the dev set with onnxruntime: the largest absolute logit difference is
printed, stored in ``onnx/parity.json`` and in the card.
"""
from __future__ import annotations

import inspect
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from harness.inference import logits, max_length, model_folder, predictions, torch_runner
from harness.metrics import compute_metrics
from harness.model_card import card_text
from harness.records import read_record
from harness.run_record import RunRecord
from harness.schema import ConfigError
from harness.tasks import GlueDataError, Task, get_task
from harness.glue_files import load_split

# Readable class names, those of the Hub's nyu-mll/glue ClassLabels (same class ids as the harness);
# the other classification tasks' label strings (entailment, ...) are readable as they are.
CLASS_NAMES = {"cola": ("unacceptable", "acceptable"), "sst2": ("negative", "positive"),
               "mrpc": ("not_equivalent", "equivalent"), "qqp": ("not_duplicate", "duplicate"),
               "wnli": ("not_entailment", "entailment")}
ONNX_OPSET = 17


@dataclass(frozen=True)
class Exported:
    out: Path
    record_dir: Path
    record: RunRecord
    seeds: list[RunRecord]
    check: dict | None  # dev_check's result (with ONNX parity when exported with --onnx)


def seed_records(run_dir: Path) -> list[tuple[Path, RunRecord]]:
    """The record ``run_dir`` is, or the records of its ``seed<N>`` folders."""
    if (run_dir / "metrics.json").is_file():
        return [(run_dir, read_record(run_dir))]
    folders = sorted((p for p in run_dir.glob("seed*") if (p / "metrics.json").is_file()),
                     key=lambda p: int(p.name.removeprefix("seed")) if p.name[4:].isdigit() else -1)
    if not folders:
        raise ConfigError(f"{run_dir} is not a run record folder (no metrics.json) nor a folder of seeds "
                          "(seed<N>/metrics.json), e.g. results/runs/quickstart/seed42 or results/runs/quickstart")
    return [(f, read_record(f)) for f in folders]


def pick(records: list[tuple[Path, RunRecord]], seed: int | None) -> tuple[Path, RunRecord]:
    """The record of ``seed``, or the one with the best dev score (the lowest seed on a tie)."""
    if seed is None:
        return max(records, key=lambda fr: (fr[1].score, -fr[1].seed))
    for folder, m in records:
        if m.seed == seed:
            return folder, m
    raise ConfigError(f"no seed {seed} here; seeds: {', '.join(str(m.seed) for _, m in records)}")


def label_names(task: Task) -> list[str]:
    if task.labels is None:
        return ["score"]  # STS-B: one output, a similarity from 0 to 5
    return list(CLASS_NAMES[task.name]) if task.name in CLASS_NAMES else list(task.labels)


def save_hf(model_dir: Path, out: Path, task: Task, length: int):
    """The trained model and tokenizer through ``save_pretrained``, fp32 (any CPU runs it; a bf16 run's
    weights are bf16 values, exact in fp32), with the task's label names and max length."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    names = label_names(task)
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    model.config.problem_type = "regression" if task.is_regression else "single_label_classification"
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.model_max_length = length  # pipeline(truncation=True) then cuts where training and dev scoring did
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return model.eval(), tok


def onnx_session(out: Path, tok):
    """``onnx/model.onnx`` of the saved model, and ``run(numpy inputs) -> logits`` through onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("--onnx needs onnxruntime and onnx: pip install -e '.[export]'") from None
    path = out / "onnx" / "model.onnx"
    path.parent.mkdir()
    # the TorchScript exporter (dynamo=False): the dynamo one needs onnxscript, which is not required
    # here; it fails on the SDPA attention path, so it traces the same weights with eager attention
    eager = AutoModelForSequenceClassification.from_pretrained(out, attn_implementation="eager").eval()
    # the graph's inputs come in forward()'s order, and input_names are given to them in order
    names = [k for k in inspect.signature(eager.forward).parameters if k in tok.model_input_names]
    encoded = tok(["an example", "a pair of sentences"], padding=True, return_tensors="np")
    example = {k: torch.from_numpy(encoded[k]) for k in names}
    with warnings.catch_warnings():  # tracer warnings about Python branches: the dev parity check below is the test
        warnings.simplefilter("ignore")
        torch.onnx.export(eager, (), str(path), kwargs=example, input_names=names, output_names=["logits"],
                          dynamic_axes={k: {0: "batch", 1: "sequence"} for k in names} | {"logits": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda inputs: session.run(["logits"], {k: inputs[k].astype(np.int64) for k in names})[0]


def dev_check(model, tok, task: Task, glue_dir: Path | None, length: int, run_onnx=None) -> dict:
    """The exported model scored again on every dev split (PyTorch, and ONNX with its parity)."""
    out = {}
    for split in task.dev_splits:
        ds = load_split(task, split, glue_dir)
        labels = list(ds["label"])
        pt = logits(torch_runner(model), tok, ds, length)
        out[split] = {"examples": len(ds), "pytorch": compute_metrics(task, predictions(pt, task.labels), labels)}
        if run_onnx is not None:
            ox = logits(run_onnx, tok, ds, length)
            p_pt, p_ox = predictions(pt, task.labels), predictions(ox, task.labels)
            out[split] |= {"onnx": compute_metrics(task, p_ox, labels), "max_abs_logit_diff": float(np.abs(pt - ox).max()),
                           "same_predictions": sum(a == b for a, b in zip(p_pt, p_ox)) if task.labels else None}
    return out


def check_lines(check: dict, m: RunRecord) -> list[str]:
    """The card's (and the command's) account of the dev check."""
    lines = []
    for split, c in check.items():
        ours = ", ".join(f"{k} {100 * v:.2f}" for k, v in c["pytorch"].items())
        theirs = ", ".join(f"{k} {100 * v:.2f}" for k, v in m.dev[split].items())
        lines.append(f"- {split} ({c['examples']} examples): this folder scores {ours} (PyTorch, fp32); the record: {theirs}")
        if "onnx" in c:
            same = f", same prediction on {c['same_predictions']}" if c["same_predictions"] is not None else ""
            lines.append(f"  - ONNX (onnx/model.onnx, opset {ONNX_OPSET}, onnxruntime CPU): largest absolute logit "
                         f"difference {c['max_abs_logit_diff']:.2e}{same}; scores "
                         + ", ".join(f"{k} {100 * v:.2f}" for k, v in c["onnx"].items()))
    return lines


def export(run_dir: Path, out: Path, seed: int | None = None, onnx: bool = False, check: bool = True,
           glue_dir: Path | None = None, teachers_dir: Path | None = None) -> Exported:
    """Export one record's model (``check``: score it again on dev); the folder is written whole or
    not at all: built in ``<out>.tmp``, renamed into place."""
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose another --out or remove it")
    records = seed_records(run_dir)
    record_dir, m = pick(records, seed)
    source = model_folder(record_dir, m)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        found = _write(tmp, source, record_dir, m, [r for _, r in records], onnx, check, glue_dir, teachers_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        raise
    if out.exists():
        out.rmdir()  # empty, checked above
    tmp.rename(out)
    return Exported(out, record_dir, m, [r for _, r in records], found)


def _write(tmp: Path, source: Path, record_dir: Path, m: RunRecord, seeds: list[RunRecord], onnx: bool, check: bool,
           glue_dir: Path | None, teachers_dir: Path | None) -> dict | None:
    """The model, its ONNX copy, the dev check and the card into ``tmp``; returns the check."""
    task, length = get_task(m.task), max_length(record_dir)
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the saved model is loaded as is: no "newly initialized" noise
    try:
        model, tok = save_hf(source, tmp, task, length)
    finally:
        transformers.logging.set_verbosity(level)
    run_onnx = onnx_session(tmp, tok) if onnx else None
    try:
        result = dev_check(model, tok, task, glue_dir, length, run_onnx) if check or onnx else None
    except GlueDataError as e:
        raise GlueDataError(f"{e}\n(the exported model is scored on dev again: pass --glue-dir, or --no-check "
                            "to export without it; --onnx needs the dev set for its parity check)") from None
    if onnx:
        (tmp / "onnx" / "parity.json").write_text(json.dumps({"opset": ONNX_OPSET, "max_length": length,
                                                              "splits": result}, indent=2) + "\n")
    extra = ["## Checked at export", "", *check_lines(result, m), ""] if result else []
    (tmp / "README.md").write_text(card_text(record_dir, m, seeds, extra, teachers_dir))
    return result
