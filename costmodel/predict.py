"""Roofline predictions: what keeping N visual tokens saves, for a model on a GPU.

:func:`sweep` evaluates a whole grid (GPUs x batch sizes x kept-token counts) in one numpy
pass; :func:`costmodel.predict` is one configuration, the same evaluation on Python floats
(:mod:`costmodel.engine`). With a reducer the reduced side follows its own schedule (in-LLM
methods: each group of layers at its own length) and pays its own cost
(:mod:`costmodel.schedule`); with ``output_tokens`` the request goes on with its decode steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import engine as E
from . import schedule as S
from .calibrate import Calibration
from .options import COMPAT_MODES, QUANTITIES, STAGES, VLM_QUANTITIES, Options, PredictError  # noqa: F401
from .specs import VLMSpec, load_gpu, load_model

#: the quantities a request adds beside the LLM's (prefill stage, corrected mode)
REQUEST_QUANTITIES = ("reducer_time_s", "reducer_flops", "decode_time_s", "request_time_s", "request_energy_j")


# --------------------------------------------------------------------------- validation


def _bad_int(name: str, values, arr) -> PredictError | None:
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if np.any(bad):
            return PredictError(f"{name} = {arr[bad][0]!r} is not a whole number")
    elif arr.dtype.kind not in "iu":
        return PredictError(f"{name} must be integers, got {values!r}")
    return None


def _as_int_array(name: str, values, *, minimum: int = 1) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values))
    if arr.size == 0:
        raise PredictError(f"{name} is empty; give at least one value")
    err = _bad_int(name, values, arr)
    if err:
        raise err
    arr = arr.astype(np.int64)
    if np.any(arr < minimum):
        raise PredictError(f"{name} = {int(arr[arr < minimum][0])} is out of range; allowed: >= {minimum}")
    return arr


def _as_int(name: str, value, *, minimum: int = 1) -> int:
    """One integer, checked as :func:`_as_int_array` does, without numpy on the common path."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return int(_as_int_array(name, value, minimum=minimum)[0])
    if value < minimum:
        raise PredictError(f"{name} = {int(value)} is out of range; allowed: >= {minimum}")
    return int(value)


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


def _check_request(opts: Options, reducer, output_tokens) -> int:
    steps = _as_int("output tokens", output_tokens, minimum=0)
    if opts.compat and (reducer is not None or steps):
        raise PredictError("a reducer and --output-tokens are corrected-mode features; drop --compat llm-viewer")
    if steps and opts.stage != "prefill":
        raise PredictError(f"--output-tokens {steps} needs stage 'prefill' (the request: a prefill, then its "
                           "decode steps); --stage decode predicts one decode step")
    if reducer is not None and S.hook(reducer) not in ("pre-projector", "post-projector", "in-llm"):
        raise PredictError(f"reducer {S.reducer_name(reducer)!r} has hook {S.hook(reducer)!r}; allowed: "
                           "pre-projector, post-projector, in-llm")
    return steps


def _resolve(model, gpus, visual_tokens, text_tokens, keep, retention, batch, options, scalar=False):
    spec = load_model(model)
    opts = (options or Options()).validated()
    gpu_specs = [load_gpu(g) for g in (gpus if isinstance(gpus, (list, tuple)) else [gpus])]
    if not gpu_specs:
        raise PredictError("no GPU given; name at least one")
    if visual_tokens is None:
        if not isinstance(spec, VLMSpec):
            raise PredictError(f"model {spec.key!r} is an LLM without a vision preset; give --visual-tokens")
        visual_tokens = spec.visual_tokens
    V = _as_int("visual tokens", visual_tokens)
    text = _as_int("text tokens", text_tokens)
    if keep is not None and retention is not None:
        raise PredictError("give either keep or retention, not both")
    if retention is not None:
        keep_arr = keep_from_retention(retention, V)
    elif keep is not None:
        keep_arr = _as_int(name="keep", value=keep) if scalar else _as_int_array("keep", keep)
    else:
        keep_arr = V if scalar else np.array([V])
    top = int(np.max(keep_arr))
    if top > V:
        raise PredictError(f"keep = {top} is more than the {V} visual tokens; allowed: 1..{V}")
    batch_arr = _as_int("batch", batch) if scalar else _as_int_array("batch", batch)
    if scalar and not isinstance(keep_arr, int):
        keep_arr = int(keep_arr[0])
    llm = spec.llm if isinstance(spec, VLMSpec) else spec
    return spec, llm, opts, gpu_specs, V, text, keep_arr, batch_arr


