"""The reducer's own phase, predicted beside measured, and the per-launch times fitted to it.

Measurements: the ``reducer_time_s`` of profile rows (post- and pre-projector reducers; run
eager or replayed from a CUDA graph, ``reducer_execution``) and ``kind: reducer-timing`` rows
(``benchmarks/bench_reducers.py``: ``eager_time_s`` and, where capturable, ``graph_time_s``, on
LLaVA-1.5-shaped features). Prediction: the reducer's cost model (``cost()``, an object the
caller's ``reducer_for(row)`` builds) as ``max(FLOPs / peak, bytes / bandwidth) + launches x
per-launch time``, with the GPU spec's first-guess per-launch times. The fit
(:func:`costmodel.calibrate.fit_launch`) replaces them, eager and CUDA graph separately.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .calibrate import fit_launch, relative_errors

#: the model whose shapes ``reducer-timing`` rows use when they name none (bench_reducers.py's)
BENCH_MODEL = "llava-1.5-7b"


@dataclass
class ReducerComparison:
    row: dict
    reducer: str
    keep: int
    batch: int
    graph: bool            # replayed from a CUDA graph (else eager)
    measured_s: float
    roofline_s: float      # max(FLOPs / peak, bytes / bandwidth)
    launches: float        # the cost model's
    predicted_s: float     # roofline + launches x the GPU spec's per-launch time
    kernels: float | None = None  # CUDA kernels the row measured (reducer-timing rows); the fit uses them
    calibrated_s: float | None = None

    @property
    def execution(self) -> str:
        return "cuda-graph" if self.graph else "eager"


def _measured(r: dict) -> list[tuple[float, bool]]:
    if r.get("kind") == "reducer-timing":
        out = [(r["eager_time_s"], False)] if r.get("eager_time_s") else []
        return out + ([(r["graph_time_s"], True)] if r.get("graph_time_s") else [])
    if r.get("hook") == "in-llm" or r.get("reducer") in (None, "none") or not r.get("reducer_time_s"):
        return []
    return [(r["reducer_time_s"], r.get("reducer_execution") == "cuda-graph")]


def _shape(r: dict, reducer, model) -> tuple[int, int, dict]:
    """(n, d, context) the reducer read in this row."""
    llm, vision = model.llm, model.vision
    ctx = {"text_tokens": int(r.get("text_tokens") or r.get("options", {}).get("text_tokens") or 64),
           "heads": llm.num_attention_heads, "kv_heads": llm.num_key_value_heads, "layers": llm.num_hidden_layers,
           "vision_hidden": vision.hidden_size, "element_bytes": 4 if "32" in str(r.get("dtype")) else 2}
    if r.get("kind") == "reducer-timing":  # bench_reducers.py: features [B, N, D], 40 text tokens
        ctx["text_tokens"] = 40
        return int(r.get("visual_tokens") or model.visual_tokens), int(r.get("hidden_size") or llm.hidden_size), ctx
    if getattr(reducer, "hook", None) == "pre-projector":
        return vision.tokens * model.images, vision.hidden_size, ctx
    return model.visual_tokens, llm.hidden_size, ctx


def _compare(r: dict, reducer, model, gpu) -> list[ReducerComparison]:
    n, d, ctx = _shape(r, reducer, model)
    keep = max(1, min(n, int(round(r.get("kept_tokens") or r["keep"]))))
    batch = int(r.get("batch") or 1)
    c = reducer.cost(n, d, keep, batch=batch, **ctx)
    dtype = "bf16" if ctx["element_bytes"] == 2 else "fp32"
    fp32 = gpu.peak_ops_per_s.get("fp32", gpu.peak_for(dtype))
    peak = gpu.peak_for(dtype) if c.get("work_dtype") == "model" else fp32
    roof = max(c["flops"] / peak, c["bytes"] / gpu.memory_bandwidth_bytes_per_s)
    out = []
    for m, graph in _measured(r):
        per = gpu.graph_launch_s if graph else gpu.launch_s
        out.append(ReducerComparison(row=r, reducer=r["reducer"], keep=keep, batch=batch, graph=graph, measured_s=m,
                                     roofline_s=roof, launches=c["launches"], predicted_s=roof + c["launches"] * per,
                                     kernels=r.get("cuda_kernels")))
    return out


def reducer_comparisons(rows, resolve_gpu, resolve_model, reducer_for) -> dict[str, list[ReducerComparison]]:
    """Per GPU key, the reducer phases of ``rows`` beside their predictions (none without
    ``reducer_for``, or for reducers it returns None for or that have no cost model)."""
    out = defaultdict(list)
    if reducer_for is None:
        return out
    for r in rows:
        if not _measured(r):
            continue
        reducer = reducer_for(r)
        if reducer is None or not hasattr(reducer, "cost"):
            continue
        gpu = resolve_gpu(r["gpu"])
        model = resolve_model(r.get("spec") or BENCH_MODEL)
        out[gpu.key] += _compare(r, reducer, model, gpu)
    return out


def fit_launch_times(comps: list[ReducerComparison]) -> tuple[float | None, float | None, dict]:
    """(eager per-launch time, CUDA-graph per-launch time, errors) fitted to one GPU's reducer
    phases: the time per kernel is the GPU's (and host's), so rows that counted their CUDA
    kernels fit with those counts, the others with the cost model's. Sets each comparison's
    calibrated time (with the cost model's launches). None where there is no point of that kind."""
    fitted, err = {}, {}
    for graph in (False, True):
        pts = [c for c in comps if c.graph == graph]
        t, e = fit_launch([c.measured_s for c in pts], [c.roofline_s for c in pts],
                          [c.kernels or c.launches for c in pts])
        fitted[graph] = t
        for c in pts:
            c.calibrated_s = None if t is None else c.roofline_s + c.launches * t
        if pts:
            before = relative_errors([c.predicted_s for c in pts], [c.measured_s for c in pts])
            key = "reducer_graph" if graph else "reducer_eager"
            err.update({f"{key}_points": len(pts), f"{key}_before_median_abs_rel": float(np.median(before)),
                        f"{key}_after_median_abs_rel": e.get("median_abs_rel")})
    return fitted[False], fitted[True], err
