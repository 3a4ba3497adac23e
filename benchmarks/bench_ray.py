"""The same tiny sweep on the local backend and on Ray with 2 workers, side by side.

    python benchmarks/bench_ray.py [--images 6] [--reps 10]

Reports: local sweep wall time; Ray cluster start; Ray sweep wall time (2 actors, each loading
the model once, included); and Ray's per-task overhead, the median round trip of a no-op actor
call (100 calls after 5 warm-ups). The cluster is local, on the loopback interface.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from profiler.sweep import ProfileConfig, run_profile  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    cfg = dict(preset="tiny", device="cpu", reducers=["random", "spatial", "cluster-aggregate"], keeps=[8, 16],
               warmup=2, reps=args.reps, image_limit=args.images)
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    local = run_profile(ProfileConfig(**cfg), tmp / "local.jsonl", progress=False)
    t_local = time.perf_counter() - t0

    import ray

    from profiler.launchers import get_launcher
    from profiler.launchers.ray import connect
    t0 = time.perf_counter()
    connect(None, num_cpus=2)
    t_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    remote = run_profile(ProfileConfig(**cfg), tmp / "ray.jsonl", progress=False,
                         launcher=get_launcher("ray", workers=2))
    t_ray = time.perf_counter() - t0

    @ray.remote(num_cpus=1)
    class Echo:
        def ping(self):
            return None

    echo = Echo.remote()
    for _ in range(5):
        ray.get(echo.ping.remote())
    rt = []
    for _ in range(100):
        s = time.perf_counter()
        ray.get(echo.ping.remote())
        rt.append(time.perf_counter() - s)
    ray.shutdown()
    n = local["ok"]
    print(f"sweep: {n} conditions ({args.images} images x {n // args.images} conditions), tiny preset, this CPU")
    print(f"local backend:          {t_local:7.1f} s (model loaded once, in-process)")
    print(f"ray, cluster start:     {t_start:7.1f} s")
    print(f"ray, 2 workers sweep:   {t_ray:7.1f} s (includes each actor loading the model: {remote['ok']} conditions)")
    print(f"ray per-task overhead:  {statistics.median(rt) * 1e3:7.2f} ms median round trip of a no-op actor call "
          f"(p90 {sorted(rt)[89] * 1e3:.2f} ms)")
    print(f"ray / local wall time:  {t_ray / t_local:7.2f}x")


if __name__ == "__main__":
    main()
