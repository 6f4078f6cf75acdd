"""Cache entries that detect their own damage, and locks that keep two runs from building one entry.

Every cache entry (a fine-tuned teacher, an assistant stage, a co-finetuned teacher, a set of teacher
outputs, a tokenized split, a trained student) carries ``manifest.json``: the size and SHA-256 of each
of its files, written last, after the entry is complete.  An entry whose manifest is missing or does
not match what is on disk is damaged: the harness rebuilds it with a warning rather than read it, and
``python -m harness cache verify`` reports it (exit 1).

Locks are ``filelock`` files under ``$KD_HARNESS_CACHE/locks/``, one per entry or record: a second
process that needs what another is building waits for it, says so, and then reuses it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

from filelock import FileLock, Timeout

from harness.paths import cache_dir

MANIFEST = "manifest.json"
_CHUNK = 16 << 20


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    """Record the size and hash of every file under ``folder`` (call it last, once the entry is complete)."""
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in _files(folder)}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": files, "written": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1) + "\n")
    tmp.rename(folder / MANIFEST)


WEIGHTS = (".safetensors", ".bin")


def model_id(folder: Path) -> str:
    """A saved model's identity: a hash of its weight files' SHA-256 (from its manifest when it has one,
    else read now).  Two runs read the same teacher instance exactly when their ids are equal: a spec
    hash says how a model was to be trained, this says which weights came out."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        listed = json.loads(manifest.read_text())["files"]
        digests = {n: f["sha256"] for n, f in listed.items() if "/" not in n and n.endswith(WEIGHTS)}
    else:
        digests = {p.name: file_digest(p) for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHTS)}
    if not digests:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHTS)}) in {folder}")
    joined = "\n".join(f"{n} {d}" for n, d in sorted(digests.items()))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def problems(folder: Path) -> list[str]:
    """What is wrong with an entry: [] when its manifest matches every file (sizes, then hashes)."""
    manifest = folder / MANIFEST
    if not folder.is_dir():
        return ["missing"]
    if not manifest.is_file():
        return ["no manifest (incomplete, or written before manifests existed)"]
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return ["unreadable manifest"]
    found = {str(p.relative_to(folder)) for p in _files(folder)}
    out = [f"{name}: missing" for name in sorted(set(listed) - found)]
    out += [f"{name}: not in the manifest" for name in sorted(found - set(listed))]
    for name in sorted(set(listed) & found):
        p, want = folder / name, listed[name]
        if p.stat().st_size != want["bytes"]:
            out.append(f"{name}: {p.stat().st_size} bytes, manifest says {want['bytes']}")
        elif file_digest(p) != want["sha256"]:
            out.append(f"{name}: contents differ from the manifest (sha256)")
    return out


_VERIFIED: set[tuple[str, int]] = set()  # entries found intact by this process, with their manifest's mtime


def intact(folder: Path, what: str) -> bool:
    """Whether an existing entry can be read; a damaged one is reported (it will be rebuilt).  Hashing
    a large entry (a teacher's outputs can be gigabytes) takes seconds, so each entry is hashed once
    per process: a later read in the same run trusts that check while its manifest is unchanged."""
    if not folder.exists():
        return False
    manifest = folder / MANIFEST
    key = (str(folder.resolve()), manifest.stat().st_mtime_ns if manifest.is_file() else -1)
    if key in _VERIFIED:
        return True
    bad = problems(folder)
    if not bad:
        _VERIFIED.add(key)
    else:
        print(f"warning: {what} in {folder} is damaged ({'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
              "rebuilding it", flush=True)
    return not bad


def lock_path(target: Path) -> Path:
    """The lock file guarding ``target`` (a cache entry or a record folder), kept in the cache."""
    key = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:16]
    d = cache_dir() / "locks"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{target.name}-{key}.lock"


@contextlib.contextmanager
def locked(target: Path, what: str):
    """Hold ``target``'s lock; when another process holds it, say so and wait.  Yields whether it
    waited (what that process built may now be there to reuse)."""
    lock = FileLock(str(lock_path(target)))
    try:
        lock.acquire(timeout=0)
        waited = False
    except Timeout:
        print(f"waiting: another harness process is building {what} ({target}); it will be reused when done",
              flush=True)
        lock.acquire()
        waited = True
    try:
        yield waited
    finally:
        lock.release()


@contextlib.contextmanager
def claimed(target: Path):
    """Hold ``target``'s lock if no other process holds it; yields whether it was free (holding
    nothing when it was not)."""
    lock = FileLock(str(lock_path(target)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def cache_entries() -> list[tuple[str, Path]]:
    """(kind, folder) of every entry in the cache that carries (or should carry) a manifest."""
    root = cache_dir()
    found = [("teacher", p) for p in root.glob("teachers/*/*/*")]
    found += [("assistant stage", p) for p in root.glob("stages/*/*")]
    found += [("general phases", p) for p in root.glob("general/*")]
    found += [("teacher outputs", p) for p in root.glob("teacher_outputs/*")]
    found += [("tokenized data", p) for p in root.glob("tokenized/*/*")]
    found += [("student", p) for p in root.glob("students/**/seed*-*")]
    # a folder being written (.tmp) is not an entry yet; a leftover one is harmless and rebuilt
    return sorted((k, p) for k, p in found if p.is_dir() and ".tmp" not in p.name)
