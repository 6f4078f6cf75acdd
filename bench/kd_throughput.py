"""Distillation throughput: a plain Hugging Face-style KD loop against the harness's stage.

    GLUE_DIR=../shared/glue python bench/kd_throughput.py --pair minilm --examples 2048
    GLUE_DIR=../shared/glue python bench/kd_throughput.py --pair mpnet --examples 4096 --epochs 3

Both sides train the same student (every other block of the teacher's pretrained weights) from the
same teacher (the card's pretrained encoder with a seeded head: throughput does not depend on what
the weights have learnt) on the same SST-2 training examples, in this one process and device:

(a) references: what a KD script usually looks like: texts tokenized in the DataLoader's collate, fp32,
    batch 32, the teacher run every step, torch AdamW, Hinton KD loss; once padded to 128 tokens and
    once padded per batch to its longest row (dynamic padding, the fair reference);
(b) harness: ``harness.distill.train_stage`` with ``hinton_kd``: pre-tokenized data, length-grouped
    batches with dynamic padding, DeepSpeed, the teacher-output cache; in fp32 and with
    ``precision: auto`` (bf16 on a GPU or a CPU that has it natively).

It prints examples/s, the ratio, real (non-pad) tokens/s and, on GPU, model FLOP utilisation
(6 x student params + 2 x teacher params FLOPs per processed token, padding included, over the
device's dense bf16 peak).  The harness side is timed over ``--epochs`` epochs with the cache
built before the clock starts; its build time is printed too, and the figure amortised over those
epochs.  Bench pattern: warm-up steps untimed, synchronise, time.  Everything runs in one process, one
after the other, so the ratios are comparable on a busy machine; the figures go to
``results/bench/kd_throughput.json`` (``--out``) with the machine, versions and commit.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.data import cap_examples, tokenize
from harness.distill import Teacher, train_stage
from harness.engine import device
from harness.losses import TERMS
from harness.models import keep_layers, load_classifier, load_tokenizer
from harness.recipe_parts import DeepSpeedSettings, Training
from harness.engine import init_distributed
from harness.tasks import get_task
from harness.glue_files import load_split, resolve_glue_dir
from harness.precision import cpu_has_native_bf16
from harness.records import git_state
from harness.teachers import find_card, load_card

REPO = Path(__file__).resolve().parent.parent

PAIRS = {"minilm": ("all-MiniLM-L6-v2", [0, 2, 4]), "mpnet": ("all-mpnet-base-v2", [0, 2, 4, 6, 8, 10])}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(teacher, student, tok, texts, labels, dev, warmup: int, padding: str = "max_length") -> dict:
    """The reference: tokenization in the loader, fp32, teacher every step; ``padding`` "max_length"
    pads every row to 128 tokens, "longest" each batch to its longest row."""
    def collate(rows):
        enc = tok([r[0] for r in rows], padding=padding, truncation=True, max_length=128, return_tensors="pt")
        enc["labels"] = torch.tensor([r[1] for r in rows])
        return enc

    loader = torch.utils.data.DataLoader(list(zip(texts, labels)), batch_size=32, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0))
    teacher, student = teacher.to(dev).eval(), student.to(dev).train()
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5)
    seen = real = padded = 0
    start = None
    for i, batch in enumerate(loader):
        if i == warmup:
            sync(dev)
            start = time.perf_counter()
        batch = {k: v.to(dev) for k, v in batch.items()}
        y = batch.pop("labels")
        with torch.no_grad():
            t = teacher(**batch).logits
        s = student(**batch).logits
        T = 2.0
        loss = 0.5 * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T \
            + 0.5 * F.cross_entropy(s, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            seen += len(y)
            real += int(batch["attention_mask"].sum())
            padded += batch["attention_mask"].numel()
    sync(dev)
    wall = time.perf_counter() - start
    return {"examples_s": seen / wall, "real_tokens_s": real / wall, "padded_tokens_s": padded / wall}


def harness_stage(teacher, source, student, ds, tok, dev, epochs: float, precision: str = "fp32") -> dict:
    term = TERMS.get("hinton_kd")
    training = Training(epochs=epochs, batch_size=32, lr=5e-5, warmup_ratio=0.1, log_every=10 ** 6)
    t0 = time.perf_counter()
    _, stats = train_stage(student, [Teacher(teacher, 1.0, source)], [(term(term.Params()), 1.0)], ds, False,
                           training, DeepSpeedSettings(precision=precision), tok.pad_token_id, seed=0,
                           desc=f"harness stage ({precision})")
    total = time.perf_counter() - t0
    real = int(np.sum(ds["length"])) * stats["epochs"]
    return {"examples_s": stats["samples_per_s"], "real_tokens_s": real / stats["wall_time_s"],
            "wall_s": stats["wall_time_s"], "total_s": total, "cache": stats["teacher_cache"]["status"],
            "examples": stats["examples_seen"], "precision": stats["precision"]}


def mfu(ex_s: float, tokens_per_ex: float, teacher, student, dev) -> str:
    if dev.type != "cuda":
        return "n/a (CPU)"
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    if peak is None:
        return f"n/a ({name})"
    n_s = sum(p.numel() for p in student.parameters())
    n_t = sum(p.numel() for p in teacher.parameters())
    return f"{100 * ex_s * tokens_per_ex * (6 * n_s + 2 * n_t) / peak:.1f}%"


def run_pair(pair: str, n: int, epochs: float, glue_dir) -> dict:
    card_name, layers = PAIRS[pair]
    card = load_card(find_card(card_name))
    path = card.pretrained_path()
    task = get_task("sst2")
    dev = device()
    tok = load_tokenizer(path)
    torch.manual_seed(0)
    teacher = load_classifier(path, task)
    student = keep_layers(load_classifier(path, task), layers)
    raw = cap_examples(load_split(task, "train", glue_dir), n)
    ds = tokenize(task, "train", tok, 128, glue_dir, n)  # same seeded sample as `raw`
    print(f"\n== SST-2, {card_name} -> {len(layers)}-block student, {len(ds)} examples, device {dev} ==", flush=True)
    mean_len = float(np.mean(ds["length"]))
    out = {"pair": pair, "teacher": card_name, "student_blocks": layers, "examples": len(ds),
           "mean_length": round(mean_len, 2), "device": str(dev), "results": {}}
    for padding in ("max_length", "longest"):
        ref = plain_loop(copy.deepcopy(teacher), copy.deepcopy(student), tok, raw["text_a"], raw["label"], dev,
                         warmup=3, padding=padding)
        ref["mfu"] = mfu(ref["examples_s"], ref["padded_tokens_s"] / ref["examples_s"], teacher, student, dev)
        out["results"][f"plain_pad_{'128' if padding == 'max_length' else 'batch'}_fp32"] = ref
        print(f"plain loop (pad {padding}, fp32): {ref['examples_s']:8.1f} ex/s, {ref['real_tokens_s']:9.0f} real tok/s, "
              f"MFU {ref['mfu']}", flush=True)
    for precision in ("fp32", "auto"):
        har = harness_stage(teacher, path, copy.deepcopy(student), ds, tok, dev, epochs, precision)
        har["mfu"] = mfu(har["examples_s"], mean_len, teacher, student, dev)
        har["examples_s_incl_cache_build_and_start"] = har["examples"] / har["total_s"]
        out["results"][f"harness_{precision}"] = har
        print(f"harness stage ({har['precision']}, {har['cache']}, {epochs:g} epochs): {har['examples_s']:8.1f} ex/s, "
              f"{har['real_tokens_s']:9.0f} real tok/s, MFU {har['mfu']}", flush=True)
    base = out["results"]["plain_pad_batch_fp32"]["examples_s"]
    out["ratios_vs_plain_pad_batch"] = {k: round(v["examples_s"] / base, 3) for k, v in out["results"].items()}
    print(f"ratios against the plain loop with per-batch padding: {out['ratios_vs_plain_pad_batch']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", choices=["minilm", "mpnet", "both"], default="both")
    ap.add_argument("--examples", type=int, default=2048, help="SST-2 training examples (a seeded sample)")
    ap.add_argument("--epochs", type=float, default=2.0, help="epochs of the harness stage (cache reused across them)")
    ap.add_argument("--glue-dir", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "kd_throughput.json",
                    help="JSON file the figures are added to, keyed by pair (default: results/bench/kd_throughput.json)")
    args = ap.parse_args()
    init_distributed()
    glue_dir = resolve_glue_dir(args.glue_dir)
    saved = json.loads(args.out.read_text()) if args.out.exists() else {"pairs": {}}
    for pair in (["minilm", "mpnet"] if args.pair == "both" else [args.pair]):
        saved["pairs"][pair] = run_pair(pair, args.examples, args.epochs, glue_dir) | {
            "epochs": args.epochs, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    commit, changed = git_state(REPO)
    saved |= {"bench": "kd_throughput", "machine": {"cpu": platform.processor() or platform.machine(),
                                                    "native_bf16": cpu_has_native_bf16(),
                                                    "threads": torch.get_num_threads(), "platform": platform.platform()},
              "versions": {p: metadata.version(p) for p in ("torch", "deepspeed", "transformers")},
              "git_commit": commit, "git_dirty": bool(changed)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
