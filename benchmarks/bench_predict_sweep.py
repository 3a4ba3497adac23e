"""Vectorised sweep vs. a per-configuration loop, same model, same 10,000 configurations.

    python benchmarks/bench_predict_sweep.py [--loop-sample N]

The loop calls costmodel.predict() once per configuration (what a user scripting LLM-Viewer
does); the sweep evaluates the whole grid in one numpy pass. Both are timed with warm-up and
repetitions; the median is reported with the spread. The loop is timed on a random sample of
configurations (default 1,000) and scaled to 10,000, which its per-call cost makes exact
enough; pass --loop-sample 10000 to time it all. It also prints what one predict() call takes
(median of 100 calls after 10 warm-ups; no per-op table is built unless ``.per_op`` is read), plain,
with a reducer (FastV: its schedule and its own cost) and with 256 output tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import costmodel as cm  # noqa: E402

GPUS = ["h100-sxm", "h100-pcie", "h200", "a100-80gb", "l40s"]
BATCHES = [1, 2, 4, 8]
KEEPS = np.arange(1, 577, dtype=np.int64)[np.linspace(0, 575, 500).astype(int)]  # 500 distinct budgets


def timed(fn, warmup=2, reps=7):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), min(samples), max(samples)


def one_call(n=100, **kw) -> tuple[float, float, float]:
    """Median, min, max seconds of one predict() call."""
    for _ in range(10):
        cm.predict("llava-1.5-7b", "h100-sxm", keep=64, **kw)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        cm.predict("llava-1.5-7b", "h100-sxm", keep=64, **kw)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), min(samples), max(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop-sample", type=int, default=1000)
    args = ap.parse_args()
    n = len(GPUS) * len(BATCHES) * len(KEEPS)
    sweep = lambda: cm.sweep("llava-1.5-7b", GPUS, keep=KEEPS, batch=BATCHES)  # noqa: E731
    med_s, lo_s, hi_s = timed(sweep)
    rng = np.random.default_rng(0)
    configs = [(GPUS[rng.integers(len(GPUS))], int(BATCHES[rng.integers(len(BATCHES))]),
                int(KEEPS[rng.integers(len(KEEPS))])) for _ in range(args.loop_sample)]

    def loop():
        for g, b, k in configs:
            cm.predict("llava-1.5-7b", g, keep=k, batch=b)

    med_l, lo_l, hi_l = timed(loop, warmup=1, reps=3)
    scale = n / len(configs)
    # the two must agree: spot-check the loop's last configuration against the sweep
    g, b, k = configs[-1]
    p = cm.predict("llava-1.5-7b", g, keep=k, batch=b)
    sw = sweep()
    idx = (GPUS.index(g), BATCHES.index(b), int(np.flatnonzero(KEEPS == k)[0]))
    assert abs(p.reduced.ttft_s - sw.reduced["ttft_s"][idx]) <= 1e-12 * p.reduced.ttft_s
    print(f"configurations: {n} ({len(GPUS)} GPUs x {len(BATCHES)} batch sizes x {len(KEEPS)} budgets)")
    print(f"sweep, one numpy pass:     median {med_s * 1e3:9.2f} ms  (min {lo_s * 1e3:.2f}, max {hi_s * 1e3:.2f}, n=7)")
    print(f"loop of predict() calls:   median {med_l * scale:9.2f} s   (min {lo_l * scale:.2f}, max {hi_l * scale:.2f}, "
          f"n=3; {len(configs)} calls timed, scaled x{scale:g})")
    print(f"speedup of the sweep: {med_l * scale / med_s:,.0f}x")
    import reducers

    for label, kw in (("plain", {}), ("reducer fastv", {"reducer": reducers.get("fastv")}),
                      ("256 output tokens", {"output_tokens": 256})):
        med, lo, hi = one_call(**kw)
        print(f"one predict() call, {label + ':':19s} median {med * 1e3:.3f} ms  (min {lo * 1e3:.3f}, max {hi * 1e3:.3f}, "
              "n=100)")


if __name__ == "__main__":
    main()
