"""Roofline predictions: what keeping N visual tokens saves, for a model on a GPU.

:func:`sweep` evaluates a whole grid (GPUs x batch sizes x kept-token counts) in one numpy
pass; :func:`predict` is the one-configuration view of it that returns dataclasses with a
per-op table. Times are roofline times: each op takes ``max(flops / peak, bytes / bandwidth)``
(LLM-Viewer's ``OPs / performance`` in compat mode, which is the same quantity).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import ops as O
from .calibrate import Calibration
from .energy import first_guess
from .specs import GPUSpec, LLMSpec, VLMSpec, load_gpu, load_model

QUANTITIES = ("tokens", "flops", "memory_access_bytes", "activation_memory_bytes", "kv_cache_bytes",
              "weight_bytes", "time_s", "energy_j")
VLM_QUANTITIES = ("vision_time_s", "projector_time_s", "ttft_s", "request_energy_j")
STAGES = ("prefill", "decode")
COMPAT_MODES = (None, "llm-viewer")


class PredictError(ValueError):
    """A prediction request whose values are out of range."""


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    """How to count. Bits are per element; ``kv_bits=None`` means ``a_bits``."""

    stage: str = "prefill"
    w_bits: int = 16
    a_bits: int = 16
    kv_bits: int | None = None
    flash_attention: bool = False
    compat: str | None = None
    all_logits: bool = False
    cuda_graphs: bool = False  # a runtime that replays CUDA graphs pays no host launch floor

    def validated(self) -> "Options":
        if self.stage not in STAGES:
            raise PredictError(f"stage {self.stage!r} is not allowed; use one of {', '.join(STAGES)}")
        if self.compat not in COMPAT_MODES:
            raise PredictError(f"compat mode {self.compat!r} is not allowed; use 'llm-viewer' or none")
        for name in ("w_bits", "a_bits", "kv_bits"):
            v = getattr(self, name)
            if v is None and name == "kv_bits":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 32:
                raise PredictError(f"{name.replace('_', '-')} = {v!r} is out of range; allowed: integers 1..32")
        if self.compat and self.all_logits:
            raise PredictError("all_logits is not an LLM-Viewer option; drop it or the compat mode")
        return self

    @property
    def kv(self) -> int:
        return self.a_bits if self.kv_bits is None else self.kv_bits

    def compute_dtype(self) -> str:
        if self.w_bits <= 8 and self.a_bits <= 8 and self.kv <= 8:
            return "int8"
        return "bf16" if self.a_bits <= 16 else "fp32"


# --------------------------------------------------------------------------- hardware


@dataclass
class _Hardware:
    bandwidth: np.ndarray
    peak: np.ndarray
    block_rows: np.ndarray
    onchip: np.ndarray
    static_w: np.ndarray
    j_per_flop: np.ndarray
    j_per_byte: np.ndarray
    overhead_s: np.ndarray    # calibration; identity when uncalibrated
    compute_scale: np.ndarray
    memory_scale: np.ndarray
    calibrated: np.ndarray
    host_s_per_layer: np.ndarray  # calibration: the eager runtime's host floor per layer; 0 = none


def _hardware(gpus: list[GPUSpec], opts: Options, shape, calibration: "Calibration | None" = None) -> _Hardware:
    if opts.compat == "llm-viewer":
        missing = [g.key for g in gpus if g.llm_viewer is None]
        if missing:
            raise PredictError(f"LLM-Viewer has no hardware entry for {', '.join(missing)}; compat mode needs "
                               "a GPU spec with an [llm_viewer] table (h100-sxm, h100-pcie, a100-80gb, a100-40gb)")
        int8 = opts.compute_dtype() == "int8"
        bw = [g.llm_viewer.bandwidth for g in gpus]
        peak = [g.llm_viewer.INT8 if int8 else g.llm_viewer.FP16 for g in gpus]
        onchip = [g.llm_viewer.onchip_buffer for g in gpus]
    else:
        dtype = opts.compute_dtype()
        bw = [g.memory_bandwidth_bytes_per_s for g in gpus]
        peak = [g.peak_for(dtype) for g in gpus]
        onchip = [g.l2_bytes for g in gpus]
    rows = [g.flash_block_rows for g in gpus]
    coeffs, cal = [], []
    for g in gpus:
        c = calibration if calibration is not None and calibration.gpu == g.key else None
        e = c.energy if c is not None and c.energy is not None else first_guess(g, opts.compute_dtype()
                                                                                if g.peak_ops_per_s.get(opts.compute_dtype())
                                                                                else "bf16")
        coeffs.append(e)
        host = 0.0 if c is None or opts.cuda_graphs else c.host_s_per_layer
        cal.append((c.overhead_s, c.compute_scale, c.memory_scale, 1.0, host) if c is not None
                   else (0.0, 1.0, 1.0, 0.0, 0.0))
    if calibration is not None and calibration.gpu not in [g.key for g in gpus]:
        raise PredictError(f"the calibration is for GPU {calibration.gpu!r}, not for {', '.join(g.key for g in gpus)}")
    arr = lambda v: np.asarray(v, dtype=np.float64).reshape(shape)  # noqa: E731
    return _Hardware(arr(bw), arr(peak), arr(rows), arr(onchip), arr([e.static_w for e in coeffs]),
                     arr([e.j_per_flop for e in coeffs]), arr([e.j_per_byte for e in coeffs]),
                     arr([c[0] for c in cal]), arr([c[1] for c in cal]), arr([c[2] for c in cal]),
                     arr([c[3] for c in cal]), arr([c[4] for c in cal]))


# --------------------------------------------------------------------------- evaluation


def _roofline(op: O.Op, hw: _Hardware, compat: bool):
    """Per-op arithmetic intensity, bound and time (arrays)."""
    mem = np.asarray(op.memory_access, dtype=np.float64)
    flops = np.asarray(op.flops, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ai = np.where(mem > 0, flops / np.where(mem > 0, mem, 1), np.inf)
    memory_bound = ai < hw.peak / hw.bandwidth
    if compat:  # LLM-Viewer: performance = min(peak, ai * bandwidth); time = OPs / performance
        perf = np.where(memory_bound, ai * hw.bandwidth, hw.peak)
        time = flops / perf
    else:
        time = np.maximum(flops / hw.peak, mem / hw.bandwidth)
    return ai, memory_bound, time


def _stack(ops_list: list[O.Op], hw: _Hardware, compat: bool, shape, layers: int = 0) -> dict:
    """Totals and per-op arrays of an op list (per-layer ops multiplied by their repeat).
    ``layers``: the stack's layer count, for a calibration's host floor (eager runtimes issue
    each layer's kernels from the host; the GPU cannot finish before the host has issued them)."""
    per_op = {}
    keys = ("flops", "memory_access_bytes", "time_s", "load_weight", "store_kv", "compute_time_s", "memory_time_s")
    tot = {k: np.zeros(shape) for k in keys}
    for op in ops_list:
        ai, mb, t = _roofline(op, hw, compat)
        per_op[op.name] = dict(op=op, arithmetic_intensity=ai, memory_bound=mb, time_s=t)
        tot["flops"] = tot["flops"] + op.repeat * np.asarray(op.flops)
        tot["memory_access_bytes"] = tot["memory_access_bytes"] + op.repeat * np.asarray(op.memory_access)
        tot["time_s"] = tot["time_s"] + op.repeat * t
        tot["load_weight"] = tot["load_weight"] + op.repeat * np.asarray(op.load_weight)
        tot["store_kv"] = tot["store_kv"] + op.repeat * np.asarray(op.store_kv)
        tot["compute_time_s"] = tot["compute_time_s"] + op.repeat * np.asarray(op.flops) / hw.peak
        tot["memory_time_s"] = tot["memory_time_s"] + op.repeat * np.asarray(op.memory_access) / hw.bandwidth
    tot = {k: np.broadcast_to(v, shape).astype(np.float64) for k, v in tot.items()}
    # a calibration replaces the roofline time by its fitted linear model of the two sums; the
    # fitted overhead and the eager host floor belong to the LLM's forward (the stack given ``layers``)
    calibrated = hw.overhead_s * (layers > 0) + hw.compute_scale * tot["compute_time_s"] \
        + hw.memory_scale * tot["memory_time_s"]
    calibrated = np.maximum(calibrated, hw.host_s_per_layer * layers)
    tot["roofline_time_s"] = tot["time_s"]
    tot["time_s"] = np.where(hw.calibrated > 0, calibrated, tot["time_s"])
    tot["energy_j"] = hw.static_w * tot["time_s"] + hw.j_per_flop * tot["flops"] + hw.j_per_byte * tot["memory_access_bytes"]
    tot["per_op"] = per_op
    return tot


def _llm_cost(llm: LLMSpec, tokens, batch, hw: _Hardware, opts: Options, shape) -> dict:
    w, a, kv = opts.w_bits / 8, opts.a_bits / 8, opts.kv / 8
    tokens = np.asarray(tokens, dtype=np.float64)
    batch = np.asarray(batch, dtype=np.float64)
    if opts.compat == "llm-viewer":
        ops_list = O.llm_viewer_ops(llm, tokens, batch, stage=opts.stage, w_bytes=w, a_bytes=a, kv_bytes=kv,
                                    flash=opts.flash_attention, onchip_buffer=hw.onchip)
        res = _stack(ops_list, hw, True, shape)
        layer_ops = [op for op in ops_list if op.repeat > 1]
        # LLM-Viewer's memory figures: stored activations of ONE layer, weights without the
        # LM head, KV cache as the prefill's stores for `tokens` positions.
        res["activation_memory_bytes"] = np.broadcast_to(sum(np.asarray(op.store_act) for op in layer_ops), shape) * 1.0
        res["weight_bytes"] = np.broadcast_to(sum(op.repeat * np.asarray(op.load_weight) for op in layer_ops), shape) * 1.0
        kv_out = llm.hidden_size * llm.num_key_value_heads / llm.num_attention_heads
        res["kv_cache_bytes"] = np.broadcast_to(2 * kv_out * batch * tokens * kv * llm.num_hidden_layers, shape) * 1.0
        return res
    ops_list = O.llm_ops(llm, tokens, batch, stage=opts.stage, w_bytes=w, a_bytes=a, kv_bytes=kv,
                         flash=opts.flash_attention, block_rows=hw.block_rows, all_logits=opts.all_logits)
    res = _stack(ops_list, hw, False, shape, layers=llm.num_hidden_layers)
    T = tokens if opts.stage == "prefill" else np.ones_like(tokens)
    residual = batch * T * llm.hidden_size * a
    working = np.maximum.reduce([np.broadcast_to(np.asarray(op.load_act) + np.asarray(op.store_act), shape)
                                 for op in ops_list])
    res["activation_memory_bytes"] = np.broadcast_to(residual + working, shape) * 1.0
    res["weight_bytes"] = np.full(shape, llm.parameter_count() * w)
    span = tokens if opts.stage == "prefill" else tokens + 1
    res["kv_cache_bytes"] = np.broadcast_to(
        2 * batch * span * llm.num_key_value_heads * llm.head_dim * kv * llm.num_hidden_layers, shape) * 1.0
    return res


def _vision_cost(vlm: VLMSpec, batch, hw: _Hardware, opts: Options, shape) -> tuple[dict, dict]:
    w, a = opts.w_bits / 8, opts.a_bits / 8
    layers = vlm.vision_layers_run or vlm.vision.num_hidden_layers
    v = _stack(O.vision_ops(vlm.vision, layers, vlm.images, batch, w_bytes=w, a_bytes=a,
                            flash=opts.flash_attention, block_rows=hw.block_rows), hw, False, shape)
    p = _stack(O.projector_ops(vlm.projector_dims, vlm.visual_tokens, batch, w_bytes=w, a_bytes=a), hw, False, shape)
    return v, p


# --------------------------------------------------------------------------- validation


def _as_int_array(name: str, values, *, minimum: int = 1) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values))
    if arr.size == 0:
        raise PredictError(f"{name} is empty; give at least one value")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            bad = arr[~np.isfinite(arr) | (arr != np.round(arr))][0]
            raise PredictError(f"{name} = {bad!r} is not a whole number")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise PredictError(f"{name} must be integers, got {values!r}")
    if np.any(arr < minimum):
        raise PredictError(f"{name} = {int(arr[arr < minimum][0])} is out of range; allowed: >= {minimum}")
    return arr


