import json
import os
import sys
from collections import Counter

import pytest
import torch

import reducers
from profiler.energy import ReplayEnergy, measure_energy
from rows import read_rows
from reducers import get as get_reducer
from profiler.sweep import ProfileConfig, SweepError, run_profile
from rows import identity as condition_key
from tests.conftest import ROOT, kill_midway_and_rerun

CFG = dict(preset="tiny", reducers=["random", "fastv"], keeps=[8, 32], warmup=1, reps=2, image_limit=2)


def test_sweep_writes_well_formed_rows_and_resumes(tiny, tmp_path):
    out = tmp_path / "run.jsonl"
    counts = run_profile(ProfileConfig(**CFG), out, lm=tiny, progress=False)
    assert counts == {"ok": 10, "failed": 0, "oom": 0, "skipped": 0}
    rows = list(read_rows(out))
    assert len(rows) == 10 and {r["reducer"] for r in rows} == {"none", "random", "fastv"}
    for r in rows:
        assert r["kind"] == "profile" and r["status"] == "ok" and r["gpu"] == "cpu"
        for phase in ("vision", "projector", "prefill", "request", "gpu"):
            assert r[f"{phase}_time_s"] > 0 and r["stats"][phase]["n"] == 2
        assert r["energy_j"] is None and "CPU" in r["energy_unavailable_reason"]
        assert r["peak_memory_bytes"] is None and r["peak_memory_bytes_unavailable_reason"]
        assert r["environment"]["torch"] == torch.__version__ and r["environment"]["dtype"] == "float32"
        assert r["llm_tokens"] == r["text_tokens"] + (64 if r["reducer"] in ("none", "fastv") else r["keep"])
        if r["reducer"] == "fastv":
            # timed inside the layer loop: the pruning layer's q/k and the selection, out of the prefill
            assert r["reducer_time_s"] > 0 and "inside the layer loop" in r["reducer_time_s_scope"]
        else:
            assert r["reducer_time_s"] >= 0
    before = out.read_text()
    again = run_profile(ProfileConfig(**CFG), out, lm=tiny, progress=False)
    assert again["skipped"] == 10 and again["ok"] == 0 and out.read_text() == before


