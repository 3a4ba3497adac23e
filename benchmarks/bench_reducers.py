"""Time every reducer on LLaVA-1.5-shaped features [1, 576, 4096] -> keep, eager and (on a GPU)
replayed from a CUDA graph, and Cluster & Aggregate against scikit-learn's KMeans.

    python benchmarks/bench_reducers.py [--reps 15] [--device cpu|cuda] [--keeps 64]
                                        [--dtype float32|bfloat16] [--graphs] [--jsonl FILE]
                                        [--no-sklearn] [--ops]

Protocol: 3 warm-up calls, then --reps timed calls, each the wall time from a device sync to the
next (the latency a request pays); median and interquartile range. Data: synthetic features
drawn around 40 latent "parts" with noise, so K-means has structure to find (random-weight
model features would have none); signals (CLS attention, vision keys, text embeddings, the
first LLM layer's weights) of the same geometry.

Per reducer and keep it also records what decides a reducer's cost on a GPU: dispatched aten
ops (about one kernel each) and host synchronisations (``_local_scalar_dense``, ``nonzero``,
..., and ``lift_fresh``: Python data made into a tensor, a copy from host memory on a GPU),
counted with a ``TorchDispatchMode``, for the whole call and for its capturable core
(``Reducer._reduce``, without the input check); on a GPU the CUDA kernels a call launched
(torch profiler). ``--ops`` prints only these counts (no timing, no scikit-learn). In-LLM
reducers run their ``select`` on LLaVA-shaped q, k [1, 32, 640, 128] and hidden [1, 640, 4096]
with the visual block at 35..611 (their call and their core are the same). ``--graphs`` (CUDA only) captures the method's core (``Reducer._reduce``, without the
input check's one sync) in a CUDA graph and times its replay; a method that synchronises with
the host cannot be captured, and the row says so instead of a time. ``--jsonl`` appends one
``kind: reducer-timing`` row per (reducer, keep), fsynced.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import reducers  # noqa: E402
from profiler.timing import cuda_graph_samples, synchronize as sync, wall_samples  # noqa: E402

#: aten ops that copy a device value to the host (a synchronisation on a GPU)
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_consecutive",
            "unique_dim", "repeat_interleave", "item", "equal", "is_nonzero"}
#: ops that make Python data into a tensor (``torch.tensor(list)``): on a GPU a copy from pageable
#: host memory, which synchronises and cannot be captured in a CUDA graph
HOST_DATA_OPS = {"lift_fresh", "lift_fresh_copy"}


#: the LLM side of LLaVA-1.5-7B for the in-LLM reducers: 32 heads of 128, width 4096, a 640-token
#: prompt whose visual block is 35..611
IN_LLM_SHAPE = {"heads": 32, "head_dim": 128, "tokens": 640, "hidden": 4096, "visual": slice(35, 611)}


def features(seed: int, device, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    parts = torch.randn(40, 4096, generator=g)
    which = torch.randint(40, (576,), generator=g)
    x = parts[which] + 0.7 * torch.randn(576, 4096, generator=g)
    return x.unsqueeze(0).to(device, dtype)


def signals(seed: int, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed + 1000)
    d = 4096
    layer0 = {"q_weight": torch.randn(d, d, generator=g) / d ** 0.5, "k_weight": torch.randn(d, d, generator=g) / d ** 0.5,
              "norm_weight": torch.ones(d), "norm_eps": 1e-5, "num_heads": 32, "num_kv_heads": 32}
    return {"cls_attention": torch.rand(1, 576, generator=g).softmax(-1).to(device, dtype),
            "vision_keys": torch.randn(1, 576, 1024, generator=g).to(device, dtype),
            "text_embeds": torch.randn(1, 40, d, generator=g).to(device, dtype),
            "layer0": {k: v.to(device, dtype) if torch.is_tensor(v) else v for k, v in layer0.items()}}


def tower_inputs(seed: int, device, dtype=torch.float32):
    """LLaVA-1.5's vision tower features at layer -2 [1, 577, 1024] (CLS at 0) and the signals the
    official pre-projector methods read (``reducers.base.SIGNAL_SHAPES``)."""
    g = torch.Generator().manual_seed(seed + 3000)
    parts = torch.randn(40, 1024, generator=g)
    x = parts[torch.randint(40, (577,), generator=g)] + 0.7 * torch.randn(577, 1024, generator=g)
    sig = {"tower_cls_attention": torch.rand(1, 577, generator=g).softmax(-1),
           "tower_keys": torch.randn(1, 577, 64, generator=g),
           "tower_last_q": torch.randn(1, 577, 1024, generator=g),
           "tower_last_k": torch.randn(1, 577, 1024, generator=g)}
    return x.unsqueeze(0).to(device, dtype), {k: v.to(device, dtype) for k, v in sig.items()}


def inputs_for(r, inputs):
    """(features, signals) of a post- or pre-projector reducer, from ``inputs`` =
    (features, signals, in-LLM inputs, tower inputs)."""
    x, sig = inputs[3] if r.hook == "pre-projector" else inputs[:2]
    return x, {k: v for k, v in sig.items() if k in r.signals + r.optional_signals and k != "saliency"}


def all_inputs(seed: int, device, dtype=torch.float32):
    return (features(seed, device, dtype), signals(seed, device, dtype), in_llm_inputs(seed, device, dtype),
            tower_inputs(seed, device, dtype))


def in_llm_inputs(seed: int, device, dtype=torch.float32):
    """Rotated q, k [1, 32, 640, 128] and hidden states [1, 640, 4096] of one decoder layer, and
    the visual block's slice."""
    g = torch.Generator().manual_seed(seed + 2000)
    h, d, t, width = (IN_LLM_SHAPE[k] for k in ("heads", "head_dim", "tokens", "hidden"))
    q = torch.randn(1, h, t, d, generator=g)
    k = torch.randn(1, h, t, d, generator=g)
    hidden = torch.randn(1, t, width, generator=g)
    return q.to(device, dtype), k.to(device, dtype), hidden.to(device, dtype), IN_LLM_SHAPE["visual"]


