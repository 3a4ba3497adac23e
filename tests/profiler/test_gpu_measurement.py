"""What the GPU measurement relies on, checked on the CPU: batched profiling, no autograd in
timed runs, eager-vs-graph prefill rows, the reducer benchmark's rows, the calibration with a
host floor, and the shipped H100 calibration found by GPU name."""

import json
import subprocess
import sys

import pytest
import torch

import costmodel as cm
from profiler.graph_timing import time_prefill
from rows import read_rows
from profiler.sweep import ProfileConfig, SweepError, run_profile
from costmodel.validation import validate
from reports.analysis import conditions, net_gain
from tests.conftest import ROOT

CFG = dict(preset="tiny", reducers=["random"], keeps=[8], warmup=0, reps=1, image_limit=1)


def test_batched_profile_rows_and_identity(tiny, tmp_path):
    out = tmp_path / "run.jsonl"
    run_profile(ProfileConfig(**CFG, batch=3), out, lm=tiny, progress=False)
    rows = list(read_rows(out))
    assert {r["batch"] for r in rows} == {3} and len(rows) == 2
    # another batch size is another condition: nothing is skipped
    again = run_profile(ProfileConfig(**CFG, batch=1), out, lm=tiny, progress=False)
    assert again["skipped"] == 0 and again["ok"] == 2
    # reports never mix batch sizes: each batch has its own baseline
    gains = net_gain(conditions(list(read_rows(out))))
    assert sorted((g["batch"], g["reducer"]) for g in gains) == [(1, "none"), (1, "random"), (3, "none"), (3, "random")]
    with pytest.raises(SweepError, match="batch = 0 is not allowed; use an integer in 1..1024"):
        run_profile(ProfileConfig(**CFG, batch=0), out, lm=tiny, progress=False)


def test_timed_runs_record_no_autograd_graph(tiny, tmp_path, monkeypatch):
    from vlm import Runner

    seen = []
    original = Runner.prefill

    def spy(self, *a, **k):
        out = original(self, *a, **k)
        seen.append((torch.is_grad_enabled(), out.logits.requires_grad))
        return out
    monkeypatch.setattr(Runner, "prefill", spy)
    run_profile(ProfileConfig(**CFG), tmp_path / "run.jsonl", lm=tiny, progress=False)
    assert seen and all(g is False and rg is False for g, rg in seen)


def test_graph_timing_rows_on_cpu_say_why_there_is_no_graph(tiny):
    rows = time_prefill(tiny, keeps=[64, 16], batches=[1, 2], warmup=0, reps=2)
    assert [(r["part"], r["batch"], r["keep"]) for r in rows] == [
        ("vision", 1, None), ("llm-prefill", 1, 64), ("llm-prefill", 1, 16),
        ("vision", 2, None), ("llm-prefill", 2, 64), ("llm-prefill", 2, 16)]
    for r in rows:
        assert r["kind"] == "graph-timing" and r["status"] == "ok" and r["eager_time_s"] > 0
        assert r["graph_time_s"] is None and "need a CUDA device" in r["graph_time_s_unavailable_reason"]
    assert rows[1]["tokens"] == 64 + 64 and rows[2]["tokens"] == 16 + 64


def test_reducer_benchmark_rows_count_ops_and_syncs(tmp_path):
    out = tmp_path / "reducers.jsonl"
    p = subprocess.run([sys.executable, "benchmarks/bench_reducers.py", "--reps", "1", "--keeps", "64,128",
                        "--reducers", "random,visionzip", "--no-sklearn", "--jsonl", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["reducer"], r["keep"]) for r in rows] == [("random", 64), ("random", 128), ("visionzip", 64),
                                                         ("visionzip", 128)]
    for r in rows:
        assert r["kind"] == "reducer-timing" and r["eager_time_s"] > 0 and r["dispatched_ops"] > 0
        assert r["host_syncs"] >= 1  # the input check's one sync, at least
    bad = subprocess.run([sys.executable, "benchmarks/bench_reducers.py", "--keeps", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--keeps '0': every budget must be in 1..576" in bad.stderr


def _graph_rows(host_per_layer=0.0009, scale=2.0, overhead=0.003):
    """graph-timing rows as an H100 would give them: graph = overhead + scale x compute time,
    eager = max(host floor, graph)."""
    rows = []
    for batch in (1, 16):
        for keep in (576, 64, 128, 192):
            sw = cm.sweep("llava-1.5-7b", ["h100-sxm"], keep=keep, batch=batch, text_tokens=64,
                          options=cm.Options(flash_attention=True))
            tc = float(sw.components["reduced"]["compute_time_s"][0, 0, 0])
            graph = overhead + scale * tc
            rows.append({"kind": "graph-timing", "status": "ok", "part": "llm-prefill", "model": "preset:llava-1.5-7b",
                         "spec": "llava-1.5-7b", "gpu": "NVIDIA H100 80GB HBM3", "batch": batch, "keep": keep,
                         "visual_tokens": 576, "tokens": keep + 64, "text_tokens": 64, "dtype": "bfloat16",
                         "attn_implementation": "sdpa", "graph_time_s": graph,
                         "eager_time_s": max(host_per_layer * 32, graph)})
    return rows


def test_calibration_fits_the_host_floor_and_predict_applies_it(tmp_path):
    run = tmp_path / "graphs.jsonl"
    run.write_text("".join(json.dumps(r) + "\n" for r in _graph_rows()))
    reports, saved = validate(list(read_rows(run)), calibration_out=str(tmp_path / "cal.json"))
    cal = reports[0].calibration
    assert cal.host_s_per_layer == pytest.approx(0.0009, rel=0.02)
    assert cal.compute_scale == pytest.approx(2.0, rel=0.05) and cal.error["after_median_abs_rel"] < 0.02
    assert cal.error["graph_points"] == 8 and cal.error["eager_points"] == 8
    eager = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, calibration=cal)
    graphs = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, calibration=cal, options=cm.Options(cuda_graphs=True))
    assert eager.reduced.time_s == pytest.approx(0.0009 * 32, rel=0.02)  # the floor decides at batch 1
    assert graphs.reduced.time_s < eager.reduced.time_s and graphs.savings["time_s"] > 0.3
    assert eager.savings["time_s"] == pytest.approx(0.0, abs=0.02)


def test_the_shipped_h100_calibration_is_found_by_gpu_name(capsys):
    from vtc.cli import main

    assert "h100-sxm" in cm.shipped_calibrations()
    cal = cm.Calibration.load("h100-sxm")
    assert cal.gpu == "h100-sxm" and cal.n > 0 and cal.host_s_per_layer > 0
    assert main(["predict", "--keep", "64", "--calibration", "h100-sxm", "--cuda-graphs", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert any("no host floor" in a for a in pred["assumptions"])
