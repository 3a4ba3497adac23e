"""The evaluation core shared by :func:`costmodel.sweep` and :func:`costmodel.predict`.

Every function here takes either Python floats (one configuration: ``predict()``'s fast path,
no numpy on scalars, no per-op table unless asked) or numpy arrays shaped (GPU, batch, keep)
(a sweep). The arithmetic is the same expressions in the same order, so both give the same
numbers. Times are roofline times: each op takes ``max(flops / peak, bytes / bandwidth)``
(LLM-Viewer's ``OPs / performance`` in compat mode, the same quantity); a calibration replaces
a stack's time by its fitted linear model (:mod:`costmodel.calibrate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import ops as O
from .energy import first_guess
from .options import Options, PredictError


@dataclass
class Hardware:
    """One GPU's figures (floats), or several GPUs' as (G, 1, 1) arrays."""

    bandwidth: object
    peak: object
    block_rows: object
    onchip: object
    static_w: object
    j_per_flop: object
    j_per_byte: object
    overhead_s: object      # calibration; identity when uncalibrated
    compute_scale: object
    memory_scale: object
    calibrated: object
    host_s_per_layer: object  # the eager runtime's host floor per layer; 0 = none
    reducer_peak: object      # reducers work in float32: the fp32 peak
    launch_s: object          # per kernel of a reducer, eager
    graph_launch_s: object    # per kernel replayed from a CUDA graph


def _gpu_values(g, opts: Options, calibration) -> tuple:
    dtype = opts.compute_dtype()
    if opts.compat == "llm-viewer":
        lv = g.llm_viewer
        bw, peak, onchip = lv.bandwidth, lv.INT8 if dtype == "int8" else lv.FP16, lv.onchip_buffer
    else:
        bw, peak, onchip = g.memory_bandwidth_bytes_per_s, g.peak_for(dtype), g.l2_bytes
    c = calibration if calibration is not None and calibration.gpu == g.key else None
    e = c.energy if c is not None and c.energy is not None else first_guess(
        g, dtype if g.peak_ops_per_s.get(dtype) else "bf16")
    host = 0.0 if c is None or opts.cuda_graphs else c.host_s_per_layer
    cal = (c.overhead_s, c.compute_scale, c.memory_scale, 1.0, host) if c is not None else (0.0, 1.0, 1.0, 0.0, 0.0)
    launch = c.launch_s if c is not None and c.launch_s is not None else g.launch_s
    graph = c.graph_launch_s if c is not None and c.graph_launch_s is not None else g.graph_launch_s
    return (float(bw), float(peak), float(g.flash_block_rows), float(onchip), e.static_w, e.j_per_flop,
            e.j_per_byte, *(float(v) for v in cal), float(g.peak_ops_per_s.get("fp32", peak)), float(launch),
            float(graph))


def hardware(gpus: list, opts: Options, calibration=None, shape=None) -> Hardware:
    """The GPUs' figures: floats for one GPU without ``shape``, else arrays of ``shape``."""
    if opts.compat == "llm-viewer":
        missing = [g.key for g in gpus if g.llm_viewer is None]
        if missing:
            raise PredictError(f"LLM-Viewer has no hardware entry for {', '.join(missing)}; compat mode needs "
                               "a GPU spec with an [llm_viewer] table (h100-sxm, h100-pcie, a100-80gb, a100-40gb)")
    if calibration is not None and calibration.gpu not in [g.key for g in gpus]:
        raise PredictError(f"the calibration is for GPU {calibration.gpu!r}, not for {', '.join(g.key for g in gpus)}")
    values = [_gpu_values(g, opts, calibration) for g in gpus]
    if shape is None:
        return Hardware(*values[0])
    return Hardware(*(np.asarray(col, dtype=np.float64).reshape(shape) for col in zip(*values)))


# --------------------------------------------------------------------------- stacks of ops