class Boom(reducers.Reducer):
    name = "boom"

    def _reduce(self, features, keep, *, generator=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_an_oom_becomes_a_row_and_the_sweep_goes_on(tiny, tmp_path):
    out = tmp_path / "run.jsonl"
    factory = lambda name, **kw: Boom() if name == "boom" else get_reducer(name, **kw)  # noqa: E731
    cfg = ProfileConfig(**{**CFG, "reducers": ["boom", "random"], "keeps": [8]})
    counts = run_profile(cfg, out, lm=tiny, reducer_factory=factory, progress=False)
    rows = list(read_rows(out))
    assert counts["oom"] == 2 and counts["ok"] == 4
    boom = [r for r in rows if r["reducer"] == "boom"]
    assert all(r["status"] == "oom" and "out of memory" in r["error"] for r in boom)


def test_sigkill_midway_then_rerun_gives_every_condition_once(tmp_path):
    out = tmp_path / "run.jsonl"
    cmd = [sys.executable, "-m", "vtc", "profile", "--preset", "tiny", "--reducers", "random,spatial",
           "--keep", "8,16", "--warmup", "1", "--reps", "10", "--image-limit", "4", "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed_midway, first, done = kill_midway_and_rerun(cmd, out, env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [r for r in read_rows(out) if r["status"] == "ok"]
    keys = Counter(condition_key(r) for r in rows)
    n_images = 4
    assert len(keys) == n_images * (1 + 2 * 2) and set(keys.values()) == {1}
    assert killed_midway and 0 < first < len(keys)  # the kill really landed mid-sweep


def test_replay_energy_yields_the_traces_energy():
    t = [i * 0.1 for i in range(101)]
    trace = {"time_s": t, "energy_j": [300.0 * x for x in t]}  # constant 300 W
    clock = {"now": 0.0}

    def tick():  # each call of the work takes 50 ms of (fake) time
        clock["now"] += 0.05

    src = ReplayEnergy(trace, clock=lambda: clock["now"])
    res = measure_energy(tick, src, sync=lambda: None, min_window_s=2.0)
    assert res["energy_calls"] == 40 and res["energy_j"] == pytest.approx(300 * 0.05)
    assert res["power_w"] == pytest.approx(300)
    flat = ReplayEnergy({"time_s": [0, 1, 100], "energy_j": [5, 5, 5]}, clock=lambda: clock["now"])
    bad = measure_energy(tick, flat, sync=lambda: None, min_window_s=0.1)
    assert bad["energy_j"] is None and "non-positive delta" in bad["energy_unavailable_reason"]


def test_sweep_with_a_replayed_trace_records_energy(tiny, tmp_path):
    trace = tmp_path / "trace.json"
    t = [i * 0.5 for i in range(2000)]
    trace.write_text(json.dumps({"time_s": t, "energy_j": [250.0 * x for x in t]}))
    out = tmp_path / "run.jsonl"
    cfg = ProfileConfig(**{**CFG, "reducers": ["random"], "keeps": [8], "image_limit": 1},
                        energy_replay=str(trace), energy_window_s=0.2)
    run_profile(cfg, out, lm=tiny, progress=False)
    for r in read_rows(out):
        assert r["energy_source"] == "replay" and r["energy_j"] > 0
        assert r["power_w"] == pytest.approx(250, rel=1e-6)


def test_no_nvml_means_null_energy_with_a_reason(monkeypatch):
    import builtins

    from profiler.energy import open_source
    real_import = builtins.__import__

    def no_pynvml(name, *a, **k):
        if name == "pynvml":
            raise ImportError("no pynvml")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    src = open_source(torch.device("cuda", 0))
    assert not src.available and "nvidia-ml-py is not installed" in src.unavailable_reason
    res = measure_energy(lambda: None, src, sync=lambda: None)
    assert res == {"energy_j": None, "energy_unavailable_reason": src.unavailable_reason}


def test_bad_sweeps_fail_before_running(tiny, tmp_path):
    out = tmp_path / "x.jsonl"
    with pytest.raises(SweepError, match="keep = 65 is out of range for llava-tiny; allowed: 1..64"):
        run_profile(ProfileConfig(**{**CFG, "keeps": [8, 65]}), out, lm=tiny, progress=False)
    with pytest.raises(reducers.ReducerError, match="unknown reducer 'randm'; closest: random"):
        run_profile(ProfileConfig(**{**CFG, "reducers": ["randm"]}), out, lm=tiny, progress=False)
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    from vlm.images import ImageError
    with pytest.raises(ImageError, match="cannot read .*broken.png.* as an image"):
        run_profile(ProfileConfig(**{**CFG, "images": str(folder)}), out, lm=tiny, progress=False)
    assert not out.exists()


def test_ctrl_c_keeps_finished_conditions_and_says_how_to_resume(tmp_path):
    import signal
    import subprocess
    import time

    out = tmp_path / "run.jsonl"
    cmd = [sys.executable, "-m", "vtc", "profile", "--preset", "tiny", "--reducers", "random,spatial",
           "--keep", "8,16", "--warmup", "1", "--reps", "30", "--image-limit", "3", "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # a child inherits an ignored SIGINT (an earlier test in the full suite leaves it ignored): restore it,
    # as a terminal gives it to a command a user runs
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (out.exists() and out.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert f"every finished condition is saved in {out}" in err and "run the same command again to resume" in err
    before = len(list(read_rows(out)))
    assert 2 <= before < 15  # rows are written per condition, not per image
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"{before} already done" in done.stderr
    assert len(list(read_rows(out))) == 15
