"""Time every reducer on [1, 576, 4096] -> 64 on this machine, and Cluster & Aggregate against
scikit-learn's KMeans(init="k-means++", n_init=1) plus a mean per cluster, on the same data.

    python benchmarks/bench_reducers.py [--reps 15] [--device cpu|cuda]

Protocol: 3 warm-up calls, then --reps timed calls (perf_counter after a device sync); median,
interquartile range. Data: LLaVA-1.5-7B-shaped synthetic features (576 tokens, width 4096)
drawn around 40 latent "parts" with noise, so K-means has structure to find; random-weight
model features would have none. Each seed gives new data; the sklearn comparison runs 5 seeds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.cluster import KMeans

import reducers


def features(seed: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    parts = torch.randn(40, 4096, generator=g)
    which = torch.randint(40, (576,), generator=g)
    x = parts[which] + 0.7 * torch.randn(576, 4096, generator=g)
    return x.unsqueeze(0).to(device)


def signals(seed: int, device):
    g = torch.Generator().manual_seed(seed + 1000)
    d = 4096
    layer0 = {"q_weight": torch.randn(d, d, generator=g) / d ** 0.5, "k_weight": torch.randn(d, d, generator=g) / d ** 0.5,
              "norm_weight": torch.ones(d), "norm_eps": 1e-5, "num_heads": 32, "num_kv_heads": 32}
    return {"cls_attention": torch.rand(1, 576, generator=g).softmax(-1).to(device),
            "vision_keys": torch.randn(1, 576, 1024, generator=g).to(device),
            "text_embeds": torch.randn(1, 40, d, generator=g).to(device),
            "layer0": {k: v.to(device) if torch.is_tensor(v) else v for k, v in layer0.items()}}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup=3, reps=15):
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    q = np.percentile(out, [25, 50, 75])
    return q[1], q[2] - q[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    x, sig = features(0, device), signals(0, device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; [1, 576, 4096] -> 64")
    print(f"{'reducer':28s} {'median (ms)':>12s} {'IQR (ms)':>10s}")
    for name in reducers.available():
        r = reducers.get(name)
        s = {k: v for k, v in sig.items() if k in r.signals + r.optional_signals and k != "saliency"}
        gen = torch.Generator(device=device)
        med, iqr = timed(lambda: r.reduce(x, 64, generator=gen.manual_seed(0), **s), device, reps=args.reps)
        print(f"{name:28s} {med * 1e3:12.2f} {iqr * 1e3:10.2f}")

    print("\nCluster & Aggregate vs scikit-learn KMeans(k-means++, n_init=1) + mean, same data, 5 seeds")
    ca = reducers.get("cluster-aggregate")
    t_ratio, i_ratio = [], []
    for seed in range(5):
        xs = features(seed, device)
        xn = xs[0].cpu().numpy()
        med_t, _ = timed(lambda: ca.reduce(xs, 64, generator=torch.Generator(device=device).manual_seed(seed)), device,
                         warmup=1, reps=5)

        def sk():
            km = KMeans(64, init="k-means++", n_init=1, random_state=seed).fit(xn)
            means = np.stack([xn[km.labels_ == c].mean(0) for c in range(64)])
            return km, means

        med_s, _ = timed(sk, torch.device("cpu"), warmup=1, reps=5)
        ours = reducers.kmeans(xs, 64, generator=torch.Generator(device=device).manual_seed(seed))
        ref = sk()[0]
        t_ratio.append(med_s / med_t)
        i_ratio.append(float(ours.inertia[0]) / ref.inertia_)
        print(f"  seed {seed}: ours {med_t * 1e3:7.1f} ms, sklearn {med_s * 1e3:7.1f} ms, speedup {med_s / med_t:5.1f}x, "
              f"inertia ratio {i_ratio[-1]:.4f} (ours {float(ours.inertia[0]):.4g}, sklearn {ref.inertia_:.4g})")
    print(f"median speedup {statistics.median(t_ratio):.1f}x, median inertia ratio {statistics.median(i_ratio):.4f}, "
          f"worst {max(i_ratio):.4f}")


if __name__ == "__main__":
    main()