def _intensity(flops, mem):
    if isinstance(flops, float) and isinstance(mem, float):
        return flops / mem if mem > 0 else math.inf
    flops, mem = np.asarray(flops, dtype=np.float64), np.asarray(mem, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mem > 0, flops / np.where(mem > 0, mem, 1), np.inf)


def op_time(op: O.Op, hw: Hardware, compat: bool):
    """(arithmetic intensity, memory bound, time) of one op."""
    flops, mem = op.flops, op.memory_access
    ai = _intensity(flops, mem)
    memory_bound = ai < hw.peak / hw.bandwidth
    if compat:  # LLM-Viewer: performance = min(peak, ai * bandwidth); time = OPs / performance
        return ai, memory_bound, flops / O.where(memory_bound, ai * hw.bandwidth, hw.peak)
    return ai, memory_bound, O.maximum(flops / hw.peak, mem / hw.bandwidth)


def stack(ops_list: list[O.Op], hw: Hardware, compat: bool, layers: int = 0, keep_ops: bool = False) -> dict:
    """Totals of an op list (per-layer ops times their repeat). ``layers``: the stack's layer
    count, for a calibration's fixed overhead and eager host floor (the LLM's forward only).
    ``keep_ops``: also the per-op rows (``per_op``), for ``--breakdown``."""
    flops = mem = time = weights = kv = tc = tm = work = 0.0
    per_op = {}
    scalar = isinstance(hw.peak, float) and not (compat or keep_ops)
    for op in ops_list:
        f, m, r = op.flops, op.memory_access, op.repeat
        if scalar and isinstance(f, float) and isinstance(m, float):  # one configuration: plain floats
            c, b = f / hw.peak, m / hw.bandwidth
            t = c if c >= b else b
            a = op.load_act + op.store_act
            work = work if work >= a else a
        else:
            if compat or keep_ops:
                ai, mb, t = op_time(op, hw, compat)
                if keep_ops:
                    per_op[op.name] = dict(op=op, arithmetic_intensity=ai, memory_bound=mb, time_s=t)
            else:
                t = O.maximum(f / hw.peak, m / hw.bandwidth)
            work = O.maximum(work, op.load_act + op.store_act)
        flops = flops + r * f
        mem = mem + r * m
        time = time + r * t
        weights = weights + r * op.load_weight
        kv = kv + r * op.store_kv
        tc = tc + r * f / hw.peak
        tm = tm + r * m / hw.bandwidth
    # a calibration replaces the roofline time by its fitted linear model of the two sums; the
    # fitted overhead and the eager host floor belong to the LLM's forward (the stack given ``layers``)
    calibrated = hw.overhead_s * (layers > 0) + hw.compute_scale * tc + hw.memory_scale * tm
    calibrated = O.maximum(calibrated, hw.host_s_per_layer * layers)
    final = O.where(hw.calibrated > 0, calibrated, time)
    return {"flops": flops, "memory_access_bytes": mem, "time_s": final, "roofline_time_s": time,
            "load_weight": weights, "store_kv": kv, "compute_time_s": tc, "memory_time_s": tm, "working": work,
            "energy_j": hw.static_w * final + hw.j_per_flop * flops + hw.j_per_byte * mem, "per_op": per_op}


# --------------------------------------------------------------------------- the LLM


def _bytes(opts: Options) -> tuple[float, float, float]:
    return opts.w_bits / 8, opts.a_bits / 8, opts.kv / 8


