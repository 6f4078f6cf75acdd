"""Helpers of the GPU check: ``bench/gpu_prepare.sh`` (here) and ``bench/gpu_check.sh`` (on the GPU machine).

    python bench/gpu_kit.py local all-MiniLM-L6-v2 all-mpnet-base-v2   # NAME=DIR of the installed checkpoints
    python bench/gpu_kit.py shrink SRC DST [--dtype fp16]               # a copy with 16-bit weights (to carry)
    python bench/gpu_kit.py widen DIR [DIR ...]                         # back to fp32 weights, in place
    python bench/gpu_kit.py cards OUT NAME=DIR [NAME=DIR ...]           # teacher cards pointing at those folders
    python bench/gpu_kit.py summary WORK OUT_JSON --mode gpu            # the check's summary JSON

Weights travel in 16 bits because a device call carries at most 64 MiB; they are widened to fp32 on
arrival because ``from_pretrained`` in transformers 5 keeps a checkpoint's dtype, and the harness and the
plain loops train fp32 master weights.  fp16 keeps 3 more mantissa bits than bf16, and these encoders'
weights are far inside its range (``shrink`` refuses a tensor that would overflow).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# what from_pretrained reads besides the weights (sentence-transformers' pooling files are not needed)
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
STEP_ORDER = ("stage", "e2e", "throughput_minilm", "throughput_mpnet", "cache_parity", "full_sst2")


# -- model folders -----------------------------------------------------------------------------------
def local_models(names: list[str]) -> dict[str, Path]:
    """Each card's installed offline checkpoint (``python -m harness teachers install NAME`` puts it there)."""
    from harness.teachers import find_card, load_card

    found = {}
    for name in names:
        folder = load_card(find_card(name, tdir=REPO / "teachers")).local_checkpoint()
        if folder is None:
            sys.exit(f"{name} is not installed here: python -m harness teachers install {name}")
        found[name] = folder
    return found


def shrink(src: Path, dst: Path, dtype: str = "fp16") -> int:
    """Copy the model folder ``src`` to ``dst`` with its floating-point weights in ``dtype``; returns bytes written."""
    weights = sorted(src.glob("*.safetensors"))
    if not weights:
        sys.exit(f"{src}: no *.safetensors weights to shrink")
    dst.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for w in weights:
        out = {}
        for key, t in load_file(w).items():
            if t.is_floating_point():
                small = t.to(DTYPES[dtype])
                if bool(torch.isfinite(t).all()) and not bool(torch.isfinite(small).all()):
                    sys.exit(f"{w}: tensor {key} overflows {dtype}; shrink with --dtype bf16")
                t = small
            out[key] = t.contiguous()
        save_file(out, dst / w.name, metadata={"format": "pt"})
    return sum(p.stat().st_size for p in dst.iterdir() if p.is_file())


def widen(folder: Path) -> None:
    """Rewrite the folder's 16-bit floating-point weights as fp32, in place (written aside, then renamed)."""
    for w in sorted(folder.glob("*.safetensors")):
        tensors = load_file(w)
        if all(t.dtype not in (torch.float16, torch.bfloat16) for t in tensors.values()):
            continue
        wide = {k: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for k, t in tensors.items()}
        tmp = w.with_suffix(".tmp")
        save_file(wide, tmp, metadata={"format": "pt"})
        tmp.replace(w)


def write_cards(out: Path, models: dict[str, Path]) -> list[Path]:
    """Copies of ``teachers/<NAME>.yaml`` whose checkpoint is the local folder (the Hub id kept as its name),
    without the pip packages (the GPU machine has none of them), each checked by the harness's card schema."""
    from harness.teachers import load_card

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, folder in models.items():
        card = yaml.safe_load((REPO / "teachers" / f"{name}.yaml").read_text())
        hub = card["checkpoint"].get("hub")
        card["checkpoint"] = {"path": str(Path(folder).resolve())} | ({"hub": hub} if hub else {})
        card.pop("install", None)
        head = card.get("mlm_head") or {}
        if str(head.get("source", "")).startswith(("./", "../")):  # relative to the card: keep it pointing there
            head["source"] = str((REPO / "teachers" / head["source"]).resolve())
        card["description"] = f"{card.get('description', '').strip()} (GPU check: the local copy named in checkpoint.path)"
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(card, sort_keys=False))
        if load_card(path).local_checkpoint() is None:
            sys.exit(f"{path}: {folder} holds no config.json")
        written.append(path)
    return written