def keep_from_retention(retention, visual_tokens: int) -> np.ndarray:
    """Visual tokens kept for retention rates in (0, 1]: round half up of r * visual_tokens."""
    r = np.atleast_1d(np.asarray(retention, dtype=np.float64))
    bad = ~np.isfinite(r) | (r <= 0) | (r > 1)
    if np.any(bad):
        raise PredictError(f"retention {float(r[bad][0])!r} is out of range; allowed: 0 < retention <= 1")
    keep = np.floor(r * visual_tokens + 0.5).astype(np.int64)
    if np.any(keep < 1):
        raise PredictError(f"retention {float(r[keep < 1][0])!r} keeps 0 of {visual_tokens} visual tokens; "
                           f"allowed: retention >= {0.5 / visual_tokens:.4g}")
    return keep


# --------------------------------------------------------------------------- sweep


@dataclass
class Sweep:
    """A grid of predictions. Arrays are shaped (len(gpus), len(batch), len(keep))."""

    model: str
    gpus: list[str]
    batch: np.ndarray
    keep: np.ndarray
    visual_tokens: int
    text_tokens: int
    options: Options
    baseline: dict[str, np.ndarray]
    reduced: dict[str, np.ndarray]
    savings: dict[str, np.ndarray]
    components: dict = field(default_factory=dict)
    calibrated: bool = False


