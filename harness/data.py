"""From GLUE rows to padded tensors: capped sampling, cached tokenization, length-grouped batches."""
from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import datasets
import numpy as np
import torch

from harness.engine import rank0_first
from harness.integrity import intact, locked, write_manifest
from harness.paths import cache_dir
from harness.recipe_parts import Corpus, Training
from harness.tasks import TASKS, Task, get_task
from harness.glue_files import load_split

# The training cap draws its sample with a fixed seed, independent of the run's seed, so that a teacher
# and every student trained with the same cap see the same examples (otherwise seed variance and
# data variance are mixed up in the tables).
CAP_SEED = 0


def cap_examples(ds: datasets.Dataset, cap: int | None) -> datasets.Dataset:
    if cap is None or cap >= len(ds):
        return ds
    keep = np.sort(np.random.default_rng(CAP_SEED).permutation(len(ds))[:cap])
    return ds.select(keep)


def _content_key(ds: datasets.Dataset, tokenizer, max_length: int) -> str:
    """A key for the tokenized copy: the texts and labels themselves, the tokenizer's vocab and settings."""
    h = hashlib.sha256()
    for col in ("idx", "text_a", "text_b", "label"):
        if col in ds.column_names:
            h.update(col.encode())
            h.update("\x1f".join(map(str, ds[col])).encode())
    vocab = tokenizer.get_vocab()
    h.update(repr(sorted(vocab.items())).encode())
    h.update(f"{type(tokenizer).__name__}|{tokenizer.do_lower_case if hasattr(tokenizer, 'do_lower_case') else ''}|{max_length}".encode())
    return h.hexdigest()[:16]


def _cached_map(ds: datasets.Dataset, encode, folder: Path, remove: list[str], desc: str) -> datasets.Dataset:
    """``ds.map(encode)`` stored once as ``<folder>/data.arrow`` with a manifest; an entry that is
    damaged or was left half-written is encoded again (with a warning), never read."""
    with locked(folder, "tokenized data"):
        fresh = not intact(folder, "tokenized data")
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        out = ds.map(encode, batched=True, cache_file_name=str(folder / "data.arrow"), load_from_cache_file=not fresh,
                     remove_columns=remove, desc=desc)
        if fresh:
            write_manifest(folder)
    return out


def tokenize(task: Task, split: str, tokenizer, max_length: int, glue_dir: Path | None,
             cap: int | None = None) -> datasets.Dataset:
    """Load a split, cap it, and tokenize it once; later calls reuse the Arrow file in the cache."""
    ds = cap_examples(load_split(task, split, glue_dir), cap)
    pair = "text_b" in ds.column_names
    key = _content_key(ds, tokenizer, max_length)

    def encode(rows):
        enc = tokenizer(rows["text_a"], rows["text_b"] if pair else None, truncation=True, max_length=max_length)
        enc["length"] = [len(x) for x in enc["input_ids"]]
        return enc

    return _cached_map(ds, encode, cache_dir() / "tokenized" / task.name / f"{split}-{key}",
                       [c for c in ds.column_names if c.startswith("text_")], f"tokenizing {task.display} {split}")


def tokenize_task(task: Task, tok, training: Training, glue_dir: Path | None):
    """(capped training set, {dev split: dataset}) in ``tok``'s ids; rank 0 fills the cache first."""
    return rank0_first(lambda: (
        tokenize(task, "train", tok, training.max_length, glue_dir, training.max_train_examples),
        {s: tokenize(task, s, tok, training.max_length, glue_dir) for s in task.dev_splits}))


def corpus_lines(files: list[Path], glue_tasks: list[Task], glue_dir: Path | None) -> list[str]:
    """Unlabeled text: non-empty lines of the files, then the training sentences of GLUE tasks."""
    lines = []
    for f in files:
        with open(f, encoding="utf-8-sig") as fh:
            lines += [ln.strip() for ln in fh if ln.strip()]
    for task in glue_tasks:
        ds = load_split(task, "train", glue_dir)
        lines += [t for col in ("text_a", "text_b") if col in ds.column_names for t in ds[col] if t]
    return lines