# --------------------------------------------------------------------------- evaluation


def evaluate(spec, llm, opts: Options, hw, V: int, text: int, batch, segs, rcost, projector_tokens,
             output_tokens: int, keep_ops: bool = False):
    """(baseline, reduced, stacks) of one grid or one configuration. ``segs``: the reduced
    side's [(first_layer, layers, visual tokens)]; ``rcost``: the reducer's cost or None;
    ``projector_tokens``: the reduced projector's input (a pre-projector reducer's keep) or None;
    ``output_tokens``: 0 (no decode asked: no ``decode_time_s``), else the prefill's token and
    ``output_tokens - 1`` decode steps."""
    L = llm.num_hidden_layers
    full = [(0, L, float(V + text))]
    red_segs = [(s, n, c + text) for s, n, c in segs]
    base = E.llm_cost(llm, full, batch, hw, opts, keep_ops)
    red = E.llm_cost(llm, red_segs, batch, hw, opts, keep_ops)
    baseline = {k: base[k] for k in QUANTITIES[1:]}
    reduced = {k: red[k] for k in QUANTITIES[1:]}
    baseline["tokens"], reduced["tokens"] = full[0][2], red_segs[0][2]
    stacks = {"baseline": base, "reduced": red}
    if opts.compat or opts.stage != "prefill":
        return baseline, reduced, stacks
    r = E.reducer_time(rcost, hw, opts) if rcost is not None else None
    stacks["reducer"] = r
    baseline["reducer_time_s"] = baseline["reducer_flops"] = 0.0
    reduced["reducer_time_s"], reduced["reducer_flops"] = (r["time_s"], r["flops"]) if r else (0.0, 0.0)
    r_energy = r["energy_j"] if r else 0.0
    vlm = isinstance(spec, VLMSpec)
    if vlm:
        v = E.vision_cost(spec, batch, hw, opts)
        p0 = E.projector_cost(spec, spec.visual_tokens, batch, hw, opts)
        p1 = p0 if projector_tokens is None else E.projector_cost(spec, projector_tokens, batch, hw, opts)
        for d, p, extra in ((baseline, p0, 0.0), (reduced, p1, r_energy)):
            d["vision_time_s"], d["projector_time_s"] = v["time_s"], p["time_s"]
            d["ttft_s"] = d["vision_time_s"] + d["projector_time_s"] + d["reducer_time_s"] + d["time_s"]
            d["request_energy_j"] = v["energy_j"] + p["energy_j"] + extra + d["energy_j"]
    for d, sg, extra in ((baseline, full, 0.0), (reduced, red_segs, r_energy)):
        dec = E.decode_cost(llm, sg, batch, hw, opts, output_tokens - 1)
        first = d["ttft_s"] if vlm else d["reducer_time_s"] + d["time_s"]
        if output_tokens:
            d["decode_time_s"] = dec["time_s"]
        d["request_time_s"] = first + dec["time_s"]
        d["request_energy_j"] = (d["request_energy_j"] if vlm else d["energy_j"] + extra) + dec["energy_j"]
    return baseline, reduced, stacks


