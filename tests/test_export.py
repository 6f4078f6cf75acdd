"""``harness export``: a trained student as a plain Hugging Face folder that loads where only torch and
transformers are installed and scores its record's dev accuracy there; its model card; ONNX parity."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker

from conftest import REAL_GLUE, harness_cli, needs_glue

# fp32, so that the record's dev predictions and a plain fp32 transformers run agree on any CPU
NOKD = """\
student: {init: teacher_layers, layers: [0, 2]}
objective: [{term: ce}]
training: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_length: 40, max_train_examples: 96, seed: [1, 2]}
deepspeed: {precision: fp32}
speed: {seq_len: 32, throughput_batch: 4, iters: 2}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_card):
    """Two seeds of a no-KD run of the tiny BERT on SST-2 (no teacher to fine-tune: quick)."""
    tmp = tmp_path_factory.mktemp("export")
    recipe = tmp / "tiny-nokd.yaml"
    recipe.write_text(f"name: tiny-nokd\ntask: sst2\nteachers:\n  - card: {tiny_card}\n{NOKD}")
    res = harness_cli("run", str(recipe), "--results-dir", str(tmp / "results"), "--glue-dir", REAL_GLUE or "",
                      "--no-tables")
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp / "results" / "runs" / "tiny-nokd"


def only_torch_and_transformers(site: Path) -> Path:
    """A folder of links to torch, transformers and what they require (what `pip install torch
    transformers` would bring), and nothing else of this venv: no harness, no deepspeed."""
    seen, todo = {}, ["torch", "transformers"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            seen[key] = dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement not installed here
        for req in dist.requires or []:
            if ";" not in req or Marker(req.split(";", 1)[1]).evaluate({"extra": ""}):
                todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    site.mkdir()
    for dist in seen.values():
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    assert not (site / "harness").exists() and not (site / "deepspeed").exists()
    return site


CLEAN_SCRIPT = """
import csv, importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
assert importlib.util.find_spec("harness") is None and importlib.util.find_spec("deepspeed") is None
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
folder = sys.argv[2]
model, tok = AutoModelForSequenceClassification.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
with open(sys.argv[3], newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\\t", quoting=csv.QUOTE_NONE))
texts = [r["sentence"] for r in rows]
preds = []
with torch.inference_mode():
    for i in range(0, len(texts), 64):
        batch = tok(texts[i:i + 64], padding=True, truncation=True, return_tensors="pt")
        preds += model(**batch).logits.argmax(-1).tolist()
clf = pipeline("text-classification", model=folder, truncation=True)  # the way a user would, on a few
by_pipeline = [model.config.label2id[p["label"]] for p in clf(texts[:24])]
print(json.dumps({"preds": preds, "by_pipeline": by_pipeline, "labels": [int(r["label"]) for r in rows],
                  "dtype": str(model.dtype), "id2label": model.config.id2label}))
"""


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m harness ...`` in this process (export starts no DeepSpeed): (exit code, stdout, stderr)."""
    from harness.__main__ import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_glue
def test_exported_student_loads_without_the_harness_and_scores_its_record(trained, tmp_path, capsys):
    out = tmp_path / "student"
    code, stdout, err = cli(capsys, "export", str(trained / "seed1"), "--out", str(out), "--glue-dir", REAL_GLUE)
    assert code == 0, err
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert "this folder scores accuracy" in stdout

    site = only_torch_and_transformers(tmp_path / "site")
    script = tmp_path / "load.py"
    script.write_text(CLEAN_SCRIPT)
    # -I: no current folder, PYTHONPATH or user site; -S: no site-packages of this venv, only the links
    clean = subprocess.run([sys.executable, "-I", "-S", str(script), str(site), str(out),
                            str(Path(REAL_GLUE) / "SST-2" / "dev.tsv")], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    got = json.loads(clean.stdout.strip().splitlines()[-1])
    assert got["dtype"] == "torch.float32" and got["id2label"] == {"0": "negative", "1": "positive"}
    with open(trained / "seed1" / "predictions" / "dev.tsv", newline="") as f:
        recorded = [int(float(r["prediction"])) for r in csv.DictReader(f, delimiter="\t")]
    assert got["preds"] == recorded  # every dev prediction of the record, by plain transformers
    assert got["by_pipeline"] == recorded[:24]
    accuracy = sum(p == y for p, y in zip(got["preds"], got["labels"])) / len(got["labels"])
    m = json.loads((trained / "seed1" / "metrics.json").read_text())
    assert accuracy == pytest.approx(m["dev"]["dev"]["accuracy"], abs=1e-12)


@needs_glue
def test_card_of_a_cell_names_every_seed_and_onnx_matches(trained, tmp_path, capsys):
    out = tmp_path / "cell"
    code, stdout, err = cli(capsys, "export", str(trained), "--out", str(out), "--onnx", "--glue-dir", REAL_GLUE)
    assert code == 0, err
    records = {s: json.loads((trained / f"seed{s}" / "metrics.json").read_text()) for s in (1, 2)}
    best = max(records, key=lambda s: (records[s]["score"], -s))
    assert f"seed {best}" in stdout and "best of 2 seeds" in stdout

    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["datasets"] == ["nyu-mll/glue"] and meta["metrics"] == ["accuracy"]
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["config"] == "sst2" and result["dataset"]["split"] == "validation"
    values = {m["name"]: m["value"] for m in result["metrics"] if m["type"] == "accuracy"}
    assert values[f"dev accuracy (seed {best})"] == round(records[best]["dev"]["dev"]["accuracy"], 4)
    mean = (records[1]["dev"]["dev"]["accuracy"] + records[2]["dev"]["dev"]["accuracy"]) / 2
    assert values["dev accuracy, mean of 2 seeds"] == round(mean, 4)
    assert "license" not in meta and "unknown (its card is not in this checkout)" in card  # a test card: no license
    assert f"| {best} (exported) |" in card and "| mean ± std |" in card and "## Speed" in card
    assert "## Training budget" in card and "96 (of GLUE's 67,349)" in card

    parity = json.loads((out / "onnx" / "parity.json").read_text())["splits"]["dev"]
    assert parity["max_abs_logit_diff"] < 1e-4 and parity["same_predictions"] == parity["examples"] == 872
    assert parity["onnx"] == parity["pytorch"] == records[best]["dev"]["dev"]
    assert f"largest absolute logit difference {parity['max_abs_logit_diff']:.2e}" in stdout
    assert f"{parity['max_abs_logit_diff']:.2e}" in card


def test_export_says_what_is_wrong(trained, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "seed1"  # a record whose model is on another machine
    moved.parent.mkdir()
    (moved / "predictions").mkdir(parents=True)
    for name in ("metrics.json", "recipe.yaml", "env.json"):
        (moved / name).write_text((trained / "seed1" / name).read_text())
    m = json.loads((moved / "metrics.json").read_text())
    (moved / "metrics.json").write_text(json.dumps(m | {"checkpoint": str(tmp_path / "gone")}))
    code, _, err = cli(capsys, "export", str(moved), "--out", str(tmp_path / "x"), "--no-check")
    assert code == 2 and "is not on this machine (the record was trained elsewhere" in err
    code, _, err = cli(capsys, "export", str(tmp_path), "--out", str(tmp_path / "x"), "--no-check")
    assert code == 2 and "is not a run record folder" in err
    code, _, err = cli(capsys, "export", str(trained), "--seed", "7", "--out", str(tmp_path / "x"), "--no-check")
    assert code == 2 and "no seed 7 here; seeds: 1, 2" in err
    assert not (tmp_path / "x").exists()
