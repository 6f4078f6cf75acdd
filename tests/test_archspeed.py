"""Speed per architecture (harness.archspeed): identity of an architecture, the child-process measurement's
structure (never its magnitudes), the consistency check and speed-ups on made-up results."""
from __future__ import annotations

import os

import pytest
import torch

from harness import archspeed
from harness.archspeed import arch_key, arch_label, measure
from harness.archspeed_result import combine_takes, find_row, inconsistent, marks, speedups
from harness.archspeed_worker import inputs, time_passes
from harness.precision import cpu_has_native_bf16

TINY = {"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 1000, "num_hidden_layers": 1}
DEV = [5, 9, 17, 40, 60]


def tiny(**fields) -> dict:
    return TINY | fields


def expected_pairs() -> list[tuple[str, str]]:
    pairs = [("cpu", "float32")] + ([("cpu", "bfloat16")] if cpu_has_native_bf16() else [])
    if torch.cuda.is_available():
        pairs += ([("cuda", "bfloat16")] if torch.cuda.is_bf16_supported() else []) + [("cuda", "float32")]
    return pairs


# ---- what an architecture is -------------------------------------------------------------------------------

def test_arch_key_ignores_what_does_not_change_compute():
    base = arch_key(tiny())
    same = tiny(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.0, initializer_range=0.5,
                layer_norm_eps=1e-5, _name_or_path="somewhere/else", architectures=["BertForSequenceClassification"],
                transformers_version="4.45.0", pad_token_id=3, position_embedding_type="absolute",
                id2label={"0": "neg", "1": "pos"}, hidden_act="gelu", max_position_embeddings=512)
    assert arch_key(same) == base == arch_key(tiny())  # stable, and defaults stated or omitted agree
    assert arch_key(tiny(id2label={"0": "a", "1": "b", "2": "c"})) == arch_key(tiny(num_labels=3))


@pytest.mark.parametrize("change", [{"num_hidden_layers": 4}, {"hidden_size": 64}, {"num_attention_heads": 4},
                                    {"intermediate_size": 128}, {"vocab_size": 1001}, {"num_labels": 3},
                                    {"hidden_act": "relu"}, {"model_type": "roberta"}])
def test_arch_key_sees_what_changes_compute(change):
    assert arch_key(tiny(**change)) != arch_key(tiny())


def test_arch_key_sees_mobilebert_bottlenecks():
    mobile = {"model_type": "mobilebert", "num_hidden_layers": 2, "vocab_size": 1000}
    assert arch_key(mobile | {"embedding_size": 64}) != arch_key(mobile | {"embedding_size": 128})
    assert arch_key(mobile | {"intra_bottleneck_size": 64}) != arch_key(mobile)


def test_arch_label():
    assert arch_label(tiny(num_hidden_layers=3, hidden_size=384, num_attention_heads=12)) == "bert 3L-384"
    assert arch_label({"model_type": "mpnet"}) == "mpnet 12L-768"
    assert arch_label({"model_type": "distilbert"}) == "distilbert 6L-768"
    assert arch_key(tiny(num_hidden_layers=3)).startswith("bert-3L-32-")


# ---- inputs: dynamic padding -----------------------------------------------------------------------------

def test_dev_lengths_pad_each_batch_to_its_longest():
    batches = inputs(1000, 8, DEV, 128, 20, seed=0)
    widths = set()
    for ids, mask in batches:
        real = mask.sum(1)
        assert set(real.tolist()) <= set(DEV)
        assert ids.shape == mask.shape == (8, int(real.max()))
        assert all(mask[i, :n].all() and not mask[i, n:].any() for i, n in enumerate(real.tolist()))
        widths.add(ids.shape[1])
    assert len(widths) > 1  # the padded width follows each batch's draw
    again = inputs(1000, 8, DEV, 128, 20, seed=0)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))  # a fixed seed: the same draws
    assert {ids.shape for ids, _ in inputs(1000, 4, None, 128, 3, seed=0)} == {(4, 128)}