def _rms_norm(x):
    """A final norm for in-LLM selections that read one (DART)."""
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype)


def reducer_calls(name: str, keep: int, device, dtype, inputs=None):
    """(call, core) closures for one reducer at ``keep``: the public call (``reduce``, input
    check included) and its capturable core (``_reduce``), each from a freshly seeded generator
    on ``device``. In-LLM reducers: ``select`` for both. ``inputs``: (features, signals,
    in-LLM inputs) to reuse."""
    r = reducers.get(name)
    gen = torch.Generator(device=device)
    if r.hook == "in-llm":
        q, k, hidden, vis = inputs[2] if inputs else in_llm_inputs(0, device, dtype)
        prepared = r.prepare(hidden, vis)  # the LLM input stands in for the embeddings

        def select():
            return r.select(q, k, hidden, vis, keep, hidden_out=hidden, final_norm=_rms_norm, prepared=prepared)
        return select, select
    x, s = inputs_for(r, inputs or all_inputs(0, device, dtype))

    def call():
        return r.reduce(x, keep, generator=gen.manual_seed(0), **s)

    def core():
        return r._reduce(x, keep, generator=gen.manual_seed(0), **s)
    return call, core


def op_counts(name: str, keep: int, device="cpu", dtype=torch.float32, inputs=None) -> dict:
    """Dispatched aten ops and host syncs of one call and of its capturable core."""
    call, core = reducer_calls(name, keep, device, dtype, inputs)
    c, k = count_ops(call), count_ops(core)
    return {"dispatched_ops": c.ops, "host_syncs": c.syncs, "host_sync_ops": c.sync_names,
            "core_dispatched_ops": k.ops, "core_host_syncs": k.syncs, "core_host_sync_ops": k.sync_names}


def samples(fn, device, warmup=3, reps=15) -> list[float]:
    return wall_samples(fn, device, warmup, reps)


def timed(fn, device, warmup=3, reps=15):
    q = np.percentile(samples(fn, device, warmup, reps), [25, 50, 75])
    return q[1], q[2] - q[0]


def stats(x: list[float]) -> dict:
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return {"n": len(x), "median": float(med), "iqr": float(q3 - q1), "min": float(min(x)), "max": float(max(x))}