def llm_cost(llm, segments, batch, hw: Hardware, opts: Options, keep_ops: bool = False) -> dict:
    """The LLM's forward. ``segments`` [(first_layer, layers, tokens)]: tokens per group of
    layers (prefill length, or cache length for one decode step)."""
    w, a, kv = _bytes(opts)
    if opts.compat == "llm-viewer":
        tokens = segments[0][2]
        ops_list = O.llm_viewer_ops(llm, tokens, batch, stage=opts.stage, w_bytes=w, a_bytes=a, kv_bytes=kv,
                                    flash=opts.flash_attention, onchip_buffer=hw.onchip)
        res = stack(ops_list, hw, True, keep_ops=keep_ops)
        layer_ops = [op for op in ops_list if op.repeat > 1]
        # LLM-Viewer's memory figures: stored activations of ONE layer, weights without the
        # LM head, KV cache as the prefill's stores for `tokens` positions.
        res["activation_memory_bytes"] = sum(op.store_act for op in layer_ops)
        res["weight_bytes"] = sum(op.repeat * op.load_weight for op in layer_ops)
        kv_out = llm.hidden_size * llm.num_key_value_heads / llm.num_attention_heads
        res["kv_cache_bytes"] = 2 * kv_out * batch * tokens * kv * llm.num_hidden_layers
        return res
    ops_list = O.llm_ops(llm, segments[0][2], batch, stage=opts.stage, w_bytes=w, a_bytes=a, kv_bytes=kv,
                         flash=opts.flash_attention, block_rows=hw.block_rows, all_logits=opts.all_logits,
                         segments=segments)
    res = stack(ops_list, hw, False, layers=llm.num_hidden_layers, keep_ops=keep_ops)
    T = segments[0][2] if opts.stage == "prefill" else 1.0
    res["activation_memory_bytes"] = batch * T * llm.hidden_size * a + res["working"]
    res["weight_bytes"] = llm.parameter_count() * w
    cache = 0.0
    for _, layers, tokens in segments:
        span = tokens if opts.stage == "prefill" else tokens + 1
        cache = cache + 2 * batch * span * llm.num_key_value_heads * llm.head_dim * kv * layers
    res["kv_cache_bytes"] = cache
    return res


def vision_cost(vlm, batch, hw: Hardware, opts: Options, keep_ops: bool = False) -> dict:
    """The vision encoder's stack (every layer HF runs, on every image of the request)."""
    w, a, _ = _bytes(opts)
    layers = vlm.vision_layers_run or vlm.vision.num_hidden_layers
    return stack(O.vision_ops(vlm.vision, layers, vlm.images, batch, w_bytes=w, a_bytes=a,
                              flash=opts.flash_attention, block_rows=hw.block_rows), hw, False, keep_ops=keep_ops)


def projector_cost(vlm, tokens, batch, hw: Hardware, opts: Options, keep_ops: bool = False) -> dict:
    """The projector's stack on ``tokens`` visual tokens per request."""
    w, a, _ = _bytes(opts)
    return stack(O.projector_ops(vlm.projector_dims, tokens, batch, w_bytes=w, a_bytes=a), hw, False,
                 keep_ops=keep_ops)


# --------------------------------------------------------------------------- decode


def _series(c0, c1, p, q):
    """sum_{i=p}^{q-1} (c0 + c1 i)."""
    return (q - p) * c0 + c1 * (q * (q - 1) - p * (p - 1)) / 2