def savings(baseline: dict, reduced: dict) -> dict:
    """1 - reduced / baseline per quantity (0 where the baseline is 0); none for the reducer."""
    out = {}
    for k, b in baseline.items():
        if k.startswith("reducer_"):
            continue
        r = reduced[k]
        if isinstance(b, float) and isinstance(r, float):
            out[k] = 1.0 - r / b if b > 0 else 0.0
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            out[k] = np.where(b > 0, 1.0 - r / np.where(b > 0, b, 1), 0.0)
    return out


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
    reducer: str | None = None
    output_tokens: int = 0
    layer_table: np.ndarray | None = None  # [layers, K] visual tokens per layer (in-LLM reducers)

    def stages(self, ki: int) -> list[dict]:
        """Budget ``ki``'s reduced schedule, as in ``predict()``'s JSON."""
        if self.layer_table is None:
            counts = [int(self.keep[ki])] * self.components["layers"]
        else:
            counts = [int(c) for c in self.layer_table[:, ki]]
        return S.stages_of(counts, self.text_tokens)


def sweep(model, gpus, *, keep=None, retention=None, batch=1, text_tokens=64, visual_tokens=None,
          options: Options | None = None, calibration: Calibration | None = None, reducer=None,
          output_tokens: int = 0) -> Sweep:
    """Predict baseline (all visual tokens) and reduced costs over a grid, in one numpy pass.

    ``keep`` (visual tokens kept) or ``retention`` (fraction in (0, 1]) may be scalars or
    sequences; so may ``batch`` and ``gpus``. Output arrays are (GPU, batch, keep) shaped.
    ``reducer``: any object with ``hook`` (and ``stages`` or ``layer_tokens`` for in-LLM ones,
    ``cost`` for its own cost; see :mod:`costmodel.schedule`). ``output_tokens``: tokens the
    request generates (the first from the prefill, then one decode step each).
    """
    spec, llm, opts, gpu_specs, V, text, keep_arr, batch_arr = _resolve(
        model, gpus, visual_tokens, text_tokens, keep, retention, batch, options)
    out_tokens = _check_request(opts, reducer, output_tokens)
    G, Bn, K = len(gpu_specs), len(batch_arr), len(keep_arr)
    hw = E.hardware(gpu_specs, opts, calibration, shape=(G, 1, 1))
    b = batch_arr.reshape(1, Bn, 1).astype(np.float64)
    L = llm.num_hidden_layers
    segs = S.segments_grid(reducer, keep_arr, V, L)
    rcost = S.reducer_costs(reducer, spec, llm, opts, V, text, keep_arr, batch_arr) if reducer is not None else None
    proj = keep_arr.reshape(1, 1, K).astype(np.float64) if S.hook(reducer) == "pre-projector" else None
    base, red, stacks = evaluate(spec, llm, opts, hw, V, text, b, segs, rcost, proj, out_tokens)
    shape = (G, Bn, K)
    baseline = {k: np.broadcast_to(np.asarray(v, dtype=np.float64), (G, Bn, 1)) for k, v in base.items()}
    reduced = {k: np.broadcast_to(np.asarray(v, dtype=np.float64), shape) for k, v in red.items()}
    sav = savings(baseline, reduced)
    table = None
    if S.hook(reducer) == "in-llm":
        table = np.concatenate([np.broadcast_to(c.reshape(1, K), (n, K)) for _, n, c in segs], 0)
    sw = Sweep(model=spec.key, gpus=[g.key for g in gpu_specs], batch=batch_arr, keep=keep_arr,
               visual_tokens=V, text_tokens=text, options=opts,
               baseline={k: np.broadcast_to(v, shape) for k, v in baseline.items()}, reduced=reduced, savings=sav,
               reducer=None if reducer is None else S.reducer_name(reducer), output_tokens=out_tokens,
               layer_table=table)
    # the stacks' compute/memory time sums (calibration fits); per GPU the eager host floor, the bandwidth
    sw.components = {**stacks, "layers": L, "host_floor_s": np.ravel(hw.host_s_per_layer) * L,
                     "bandwidth": np.ravel(hw.bandwidth)}
    sw.calibrated = bool(np.any(hw.calibrated > 0))
    return sw