class OpCounter(TorchDispatchMode):
    """Counts dispatched aten ops and the ones that synchronise with the host."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.sync_names: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        name = func.__name__.split(".")[0]
        if name in SYNC_OPS or name in HOST_DATA_OPS or _copies_from_host(name, args, kwargs or {}):
            self.syncs += 1
            self.sync_names[name] = self.sync_names.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _copies_from_host(name, args, kwargs) -> bool:
    """A copy from a CPU tensor onto another device (``x.to("cuda")``, ``y.copy_(x)``)."""
    if name == "_to_copy" and args and isinstance(args[0], torch.Tensor):
        dev = kwargs.get("device")
        return args[0].device.type == "cpu" and dev is not None and torch.device(dev).type != "cpu"
    if name == "copy_" and len(args) >= 2 and all(isinstance(a, torch.Tensor) for a in args[:2]):
        return args[1].device.type == "cpu" and args[0].device.type != "cpu"
    return False


def count_ops(fn) -> OpCounter:
    with OpCounter() as c:
        fn()
    return c


def cuda_kernels(fn, device) -> int:
    """CUDA kernels (and memcpy/memset) one call puts on the device, from the torch profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)


def _first_tensor(out):
    return out.features if hasattr(out, "features") else out


def graph_replay(core, device, warmup: int, reps: int, generator=None):
    """(replay samples, max |graph - eager|, reason) of ``core`` captured in a CUDA graph."""
    ref = core()
    gs, out, reason = cuda_graph_samples(core, device, warmup, reps, generator)
    if reason:
        return None, None, reason
    a, b = _first_tensor(out), _first_tensor(ref)
    diff = float((a.float() - b.float()).abs().max()) if a.shape == b.shape else float("nan")
    return gs, diff, None


def append_row(path, row) -> None:
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def count_all(names, keeps, device, dtype, inputs, base, jsonl=None) -> None:
    """``--ops``: the op and sync counts of every reducer's call and capturable core."""
    print(f"torch {torch.__version__}, device {device}, {dtype}; [1, 576, 4096] -> keep (in-LLM: select on q, k "
          f"[1, 32, 640, 128], hidden [1, 640, 4096], visual block 35..611)")
    print(f"{'reducer':28s} {'keep':>4s} {'ops':>6s} {'syncs':>5s} {'core ops':>8s} {'core syncs':>10s}  "
          f"core = {'_reduce'} (post-projector) or select (in-LLM); sync ops")
    for name in names:
        for keep in keeps:
            row = {**base, "kind": "reducer-ops", "status": "ok", "reducer": name, "keep": keep,
                   "hook": reducers.get_class(name).hook}
            try:
                row.update(op_counts(name, keep, device, dtype, inputs))
            except Exception as e:  # noqa: BLE001 - one reducer's failure must not stop the others
                row.update({"status": "failed", "error": f"{type(e).__name__}: {e}"[:500]})
            append_row(jsonl, row)
            if row["status"] != "ok":
                print(f"{name:28s} {keep:4d} failed: {row['error'][:120]}")
                continue
            names_ = ", ".join(f"{k} x{v}" for k, v in row["host_sync_ops"].items())
            print(f"{name:28s} {keep:4d} {row['dispatched_ops']:6d} {row['host_syncs']:5d} "
                  f"{row['core_dispatched_ops']:8d} {row['core_host_syncs']:10d}  {names_}", flush=True)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keeps", default="64", help="comma-separated budgets (default 64)")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    ap.add_argument("--reducers", default="all", help="comma-separated names, or all")
    ap.add_argument("--graphs", action="store_true", help="also capture and replay CUDA graphs (CUDA only)")
    ap.add_argument("--jsonl", help="append one row per (reducer, keep) here (kind: reducer-timing, or "
                                    "reducer-ops with --ops)")
    ap.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn comparison")
    ap.add_argument("--ops", action="store_true", help="only count dispatched ops and host syncs per reducer, for "
                                                       "the call and its capturable core (no timing)")
    args = ap.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available here; allowed: cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: None}.get(args.dtype, "bad")
    if dtype == "bad":
        sys.exit(f"--dtype {args.dtype!r} is not allowed; use float32 or bfloat16")
    args.dtype = dtype or (torch.bfloat16 if args.device.type == "cuda" else torch.float32)
    try:
        args.keep_list = [int(k) for k in args.keeps.split(",")]
    except ValueError:
        sys.exit(f"--keeps {args.keeps!r}: need comma-separated integers in 1..576")
    if any(not 1 <= k <= 576 for k in args.keep_list):
        sys.exit(f"--keeps {args.keeps!r}: every budget must be in 1..576")
    args.names = reducers.available() if args.reducers == "all" else args.reducers.split(",")
    for n in args.names:
        reducers.get_class(n)  # unknown names fail here with the list of allowed ones
    return args