def sum_max_affine(a0, a1, b0, b1, n: int):
    """sum_{i=0}^{n-1} max(a0 + a1 i, b0 + b1 i), exactly: one split point where the two cross."""
    d0, d1 = a0 - b0, a1 - b1
    if all(isinstance(v, float) for v in (d0, d1)):
        if d1 == 0:
            return _series(a0, a1, 0, n) if d0 >= 0 else _series(b0, b1, 0, n)
        if d1 > 0:  # b first, a from ceil(-d0 / d1)
            p = min(max(math.ceil(-d0 / d1), 0), n)
            return _series(b0, b1, 0, p) + _series(a0, a1, p, n)
        p = min(max(math.floor(-d0 / d1) + 1, 0), n)  # a first, then b
        return _series(a0, a1, 0, p) + _series(b0, b1, p, n)
    d0, d1 = np.broadcast_arrays(np.asarray(d0, dtype=np.float64), np.asarray(d1, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        x = -d0 / np.where(d1 == 0, 1.0, d1)
        p = np.where(d1 > 0, np.ceil(x), np.floor(x) + 1)
    p = np.where(d1 == 0, np.where(d0 >= 0, n, 0), np.clip(p, 0, n))
    a_first = d1 <= 0  # a on [0, p), b on [p, n); when they never cross, p says which one (n: a, 0: b)
    first = np.where(a_first, _series(a0, a1, 0, p), _series(b0, b1, 0, p))
    return first + np.where(a_first, _series(b0, b1, p, n), _series(a0, a1, p, n))


def decode_cost(llm, segments, batch, hw: Hardware, opts: Options, steps: int) -> dict:
    """``steps`` decode forwards after a prefill whose layer groups hold ``segments`` tokens
    (step i attends to tokens + i + 1 keys per layer). Each op's counts are affine in i, so
    the sum of per-step roofline (or calibrated) times is exact in closed form."""
    if steps <= 0:
        return {"time_s": 0.0, "flops": 0.0, "memory_access_bytes": 0.0, "energy_j": 0.0}
    w, a, kv = _bytes(opts)
    kw = dict(stage="decode", w_bytes=w, a_bytes=a, kv_bytes=kv, flash=opts.flash_attention,
              block_rows=hw.block_rows)
    ops0 = O.llm_ops(llm, segments[0][2], batch, segments=segments, **kw)
    ops1 = O.llm_ops(llm, segments[0][2] + 1, batch, segments=[(s, n, t + 1) for s, n, t in segments], **kw)
    time = flops = mem = tc0 = tc1 = tm0 = tm1 = 0.0
    for o0, o1 in zip(ops0, ops1):
        r = o0.repeat
        f0, f1 = r * o0.flops, r * (o1.flops - o0.flops)
        m0, m1 = r * o0.memory_access, r * (o1.memory_access - o0.memory_access)
        time = time + sum_max_affine(f0 / hw.peak, f1 / hw.peak, m0 / hw.bandwidth, m1 / hw.bandwidth, steps)
        flops = flops + _series(f0, f1, 0, steps)
        mem = mem + _series(m0, m1, 0, steps)
        tc0, tc1 = tc0 + f0 / hw.peak, tc1 + f1 / hw.peak
        tm0, tm1 = tm0 + m0 / hw.bandwidth, tm1 + m1 / hw.bandwidth
    cal = sum_max_affine(hw.overhead_s + hw.compute_scale * tc0 + hw.memory_scale * tm0,
                         hw.compute_scale * tc1 + hw.memory_scale * tm1,
                         hw.host_s_per_layer * llm.num_hidden_layers, 0.0, steps)
    time = O.where(hw.calibrated > 0, cal, time)
    return {"time_s": time, "flops": flops, "memory_access_bytes": mem,
            "energy_j": hw.static_w * time + hw.j_per_flop * flops + hw.j_per_byte * mem}


# --------------------------------------------------------------------------- the reducer


def reducer_time(rc: dict, hw: Hardware, opts: Options) -> dict:
    """A reducer's own phase from its cost model: max(compute, memory) + launches x the
    per-launch time (a CUDA graph's where the runtime replays graphs and the reducer can be
    captured: it never synchronises with the host)."""
    peak = O.where(rc["model_dtype"], hw.peak, hw.reducer_peak)
    roof = O.maximum(rc["flops"] / peak, rc["bytes"] / hw.bandwidth)
    capturable = rc["capturable"]
    graph = capturable & opts.cuda_graphs if isinstance(capturable, np.ndarray) else capturable and opts.cuda_graphs
    t = roof + rc["launches"] * O.where(graph, hw.graph_launch_s, hw.launch_s)
    return {"time_s": t, "roofline_time_s": roof, "flops": rc["flops"], "memory_access_bytes": rc["bytes"],
            "energy_j": hw.static_w * t + hw.j_per_flop * rc["flops"] + hw.j_per_byte * rc["bytes"]}
