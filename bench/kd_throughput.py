"""Distillation throughput: a plain Hugging Face-style KD loop against the harness's stage.

    GLUE_DIR=../shared/glue python bench/kd_throughput.py --pair minilm --examples 2048
    GLUE_DIR=../shared/glue python bench/kd_throughput.py --pair mpnet --examples 4096 --epochs 3

Both sides train the same student (every other block of the teacher's pretrained weights) from the
same teacher (the card's pretrained encoder with a seeded head: throughput does not depend on what
the weights have learnt) on the same SST-2 training examples, in this one process and device:

(a) reference: what a KD script usually looks like: texts tokenized in the DataLoader's collate,
    padded to 128, fp32, batch 32, the teacher run every step, torch AdamW, Hinton KD loss.
(b) harness: ``harness.distill.train_stage`` with ``hinton_kd``: pre-tokenized data, length-grouped
    batches with dynamic padding, DeepSpeed (bf16 on GPUs that have it), the teacher-output cache.

It prints examples/s, the ratio, real (non-pad) tokens/s and, on GPU, model FLOP utilisation
(6 x student params + 2 x teacher params FLOPs per processed token, padding included, over the
device's dense bf16 peak).  The harness side is timed over ``--epochs`` epochs with the cache
built before the clock starts; its build time is printed too, and the figure amortised over those
epochs.  Bench pattern: warm-up steps untimed, synchronise, time.
"""
from __future__ import annotations

import argparse
import copy
import time

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
from harness.tasks import get_task, load_split, resolve_glue_dir
from harness.teachers import find_card, load_card

PAIRS = {"minilm": ("all-MiniLM-L6-v2", [0, 2, 4]), "mpnet": ("all-mpnet-base-v2", [0, 2, 4, 6, 8, 10])}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(teacher, student, tok, texts, labels, dev, warmup: int) -> dict:
    """The reference: tokenization in the loader, pad to 128, fp32, teacher every step."""
    def collate(rows):
        enc = tok([r[0] for r in rows], padding="max_length", truncation=True, max_length=128, return_tensors="pt")
        enc["labels"] = torch.tensor([r[1] for r in rows])
        return enc

    loader = torch.utils.data.DataLoader(list(zip(texts, labels)), batch_size=32, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0))
    teacher, student = teacher.to(dev).eval(), student.to(dev).train()
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5)
    seen = real = steps = 0
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
            steps += 1
    sync(dev)
    wall = time.perf_counter() - start
    return {"examples_s": seen / wall, "real_tokens_s": real / wall, "padded_tokens_s": steps * 32 * 128 / wall}


def harness_stage(teacher, source, student, ds, tok, dev, epochs: float) -> dict:
    term = TERMS.get("hinton_kd")
    training = Training(epochs=epochs, batch_size=32, lr=5e-5, warmup_ratio=0.1, log_every=10 ** 6)
    t0 = time.perf_counter()
    _, stats = train_stage(student, [Teacher(teacher, 1.0, source)], [(term(term.Params()), 1.0)], ds, False,
                           training, DeepSpeedSettings(), tok.pad_token_id, seed=0, desc="harness stage")
    total = time.perf_counter() - t0
    real = int(np.sum(ds["length"])) * stats["epochs"]
    return {"examples_s": stats["samples_per_s"], "real_tokens_s": real / stats["wall_time_s"],
            "wall_s": stats["wall_time_s"], "total_s": total, "cache": stats["teacher_cache"]["status"],
            "examples": stats["examples_seen"]}


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


def run_pair(pair: str, n: int, epochs: float, glue_dir) -> None:
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
    ref = plain_loop(copy.deepcopy(teacher), copy.deepcopy(student), tok, raw["text_a"], raw["label"], dev, warmup=3)
    har = harness_stage(teacher, path, copy.deepcopy(student), ds, tok, dev, epochs)
    mean_len = float(np.mean(ds["length"]))
    ratio = har["examples_s"] / ref["examples_s"]
    print(f"plain loop (pad 128, fp32, tokenize per batch, teacher every step): {ref['examples_s']:8.1f} ex/s, "
          f"{ref['real_tokens_s']:9.0f} real tok/s ({ref['padded_tokens_s']:.0f} incl. pad), "
          f"MFU {mfu(ref['examples_s'], 128, teacher, student, dev)}")
    print(f"harness stage ({har['cache']}, {epochs:g} epochs):           {har['examples_s']:8.1f} ex/s, "
          f"{har['real_tokens_s']:9.0f} real tok/s (mean length {mean_len:.1f}), "
          f"MFU {mfu(har['examples_s'], mean_len, teacher, student, dev)}")
    amortised = har["examples"] / har["total_s"]
    print(f"ratio harness / plain: {ratio:.2f}x   (counting the cache build and DeepSpeed start: "
          f"{amortised:.1f} ex/s, {amortised / ref['examples_s']:.2f}x)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", choices=["minilm", "mpnet", "both"], default="both")
    ap.add_argument("--examples", type=int, default=2048, help="SST-2 training examples (a seeded sample)")
    ap.add_argument("--epochs", type=float, default=2.0, help="epochs of the harness stage (cache reused across them)")
    ap.add_argument("--glue-dir", default=None)
    args = ap.parse_args()
    init_distributed()
    glue_dir = resolve_glue_dir(args.glue_dir)
    for pair in (["minilm", "mpnet"] if args.pair == "both" else [args.pair]):
        run_pair(pair, args.examples, args.epochs, glue_dir)


if __name__ == "__main__":
    main()