def tokenize_corpus(lines: list[str], tokenizer, max_length: int, cap: int | None) -> datasets.Dataset:
    """Tokenize a corpus (one example per line), cached by content like the task data."""
    ds = cap_examples(datasets.Dataset.from_dict({"idx": list(range(len(lines))), "text_a": lines}), cap)
    key = _content_key(ds, tokenizer, max_length)

    def encode(rows):
        enc = tokenizer(rows["text_a"], truncation=True, max_length=max_length, return_special_tokens_mask=False)
        enc["length"] = [len(x) for x in enc["input_ids"]]
        return enc

    return _cached_map(ds, encode, cache_dir() / "tokenized" / "corpus" / key, ["text_a"],
                       f"tokenizing corpus ({len(ds)} lines)")


def corpus_tasks(corpus: Corpus) -> list[Task]:
    """The GLUE tasks whose training text a corpus reads (``glue: all``: every registered task)."""
    return [task for _, task in TASKS.items()] if corpus.glue == "all" else [get_task(t) for t in corpus.glue]


def corpus_cap(corpus: Corpus, training: Training) -> int | None:
    """How many lines a corpus phase trains on at most: the corpus's own cap and the phase's
    max_train_examples, whichever is smaller, so that a quick run's ``--set
    training.max_train_examples=N`` shrinks the general phases along with the task ones."""
    caps = [c for c in (corpus.max_examples, training.max_train_examples) if c is not None]
    return min(caps) if caps else None


def corpus_files(corpus: Corpus, recipe_dir: Path) -> list[Path]:
    """A corpus's ``files``, relative ones read from the recipe's folder."""
    return [Path(f).expanduser() if Path(f).expanduser().is_absolute() else recipe_dir / f for f in corpus.files]


def corpus_dataset(corpus: Corpus, tok, training: Training, recipe_dir: Path, glue_dir: Path | None):
    """A corpus phase's text (files, then GLUE training sentences), capped and tokenized once."""
    files = corpus_files(corpus, recipe_dir)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"corpus files not found: {missing}")
    return rank0_first(lambda: tokenize_corpus(corpus_lines(files, corpus_tasks(corpus), glue_dir), tok,
                                               training.max_length, corpus_cap(corpus, training)))


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches of similar lengths, so dynamic padding wastes little compute.

    Shuffle, cut into mega-batches of 50 batches, sort each by length, cut into batches, then shuffle
    the batch order (the trick of fairseq / HF's LengthGroupedSampler, written here as a few lines).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    mega = batch_size * 50
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class Collator:
    """Pads a list of tokenized rows to the longest in the list (dynamic padding)."""

    def __init__(self, pad_id: int, regression: bool):
        self.pad_id = pad_id
        self.regression = regression

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        out = {}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key not in rows[0]:
                continue
            fill = self.pad_id if key == "input_ids" else 0
            out[key] = torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows], dtype=torch.long)
        if "label" in rows[0]:  # a corpus for general distillation has none (MLM labels come later)
            dtype = torch.float32 if self.regression else torch.long
            out["labels"] = torch.tensor([r["label"] for r in rows], dtype=dtype)
        out["idx"] = torch.tensor([r["idx"] for r in rows], dtype=torch.long)
        return out


class MicroBatches(torch.utils.data.Dataset):
    """The micro-batches of one epoch as a map-style dataset, so a DataLoader can collate them in worker
    processes and pin them while the accelerator computes: item j is (row indices, the student's
    padded batch, [the padded batch of each teacher with its own tokenization, or None])."""

    def __init__(self, micro: list[np.ndarray], ds, collate: Collator, teacher_data: list):
        self.micro, self.ds, self.collate = micro, ds, collate
        self.teacher_data = teacher_data  # per teacher: (its dataset, its Collator) or None

    def __len__(self) -> int:
        return len(self.micro)

    def __getitem__(self, j: int):
        rows = self.micro[j]
        own = [None if td is None else td[1]([td[0][int(i)] for i in rows]) for td in self.teacher_data]
        return rows, self.collate([self.ds[int(i)] for i in rows]), own


def loader(micro: list[np.ndarray], ds, collate: Collator, teacher_data: list, workers: int, pin: bool):
    """Batches in order (the order is the length-grouped shuffle): no sampler, no re-batching."""
    return torch.utils.data.DataLoader(MicroBatches(micro, ds, collate, teacher_data), batch_size=None,
                                       shuffle=False, num_workers=workers, pin_memory=pin,
                                       collate_fn=_as_is, persistent_workers=False)


def _as_is(item):
    return item  # MicroBatches items are collated already


def rank_shard(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's part of a global batch (every example goes to exactly one rank)."""
    return batch[rank::world]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