def _resolve(model, gpus, visual_tokens, text_tokens, keep, retention, batch, options):
    spec = load_model(model)
    opts = (options or Options()).validated()
    gpu_specs = [load_gpu(g) for g in (gpus if isinstance(gpus, (list, tuple)) else [gpus])]
    if not gpu_specs:
        raise PredictError("no GPU given; name at least one")
    if visual_tokens is None:
        if not isinstance(spec, VLMSpec):
            raise PredictError(f"model {spec.key!r} is an LLM without a vision preset; give --visual-tokens")
        visual_tokens = spec.visual_tokens
    visual_tokens = int(_as_int_array("visual tokens", visual_tokens)[0])
    text_tokens = int(_as_int_array("text tokens", text_tokens)[0])
    if keep is not None and retention is not None:
        raise PredictError("give either keep or retention, not both")
    if retention is not None:
        keep_arr = keep_from_retention(retention, visual_tokens)
    elif keep is not None:
        keep_arr = _as_int_array("keep", keep)
    else:
        keep_arr = np.array([visual_tokens])
    if np.any(keep_arr > visual_tokens):
        raise PredictError(f"keep = {int(keep_arr.max())} is more than the {visual_tokens} visual tokens; "
                           f"allowed: 1..{visual_tokens}")
    batch_arr = _as_int_array("batch", batch)
    llm = spec.llm if isinstance(spec, VLMSpec) else spec
    return spec, llm, opts, gpu_specs, visual_tokens, text_tokens, keep_arr, batch_arr