# -- summary -----------------------------------------------------------------------------------------
def _records(folder: Path, kind: str | None = None) -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted(folder.rglob("metrics.json"))] if folder.is_dir() else []
    return [m for m in found if kind is None or m.get("kind") == kind]


def brief(m: dict) -> dict:
    """What a run record says about one training run, in a few fields."""
    t = m.get("train") or {}
    cache = t.get("teacher_cache") or {}
    return {"kind": m.get("kind"), "name": m.get("name"), "seed": m.get("seed"), "score": m.get("score"),
            "train_examples": t.get("train_examples"), "epochs": t.get("epochs"),
            "wall_time_s": t.get("wall_time_s"), "samples_per_s": t.get("samples_per_s"),
            "precision": t.get("precision"), "attention": t.get("attention"),
            "teacher_cache": cache.get("status"), "teacher_scores": m.get("teacher_scores"),
            "gpu_speed": (m.get("speed") or {}).get("gpu")}


def parity(folder: Path) -> dict:
    """Cached against uncached students of ``bench/cache_parity.py``, seed by seed: dev points and loss gaps."""
    cached = {m["seed"]: m for m in _records(folder / "cached", "student")}
    uncached = {m["seed"]: m for m in _records(folder / "uncached", "student")}
    seeds = []
    for seed in sorted(set(cached) & set(uncached)):
        a, b = cached[seed], uncached[seed]
        la = {h["step"]: h["loss"] for h in a["train"]["loss_history"]}
        lb = {h["step"]: h["loss"] for h in b["train"]["loss_history"]}
        gaps = [abs(la[s] - lb[s]) for s in sorted(set(la) & set(lb))]
        seeds.append({"seed": seed, "cached": a["score"], "uncached": b["score"],
                      "diff_points": round(100 * (a["score"] - b["score"]), 3),
                      "loss_gap_max": max(gaps) if gaps else None,
                      "cache_status": a["train"]["teacher_cache"]["status"], "precision": a["train"]["precision"]})
    return {"seeds": seeds, "unpaired": sorted(set(cached) ^ set(uncached))}


def throughput(path: Path, pair: str) -> dict | None:
    """One pair's examples/s, MFU and ratios from ``bench/kd_throughput.py``'s JSON."""
    if not path.is_file():
        return None
    got = json.loads(path.read_text())["pairs"].get(pair)
    if got is None:
        return None
    rows = {k: {"examples_s": round(v["examples_s"], 1), "mfu": v.get("mfu"), "precision": v.get("precision")}
            for k, v in got["results"].items()}
    return {"examples": got["examples"], "epochs": got.get("epochs"), "mean_length": got["mean_length"],
            "results": rows, "ratios_vs_plain_pad_batch": got["ratios_vs_plain_pad_batch"]}


def step_results(work: Path) -> dict:
    """Each step's figures, read from what it wrote under ``work`` (partial results of a timed-out step too)."""
    return {"e2e": _runs(work / "e2e") | {"tables": sorted(p.name for p in (work / "e2e").glob("*.md"))},
            "throughput_minilm": throughput(work / "kd_throughput.json", "minilm"),
            "throughput_mpnet": throughput(work / "kd_throughput.json", "mpnet"),
            "cache_parity": parity(work / "cache_parity"),
            "full_sst2": _runs(work / "full_sst2")}


