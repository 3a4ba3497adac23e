"""The Ray backend on a local cluster of this CPU (2 CPUs, tiny preset)."""

import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from rows import read_rows
import rows as R
from profiler.launchers import LauncherError, get_launcher
from profiler.sweep import ProfileConfig, run_profile
from tests.conftest import ROOT, kill_midway_and_rerun

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")

CFG = dict(preset="tiny", device="cpu", reducers=["random", "spatial"], keeps=[8, 16], warmup=1, reps=3,
           image_limit=3)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node started like a user would (`ray start --head`), stopped afterwards."""
    port = 6391
    mark = tmp_path_factory.mktemp("ray") / "killed"  # workers inherit this from the head node
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT), "VTC_TEST_KILL_MARK": str(mark)}
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1"], check=True, env=env,
                   capture_output=True, timeout=120)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    yield f"127.0.0.1:{port}", mark
    if ray.is_initialized():
        ray.shutdown()
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], env=env, capture_output=True,
                   timeout=120)


def keys(path):
    return Counter(R.identity(r) for r in read_rows(path) if r["status"] == "ok")


def test_ray_gives_the_same_rows_as_local_and_survives_a_dead_worker(cluster, tmp_path):
    address, mark = cluster
    local = tmp_path / "local.jsonl"
    run_profile(ProfileConfig(**CFG), local, progress=False)
    remote = tmp_path / "ray.jsonl"
    counts = run_profile(ProfileConfig(**CFG, reducer_factory="tests.profiler.faults.die_once_factory"), remote,
                         progress=False, launcher=get_launcher("ray", address=address, workers=2))
    assert mark.exists()  # a worker really died mid-task ...
    assert counts["ok"] == 15 and counts["failed"] == 0  # ... and its task was retried
    assert keys(remote) == keys(local) and set(keys(remote).values()) == {1}
    rows = list(read_rows(remote))
    assert all(r["node"]["ray_node_id"] and r["gpu"] == "cpu" for r in rows)
    again = run_profile(ProfileConfig(**CFG), remote, progress=False, launcher=get_launcher("ray", address=address,
                                                                                             workers=2))
    assert again["skipped"] == 15 and again["ok"] == 0


def test_driver_killed_then_rerun_resumes_without_duplicates(cluster, tmp_path):
    out = tmp_path / "run.jsonl"
    cmd = [sys.executable, "-m", "vtc", "profile", "--backend", "ray", "--address", cluster[0], "--workers", "1",
           "--preset", "tiny", "--device", "cpu", "--reducers", "random", "--keep", "8", "--warmup", "1",
           "--reps", "20", "--image-limit", "4", "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    midway, first, done = kill_midway_and_rerun(cmd, out, env)
    assert done.returncode == 0, done.stderr[-2000:]
    k = keys(out)
    assert len(k) == 4 * 2 and set(k.values()) == {1}
    assert midway and 0 < first < 8


def test_unreachable_address_fails_fast():
    from profiler.launchers.ray import check_reachable
    t0 = time.time()
    with pytest.raises(LauncherError, match="cannot reach a Ray cluster at 127.0.0.1:1"):
        check_reachable("127.0.0.1:1")
    assert time.time() - t0 < 10


def test_a_gpu_preset_on_a_cluster_without_gpu_is_refused(cluster, tmp_path):
    with pytest.raises(LauncherError, match="has no GPU .* needs one; refused before any task started"):
        run_profile(ProfileConfig(**{**CFG, "preset": "llava-1.5-7b"}), tmp_path / "x.jsonl",
                    launcher=get_launcher("ray", address=cluster[0], needs_gpu="preset llava-1.5-7b"))
    assert not (tmp_path / "x.jsonl").exists()


def test_eval_on_ray_gives_the_same_rows_as_local(cluster, tmp_path):
    import json

    from PIL import Image

    from evaluation.tasks import load_benchmark
    from evaluation.harness import run_eval
    from vlm.loading import build_preset
    lines = []
    for i in range(6):
        Image.new("RGB", (64, 64), (30 * i, 90, 160)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"id": f"s{i}", "image": f"{i}.png", "question": "Color?", "answers": ["blue"]}))
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
    samples = load_benchmark("jsonl", str(tmp_path / "b.jsonl"))
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    run_eval(build_preset("tiny"), "jsonl", samples, "random", 16, local, progress=False)
    run_eval(None, "jsonl", samples, "random", 16, remote, progress=False,
             launcher=get_launcher("ray", address=cluster[0], workers=2),
             config={"preset": "tiny", "device": "cpu", "seed": 0})
    pick = lambda p: {(r["sample_id"], r["prediction"], r["score"]) for r in read_rows(p) if not r.get("summary")}  # noqa: E731
    assert pick(local) == pick(remote) and len(pick(remote)) == 6