def sweep(model, gpus, *, keep=None, retention=None, batch=1, text_tokens=64, visual_tokens=None,
          options: Options | None = None, calibration: Calibration | None = None) -> Sweep:
    """Predict baseline (all visual tokens) and reduced costs over a grid, in one numpy pass.

    ``keep`` (visual tokens kept) or ``retention`` (fraction in (0, 1]) may be scalars or
    sequences; so may ``batch`` and ``gpus``. Output arrays are (GPU, batch, keep) shaped.
    """
    spec, llm, opts, gpu_specs, V, text, keep_arr, batch_arr = _resolve(
        model, gpus, visual_tokens, text_tokens, keep, retention, batch, options)
    G, Bn, K = len(gpu_specs), len(batch_arr), len(keep_arr)
    hw = _hardware(gpu_specs, opts, (G, 1, 1), calibration)
    b = batch_arr.reshape(1, Bn, 1).astype(np.float64)
    base = _llm_cost(llm, np.full((1, 1, 1), float(V + text)), b, hw, opts, (G, Bn, 1))
    red = _llm_cost(llm, (keep_arr + text).reshape(1, 1, K).astype(np.float64), b, hw, opts, (G, Bn, K))
    baseline = {k: base[k] for k in QUANTITIES if k != "tokens"}
    reduced = {k: red[k] for k in QUANTITIES if k != "tokens"}
    baseline["tokens"] = np.full((G, Bn, 1), float(V + text))
    reduced["tokens"] = np.broadcast_to((keep_arr + text).reshape(1, 1, K), (G, Bn, K)).astype(np.float64)
    if isinstance(spec, VLMSpec) and not opts.compat and opts.stage == "prefill":
        v, p = _vision_cost(spec, b, hw, opts, (G, Bn, 1))
        for d in (baseline, reduced):
            d["vision_time_s"] = np.broadcast_to(v["time_s"], d["time_s"].shape)
            d["projector_time_s"] = np.broadcast_to(p["time_s"], d["time_s"].shape)
            d["ttft_s"] = d["vision_time_s"] + d["projector_time_s"] + d["time_s"]
            d["request_energy_j"] = v["energy_j"] + p["energy_j"] + d["energy_j"]
    savings = {}
    for k in baseline:
        bval = np.broadcast_to(baseline[k], reduced[k].shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            savings[k] = np.where(bval > 0, 1.0 - reduced[k] / np.where(bval > 0, bval, 1), 0.0)
    sw = Sweep(model=spec.key, gpus=[g.key for g in gpu_specs], batch=batch_arr, keep=keep_arr,
               visual_tokens=V, text_tokens=text, options=opts,
               baseline={k: np.broadcast_to(v, (G, Bn, K)) for k, v in baseline.items()},
               reduced=reduced, savings=savings)
    sw._per_op = (base["per_op"], red["per_op"])  # kept for predict()'s breakdown
    sw.components = {"baseline": base, "reduced": red}  # compute/memory time sums, for calibration fits
    sw.calibrated = bool(np.any(hw.calibrated > 0))
    return sw


# --------------------------------------------------------------------------- single prediction