def _runs(results: Path) -> dict:
    """A results folder's student and teacher runs (a teacher's record is written there too)."""
    return {kind + "s": [brief(m) for m in _records(results / "runs", kind)] for kind in ("student", "teacher")}


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or platform.machine()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "gpu_count": torch.cuda.device_count(), "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                 "bf16": torch.cuda.is_bf16_supported()}
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True)
            info["driver"] = q.stdout.strip() or None
    return info


def versions() -> dict:
    found = {}
    for p in ("torch", "transformers", "deepspeed", "datasets", "safetensors", "pydantic"):
        try:
            found[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            found[p] = None
    return found


def commit() -> dict:
    """The commit: from gpu_prepare.sh's KD_GPU_COMMIT (the device's copy has no .git), else from git here."""
    if os.environ.get("KD_GPU_COMMIT"):
        return {"git_commit": os.environ["KD_GPU_COMMIT"], "git_dirty": os.environ.get("KD_GPU_DIRTY") == "1",
                "commit_from": "KD_GPU_COMMIT (gpu_prepare.sh)"}
    from harness.records import git_state

    sha, changed = git_state(REPO)
    return {"git_commit": sha, "git_dirty": bool(changed), "commit_from": "git"}


def read_steps(work: Path) -> list[dict]:
    path = work / "steps.jsonl"
    steps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return sorted(steps, key=lambda s: STEP_ORDER.index(s["step"]) if s["step"] in STEP_ORDER else len(STEP_ORDER))


def summarize(work: Path, mode: str, budget_s: float | None) -> dict:
    """The whole check in one JSON: where, what, and each step's status, wall time and figures."""
    steps, results = read_steps(work), step_results(work)
    for s in steps:
        s["result"] = results.get(s["step"])
    failures = [f"{s['step']}: {s['status']}" for s in steps if s["status"] != "ok"]
    missing = [name for name in STEP_ORDER if name not in {s["step"] for s in steps}]
    return {"bench": "gpu_check", "mode": mode, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": machine(), "versions": versions(), **commit(), "budget_s": budget_s,
            "wall_s": round(sum(s["wall_s"] for s in steps), 1), "ok": not failures and not missing,
            "failures": failures + [f"{name}: not run" for name in missing], "steps": steps}


def print_summary(summary: dict) -> None:
    m = summary["machine"]
    print(f"\n== GPU check ({summary['mode']}) on {m.get('gpu', m['cpu'])}, commit {summary['git_commit']}"
          f"{' (dirty)' if summary['git_dirty'] else ''} ==")
    for s in summary["steps"]:
        limit = "" if s["limit_s"] is None else f"  (limit {s['limit_s']} s)"
        print(f"{s['step']:>18}  {s['status']:<9} {s['wall_s']:7.1f} s{limit}")
    print("all steps ok" if summary["ok"] else "FAILED: " + "; ".join(summary["failures"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("local").add_argument("names", nargs="+")
    p = sub.add_parser("shrink")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    sub.add_parser("widen").add_argument("dirs", nargs="+", type=Path)
    p = sub.add_parser("cards")
    p.add_argument("out", type=Path)
    p.add_argument("models", nargs="+", metavar="NAME=DIR")
    p = sub.add_parser("summary")
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--mode", default="gpu")
    p.add_argument("--budget", type=float, default=None)
    args = ap.parse_args()
    if args.cmd == "local":
        print("\n".join(f"{k}={v}" for k, v in local_models(args.names).items()))
    elif args.cmd == "shrink":
        print(f"{args.dst}: {shrink(args.src, args.dst, args.dtype) / 1e6:.1f} MB")
    elif args.cmd == "widen":
        for d in args.dirs:
            widen(d)
    elif args.cmd == "cards":
        models = dict(item.split("=", 1) for item in args.models)
        print("\n".join(str(p) for p in write_cards(args.out, {k: Path(v) for k, v in models.items()})))
    else:
        summary = summarize(args.work, args.mode, args.budget)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print_summary(summary)
        return 0 if summary["ok"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