def _graph_fields(name, keep, device, dtype, inputs, reps) -> dict:
    cgen = torch.Generator(device=device).manual_seed(0)
    r = reducers.get(name)
    if r.hook == "in-llm":
        _, core = reducer_calls(name, keep, device, dtype, inputs)
        cgen = None
    else:
        x, s = inputs_for(r, inputs)

        def core(r=r, s=s, keep=keep, x=x, cgen=cgen):
            return r._reduce(x, keep, generator=cgen, **s)
    gs, diff, reason = graph_replay(core, device, 3, reps, cgen)
    if reason:
        return {"graph_time_s": None, "graph_time_s_unavailable_reason": reason}
    return {"graph_time_s": stats(gs)["median"], "graph_stats": stats(gs), "graph_max_abs_diff_vs_eager": diff}


def time_one(name, keep, args, inputs, base) -> dict:
    """One reducer at one budget: eager time, op counts, (GPU) kernels and CUDA-graph replay."""
    device, dtype = args.device, args.dtype
    row = {**base, "kind": "reducer-timing", "status": "ok", "reducer": name, "keep": keep, "reps": args.reps,
           "warmup": 3}
    try:
        eager, _ = reducer_calls(name, keep, device, dtype, inputs)
        ts = samples(eager, device, reps=args.reps)
        row.update(eager_time_s=stats(ts)["median"], eager_stats=stats(ts))
        row.update(op_counts(name, keep, device, dtype, inputs))
        if device.type == "cuda":
            try:
                row["cuda_kernels"] = cuda_kernels(eager, device)
            except Exception as e:  # noqa: BLE001
                row.update(cuda_kernels=None, cuda_kernels_unavailable_reason=f"{type(e).__name__}: {e}"[:200])
            row.update(_graph_fields(name, keep, device, dtype, inputs, args.reps) if args.graphs else
                       {"graph_time_s": None, "graph_time_s_unavailable_reason": "not requested (--graphs)"})
    except Exception as e:  # noqa: BLE001 - one reducer's failure must not stop the others
        row.update({"status": "failed", "error": f"{type(e).__name__}: {e}"[:500]})
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return row


def print_row(row, cuda: bool) -> None:
    name, keep = row["reducer"], row["keep"]
    if row["status"] != "ok":
        print(f"{name:28s} {keep:4d} failed: {row['error'][:120]}")
        return
    line = (f"{name:28s} {keep:4d} {row['eager_time_s'] * 1e3:10.3f} {row['eager_stats']['iqr'] * 1e3:7.3f} "
            f"{row['dispatched_ops']:5d} {row['host_syncs']:5d}")
    if cuda:
        g, k = row.get("graph_time_s"), row.get("cuda_kernels")
        line += f" {k if k is not None else 'n/a':>7} "
        line += (f"{g * 1e3:10.3f} {row['eager_time_s'] / g:10.1f}x" if g else
                 f"{'n/a':>10s} {'':>11s} ({(row.get('graph_time_s_unavailable_reason') or '')[:60]})")
    print(line, flush=True)


def main(argv=None):
    args = parse(argv)
    device, dtype = args.device, args.dtype
    inputs = all_inputs(0, device, dtype)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    base = {"schema_version": 1, "visual_tokens": 576, "hidden_size": 4096, "batch": 1,
            "dtype": str(dtype).replace("torch.", ""), "device": device.type, "gpu": gpu, "torch": torch.__version__}
    if args.ops:
        return count_all(args.names, args.keep_list, device, dtype, inputs, base, args.jsonl)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device} ({gpu}), {dtype}; "
          f"[1, 576, 4096] -> {args.keeps}; median of {args.reps} after 3 warm-ups")
    head = f"{'reducer':28s} {'keep':>4s} {'eager (ms)':>10s} {'IQR':>7s} {'ops':>5s} {'syncs':>5s}"
    head += f" {'kernels':>7s} {'graph (ms)':>10s} {'eager/graph':>11s}" if device.type == "cuda" else ""
    print(head)
    for name in args.names:
        for keep in args.keep_list:
            row = time_one(name, keep, args, inputs, base)
            append_row(args.jsonl, row)
            print_row(row, device.type == "cuda")
    if not args.no_sklearn:
        compare_sklearn(device)


def compare_sklearn(device) -> None:
    from sklearn.cluster import KMeans

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
            return km, np.stack([xn[km.labels_ == c].mean(0) for c in range(64)])

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