def test_every_timed_width_is_warmed_up_untimed_first():
    calls = []

    class Shapes(torch.nn.Module):  # stands for a model: notes the width of each pass
        def forward(self, input_ids, attention_mask):
            calls.append(input_ids.shape[1])

    batches = inputs(1000, 1, DEV, 128, 2 + 12, seed=0)
    times = time_passes(Shapes(), batches, 2, "cpu", "float32")
    timed = [ids.shape[1] for ids, _ in batches[2:]]
    assert len(times) == 12 and calls[-12:] == timed  # one time per timed batch, in their order
    untimed = calls[:-12]
    assert untimed[:2] == [ids.shape[1] for ids, _ in batches[:2]]  # the warm-up batches come first
    extra = untimed[2:]
    assert set(timed) <= set(untimed) and len(set(timed)) > 2  # every timed width ran before the timing
    assert len(extra) == len(set(extra)) and not set(extra) & set(untimed[:2])  # each further width once

# ---- the measurement, in child processes -----------------------------------------------------------------

def test_measure_in_child_processes_structure():
    configs = {"a": tiny(), "a_again": tiny(hidden_dropout_prob=0.0, _name_or_path="x"),
               "b": tiny(num_hidden_layers=2, hidden_size=48)}  # not layer-only twins: no re-takes here
    result = measure(configs, DEV, passes=3, warmup=2, rounds=2)
    archs = result["archs"]
    assert sorted(entry["names"] for entry in archs.values()) == [["a", "a_again"], ["b"]]
    assert result["machine"]["threads"] == archspeed.default_threads()
    assert result["settings"] == {"passes": 3, "warmup": 2, "length": 128, "batches": [1, 32], "seed": 0,
                                  "warm_every_width": True}
    pids = {take["pid"] for entry in archs.values() for take in entry["takes"]}
    assert os.getpid() not in pids and len(pids) == 4  # a fresh process per architecture and round
    want = {(d, t, b, k) for d, t in expected_pairs() for b in (1, 32) for k in ("fixed", "dev")}
    for entry in archs.values():
        assert len(entry["takes"]) == 2
        assert entry["threads"] == result["machine"]["threads"] and entry["omp_threads"] == str(entry["threads"])
        assert len(entry["cpus"]) == entry["threads"] and entry["interop_threads"] == 1  # pinned, one op at a time
        assert {(r["device"], r["dtype"], r["batch"], r["lengths"]) for r in entry["rows"]} == want
        # memory: the largest batch at the fixed length, per precision, each in a process of its own
        assert {(m["device"], m["dtype"], m["batch"], m["lengths"]) for m in entry["memory"]} == \
            {(d, t, 32, "fixed") for d, t in expected_pairs()}
        assert all(m["peak_of"] in result["peak_of"] and m["peak_mib"] > 0 for m in entry["memory"])
        for r in entry["rows"]:
            assert r["passes"] == 6 and r["takes"] == 2  # both rounds' passes pooled
            assert 0 < r["p25_ms"] <= r["median_ms"] <= r["p75_ms"]
            # examples over the time they took, not batch / median
            assert r["throughput"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"], rel=1e-3)
            assert "peak_mib" not in r  # a take's own peak depends on the rows before it
            if r["lengths"] == "fixed":
                assert r["mean_len"] == 128
            else:
                assert min(DEV) <= r["mean_len"] <= max(DEV)
        b1, b32 = find_row(entry, lengths="dev"), find_row(entry, batch=32, lengths="dev")
        assert b32["mean_len"] > b1["mean_len"]  # 32 draws padded to their longest
    small, large = (archs[arch_key(configs[n])] for n in ("a", "b"))
    assert small["params"] < large["params"]


def test_measure_default_passes_and_stated_threads():
    result = measure({"m": tiny()}, threads=1)
    (entry,) = result["archs"].values()
    assert result["settings"]["passes"] == 30 and result["machine"]["threads"] == 1
    assert entry["threads"] == 1 and entry["omp_threads"] == "1" and len(entry["takes"]) == 3  # 3 rounds
    assert {r["lengths"] for r in entry["rows"]} == {"fixed"}
    assert all(r["passes"] == 90 and r["p25_ms"] <= r["median_ms"] <= r["p75_ms"] for r in entry["rows"])


def test_a_failing_child_is_an_error():
    with pytest.raises(RuntimeError, match="speed worker failed"):
        measure({"m": tiny(max_position_embeddings=64)}, passes=2)  # 128 tokens do not fit 64 positions


def test_dev_lengths_are_checked_before_any_child():
    with pytest.raises(ValueError, match="dev lengths"):
        measure({"m": tiny()}, [], passes=2)
    with pytest.raises(ValueError, match="dev lengths"):
        measure({"m": tiny()}, {"sst2": [12, 0]}, passes=2)


# ---- consistency and speed-ups: pure functions on made-up results -------------------------------------------

def made_row(ms: float, batch: int = 1, device: str = "cpu", dtype: str = "float32", lengths: str = "fixed") -> dict:
    return {"device": device, "dtype": dtype, "batch": batch, "lengths": lengths, "median_ms": ms}


def worker_out(job: dict, rows: list[dict], params: int = 1) -> dict:
    """What a child process prints, for a made-up measurement."""
    return {"pid": 1, "threads": job["threads"], "omp_threads": str(job["threads"]), "interop_threads": 1,
            "cpus": list(range(job["threads"])), "params": params,
            "rows": [{"peak_mib": 1.0, "peak_of": "rss_row"} | r for r in rows]}


def made_arch(layers: int, ms: float, hidden: int = 32, ms32: float = 100.0) -> dict:
    return {"fields": {"model_type": "bert", "num_hidden_layers": layers, "hidden_size": hidden},
            "rows": [made_row(ms), made_row(ms32, batch=32)]}


def test_inconsistent_pairs_layer_only_twins():
    result = {"archs": {"s": made_arch(3, 9.0), "d": made_arch(6, 8.0), "wide": made_arch(1, 50.0, hidden=64),
                        "ok": made_arch(12, 15.0)}}
    assert inconsistent(result) == [("s", "d")]  # "wide" differs in width too; "ok" is slower and deeper
    result["archs"]["s"]["rows"][0]["median_ms"] = 7.0
    assert inconsistent(result) == []
    result["archs"]["ok"]["rows"][0]["median_ms"] = 1.0
    assert sorted(inconsistent(result)) == [("d", "ok"), ("s", "ok")]
    # any row kind both have counts: here batch 32, where the shallow one is slower
    result = {"archs": {"s": made_arch(3, 5.0, ms32=120.0), "d": made_arch(6, 8.0, ms32=110.0)}}
    assert inconsistent(result) == [("s", "d")]


def test_a_deeper_twin_more_than_its_depth_ratio_slower_is_inconsistent():
    # a pass costs a fixed part plus a part per layer (more once weights outgrow the cache): 6 layers may
    # take up to 2 x 1.5 times as long as 3
    result = {"archs": {"s": made_arch(3, 5.0, ms32=100.0), "d": made_arch(6, 14.5, ms32=290.0)}}
    assert inconsistent(result) == []
    result["archs"]["d"]["rows"][1]["median_ms"] = 310.0  # 3.1 times the 3-layer one at batch 32
    assert inconsistent(result) == [("s", "d")]


def test_takes_combine_row_by_row_as_medians():
    takes = [[made_row(ms) | {"p25_ms": ms, "p75_ms": ms, "throughput": 1 / ms, "peak_mib": 10.0}
              for ms in (m, 2 * m)] for m in (1.0, 9.0, 2.0)]
    for rows in takes:
        rows[1]["batch"] = 32
    combined = combine_takes(takes)
    assert [r["median_ms"] for r in combined] == [2.0, 4.0] and [r["takes"] for r in combined] == [3, 3]
    assert combined[0]["throughput"] == 0.5 and combine_takes(takes[:1])[0]["median_ms"] == 1.0


def test_takes_pool_their_passes():
    takes = [[made_row(0.0) | {"times_ms": t}] for t in ([1.0, 2.0, 3.0], [4.0, 5.0], [100.0])]
    (row,) = combine_takes(takes)
    assert row["passes"] == 6 and row["takes"] == 3 and row["median_ms"] == 3.5  # of 1 2 3 4 5 100
    assert (row["p25_ms"], row["p75_ms"]) == (2.25, 4.75) and row["mean_ms"] == pytest.approx(115 / 6, abs=1e-4)
    assert row["throughput"] == pytest.approx(6 * 1000 / 115, abs=1e-4) and "times_ms" not in row


def test_speedups_from_one_result():
    result = {"archs": {"ref": made_arch(6, 10.0, ms32=200.0), "half": made_arch(3, 5.0, ms32=50.0)}}
    assert speedups(result, "ref") == {"ref": 1.0, "half": 2.0}
    assert speedups(result, "ref", batch=32) == {"ref": 1.0, "half": 4.0}
    with pytest.raises(KeyError):
        speedups(result, "ref", dtype="bfloat16")


def fake_worker(slow_shallow_takes: int):
    """A stand-in for the child process: layer-only twins come out inconsistent for the first
    ``slow_shallow_takes`` takes of the shallow one, consistent after."""
    taken: dict[tuple[int, int], int] = {}

    def run(job: dict) -> dict:
        layers, hidden = job["config"]["num_hidden_layers"], job["config"]["hidden_size"]
        taken[layers, hidden] = taken.setdefault((layers, hidden), 0) + 1
        shallow_twin = (layers, hidden) == (1, 32)
        ms = 100.0 if shallow_twin and taken[layers, hidden] <= slow_shallow_takes else float(layers)
        return worker_out(job, [made_row(ms)], params=layers)
    return run


# three rounds; one slow take of three is outvoted by the median; a shallow twin slow every time stays
# marked after two more rounds of every architecture
@pytest.mark.parametrize("slow_takes, takes, marked", [(0, 3, False), (1, 3, False), (9, 5, True)])
def test_measure_retakes_then_marks_inconsistent(monkeypatch, slow_takes, takes, marked):
    monkeypatch.setattr(archspeed, "run_worker", fake_worker(slow_takes))
    result = measure({"s": tiny(), "d": tiny(num_hidden_layers=4), "other": tiny(hidden_size=64)}, passes=2)
    s, d, other = (result["archs"][arch_key(c)] for c in (tiny(), tiny(num_hidden_layers=4), tiny(hidden_size=64)))
    assert (len(s["takes"]), len(d["takes"]), len(other["takes"])) == (takes, takes, takes)
    assert find_row(s)["median_ms"] == (100.0 if marked else 1.0)
    flagged = marks(result)
    assert (arch_key(tiny()) in flagged) is marked and arch_key(tiny(hidden_size=64)) not in flagged
    if marked:
        assert flagged[arch_key(tiny())] == [arch_key(tiny(num_hidden_layers=4))]
        assert flagged[arch_key(tiny(num_hidden_layers=4))] == [arch_key(tiny())]


def test_measure_sends_each_child_its_job(monkeypatch):
    jobs = []

    def run(job: dict) -> dict:
        jobs.append(job)
        return worker_out(job, [made_row(1.0)])
    monkeypatch.setattr(archspeed, "run_worker", run)
    configs = {"x": tiny(hidden_dropout_prob=0.5), "y": tiny()}
    result = measure(configs, {"sst2": [3, 4], "mrpc": [50]}, threads=3, passes=7, length=64, rounds=1)
    job, memory = jobs  # one architecture: one child for the timing, one for the memory row
    assert memory["only"] == [["cpu", "float32", 32, "fixed"]] and (memory["passes"], memory["warmup"]) == (2, 1)
    assert list(result["archs"].values())[0]["memory"] == [{"device": "cpu", "dtype": "float32", "batch": 1,
                                                           "lengths": "fixed", "peak_mib": 1.0, "peak_of": "rss_row"}]
    assert job["dev_lengths"] == {"dev:sst2": [3, 4], "dev:mrpc": [50]}
    assert (job["threads"], job["passes"], job["length"], job["batches"]) == (3, 7, 64, [1, 32])
    assert "hidden_dropout_prob" not in job["config"] and job["config"]["num_hidden_layers"] == 1
    assert list(result["archs"].values())[0]["names"] == ["x", "y"]
