"""The cost model's predictions next to measured rows (``vtc validate``), and a calibration.

Measurements come from two kinds of rows:

* ``kind: profile`` (``vtc profile``): the prefill of an eager transformers forward, kernels
  issued from Python one by one; with the vision tower's time and the energy per call;
* ``kind: graph-timing`` (the GPU check's ``graphs`` stage, :mod:`profiler.graph_timing`): the
  same LLM prefill timed eager and replayed from a CUDA graph, which leaves the GPU's own time.

For every measurement the cost model predicts the same work (model, GPU, dtype, attention
kernel, kept tokens, prompt length, batch), in-LLM methods with their exact per-layer schedule
(the rows name the reducer, its parameters and its hook; this module imports no reducer, so the
caller passes ``reducer_for(row)`` that builds the reducer object, as ``vtc validate`` does).
The reducer's own phase (``reducer_time_s`` of profile rows, ``kind: reducer-timing`` rows) is
compared with its cost model and fits the per-launch times (:mod:`costmodel.reducer_validation`). The errors are printed before and after a per-GPU
calibration (:mod:`costmodel.calibrate`): ``gpu_s = overhead + a * compute_time + b *
memory_time`` and, for eager points, a host floor ``max(host_s_per_layer * layers, gpu_s)``,
fitted on every model measured on that GPU together; energy coefficients are fitted to the
NVML measurements. The calibration is saved as JSON; ``vtc predict --calibration FILE|GPU``
applies it. The errors "after" are in-sample (the same rows fit and judge).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import schedule as S
from .calibrate import Calibration, TimePoint, fit_energy, fit_time, relative_errors
from .predict import Options, sweep
from .reducer_validation import ReducerComparison, fit_launch_times, reducer_comparisons
from .specs import GPUSpec, SpecError, gpu_for_device_name, gpu_names, load_gpu, load_model, model_names


class ValidateError(ValueError):
    pass


def _bits(dtype: str) -> int:
    return 32 if dtype in ("float32", "fp32") else 16


def _flash(row: dict) -> bool:
    # SDPA on a GPU in 16-bit dispatches to a fused flash kernel; eager (and the CPU) materialise scores
    return row.get("attn_implementation") in ("sdpa", "flash_attention_2") and row.get("gpu") != "cpu" \
        and _bits(row.get("dtype", "")) == 16


@dataclass
class Comparison:
    row: dict
    measured_s: float
    eager: bool                      # False: replayed from a CUDA graph
    predicted_prefill_s: float
    predicted_vision_s: float | None
    compute_time_s: float
    memory_time_s: float
    flops_total: float
    bytes_total: float
    layers: int
    predicted_saving: float | None = None
    measured_saving: float | None = None
    calibrated_prefill_s: float | None = None
    reducer_s: float = 0.0  # an in-LLM reducer's own time, predicted, inside the measured prefill

    @property
    def label(self) -> str:
        return "eager" if self.eager else "graph"


@dataclass
class Report:
    gpu: str
    spec: str
    comparisons: list[Comparison] = field(default_factory=list)
    calibration: Calibration | None = None
    skipped: list[str] = field(default_factory=list)
    reducer_phase: list[ReducerComparison] = field(default_factory=list)


def measured_rows(rows, where: str = "the input") -> list[dict]:
    """The rows a validation uses: ok profile rows, ok LLM-prefill graph-timing rows and ok
    reducer-timing rows."""
    out = [r for r in rows if r.get("status") == "ok" and (
        r.get("kind") in ("profile", "reducer-timing")
        or (r.get("kind") == "graph-timing" and r.get("part") == "llm-prefill"))]
    if not out:
        raise ValidateError(f"no ok profile rows in {where}")
    return out


def _resolve_gpu(name: str, override: str | None, flag: str = "--gpu") -> GPUSpec:
    if override:
        return load_gpu(override)
    if name == "cpu":
        raise ValidateError(f"these rows were measured on a CPU; give its spec with {flag} "
                            "costmodel/data/cpu-generic.toml (or a spec file of your CPU)")
    key = gpu_for_device_name(name)
    if key is None:
        raise ValidateError(f"no hardware spec matches device {name!r}; give one with {flag} (a catalog name or a "
                            f"spec file: {', '.join(gpu_names())})")
    return load_gpu(key)


def _resolve_model(spec_key: str, override: str | None, flag: str | None = "--model"):
    try:
        model = load_model(override or spec_key)
    except SpecError:
        if override:
            raise ValidateError(f"--model {override!r} is not in the catalog nor a spec file; use one of "
                                f"the VLMs {', '.join(model_names()['vlm'])} or a TOML spec file") from None
        hint = f"give it with {flag}" if flag else "vtc validate --model names the spec these rows measured"
        raise ValidateError(f"the run's model spec {spec_key!r} is not in the catalog; {hint}") from None
    if not hasattr(model, "vision"):
        raise ValidateError(f"--model {override or spec_key!r} is an LLM, not a VLM; validation needs the VLM the "
                            "rows measured (e.g. llava-1.5-7b)")
    return model


def _measurements(r: dict) -> list[tuple[float, bool]]:
    """(seconds, eager) pairs a row measured of the LLM prefill."""
    if r["kind"] == "profile":
        return [(r["prefill_time_s"], True)] if r.get("prefill_time_s") else []
    out = [(r["eager_time_s"], True)] if r.get("eager_time_s") else []
    return out + ([(r["graph_time_s"], False)] if r.get("graph_time_s") else [])


def _compare_row(r: dict, model, gpu: GPUSpec, dtype: str, reducer_for=None) -> list[Comparison]:
    """Predictions of a row's LLM prefill; an in-LLM reducer's exact schedule and its own time
    (``select`` runs inside the prefill) from the object ``reducer_for(row)`` returns."""
    opts = Options(a_bits=_bits(dtype), w_bits=_bits(dtype), flash_attention=_flash(r))
    text = int(r.get("text_tokens") or r.get("options", {}).get("text_tokens") or 64)
    keep = max(1, int(round(r.get("kept_tokens") or r["keep"])))
    reducer = None
    if r.get("hook") == "in-llm":
        reducer = reducer_for(r) if reducer_for is not None else None
        if reducer is None or S.hook(reducer) != "in-llm":
            raise ValidateError(f"row of in-LLM reducer {r.get('reducer')!r}: its schedule needs the reducer object; "
                                "pass reducer_for (vtc validate does)")
    kw = dict(batch=int(r.get("batch") or 1), text_tokens=text, options=opts)
    sw = sweep(model, [gpu], keep=[keep], reducer=reducer, **kw)
    full = float(sweep(model, [gpu], keep=[model.visual_tokens], **kw).reduced["time_s"][0, 0, 0])
    red = sw.components["reduced"]
    own = float(sw.reduced["reducer_time_s"][0, 0, 0])  # in-LLM: inside the prefill; else 0 here
    pred = float(sw.reduced["time_s"][0, 0, 0]) + own
    vis = sw.reduced.get("vision_time_s")
    return [Comparison(row=r, measured_s=m, eager=eager, predicted_prefill_s=pred,
                       predicted_vision_s=None if vis is None else float(vis[0, 0, 0]),
                       compute_time_s=float(red["compute_time_s"][0, 0, 0]),
                       memory_time_s=float(red["memory_time_s"][0, 0, 0]), flops_total=float(red["flops"][0, 0, 0]),
                       bytes_total=float(red["memory_access_bytes"][0, 0, 0]), layers=model.llm.num_hidden_layers,
                       predicted_saving=None if keep >= model.visual_tokens and reducer is None else 1 - pred / full,
                       reducer_s=own)
            for m, eager in _measurements(r)]


def _set_measured_savings(comps: list[Comparison]) -> None:
    """Saving against the all-tokens measurement of the same image, batch and execution."""
    def key(c):
        r = c.row
        return (r["kind"], r.get("image"), r.get("batch", 1), c.eager)
    base = {key(c): c for c in comps if c.row.get("keep") in (None, c.row.get("visual_tokens")) or
            c.row.get("reducer") == "none"}
    for c in comps:
        b = base.get(key(c))
        if b is not None and b is not c and c.predicted_saving is not None:
            c.measured_saving = 1 - c.measured_s / b.measured_s


def compare(rows: list[dict], gpu_override: str | None = None, model_override: str | None = None, *,
            fit: bool = True, gpu_flag: str = "--gpu", model_flag: str | None = "--model",
            reducer_for=None) -> list[Report]:
    """Predictions beside measurements per (GPU, model); with ``fit``, one calibration per GPU.
    ``reducer_for(row)``: the row's reducer object (in-LLM schedules, reducer-phase costs)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("kind") != "reducer-timing":
            groups[(r["gpu"], r.get("spec", r["model"]), r.get("dtype"), r.get("attn_implementation"))].append(r)
    reports, by_gpu = [], defaultdict(list)
    for (gpu_name, spec_key, dtype, _attn), grp in groups.items():
        gpu = _resolve_gpu(gpu_name, gpu_override, gpu_flag)
        model = _resolve_model(spec_key, model_override, model_flag)
        rep = Report(gpu=gpu.key, spec=model.key)
        for r in grp:
            rep.comparisons += _compare_row(r, model, gpu, dtype, reducer_for)
        _set_measured_savings(rep.comparisons)
        reports.append(rep)
        by_gpu[(gpu.key, dtype)].append(rep)
    phase = reducer_comparisons(rows, lambda name: _resolve_gpu(name, gpu_override, gpu_flag),
                                lambda key: _resolve_model(key, model_override, model_flag), reducer_for)
    for (gpu_key, dtype), reps in by_gpu.items():  # one calibration per GPU, fitted on every model together
        cal = fit_calibration(reps, load_gpu(gpu_override or gpu_key), dtype) if fit else None
        for rep in reps:
            rep.calibration = cal
    for gpu_key, comps in phase.items():
        reps = [rep for rep in reports if rep.gpu == gpu_key] or [Report(gpu=gpu_key, spec="reducer phase")]
        if reps[0] not in reports:
            reports.append(reps[0])
        reps[0].reducer_phase = comps
        launch, graph, err = fit_launch_times(comps)
        if fit and reps[0].calibration is not None:
            cal = reps[0].calibration
            cal.launch_s, cal.graph_launch_s = launch, graph
            cal.error.update(err)
        elif fit:
            reps[0].skipped.append("the reducer phase's per-launch times are fitted into an LLM calibration; "
                                   "this GPU has none (need >= 3 measured prefills)")
    return reports


def fit_calibration(reps: list[Report], gpu: GPUSpec, dtype: str) -> Calibration | None:
    """The LLM's time model and energy coefficients, fitted on the whole-model prefills; rows of
    in-LLM reducers (run layer by layer, ``select`` inside) are predicted, not fitted: their
    calibrated time is the fitted model's for their schedule plus the reducer's own time."""
    comps = [c for rep in reps for c in rep.comparisons]
    fitted_on = [c for c in comps if c.row.get("hook") != "in-llm"]
    if len(fitted_on) < 3:
        for rep in reps:
            rep.skipped.append(f"calibration needs >= 3 measured conditions, have {len(fitted_on)}")
        return None
    points = [TimePoint(c.measured_s, c.compute_time_s, c.memory_time_s, c.layers, c.eager) for c in fitted_on]
    (overhead, a, b, host), _ = fit_time(points)
    model = Calibration(gpu=gpu.key, dtype=dtype or "", overhead_s=overhead, compute_scale=a, memory_scale=b,
                        host_s_per_layer=host)
    for c in comps:
        c.calibrated_prefill_s = model.time_s(c.compute_time_s, c.memory_time_s, c.layers, c.eager) + c.reducer_s
    y = np.array([c.measured_s for c in comps])
    before = relative_errors([c.predicted_prefill_s for c in comps], y)
    after = relative_errors([c.calibrated_prefill_s for c in comps], y)
    error = {"before_median_abs_rel": float(np.median(before)), "before_max_abs_rel": float(before.max()),
             "after_median_abs_rel": float(np.median(after)), "after_max_abs_rel": float(after.max()),
             "in_sample": True, "eager_points": int(sum(c.eager for c in fitted_on)),
             "graph_points": int(sum(not c.eager for c in fitted_on)), "in_llm_points_not_fitted":
             len(comps) - len(fitted_on)}
    ec = [c for c in comps if c.row["kind"] == "profile" and c.row.get("energy_j") and c.row.get("gpu_time_s")
          and not c.row.get("options", {}).get("decode_steps")]
    energy = None
    if len(ec) >= 3:
        energy, err = fit_energy([c.row["gpu_time_s"] for c in ec], [c.flops_total for c in ec],
                                    [c.bytes_total for c in ec], [c.row["energy_j"] for c in ec], gpu,
                                    "bf16" if _bits(dtype) == 16 else "fp32")
        error.update(err)
    else:
        reps[0].skipped.append(f"energy calibration needs >= 3 rows with energy_j, have {len(ec)}")
    specs = sorted({rep.spec for rep in reps})
    model.energy, model.error, model.n = energy, error, len(fitted_on)
    model.source = f"vtc validate on {len(fitted_on)} measurements of {', '.join(specs)}"
    return model


def validate(rows: list[dict], *, gpu: str | None = None, model: str | None = None,
             calibration_out: str | None = None, where: str = "the input", reducer_for=None):
    """Compare, fit, and save the calibration(s) to ``calibration_out`` (one file per GPU).
    ``reducer_for(row)``: the row's reducer object, or None (see :func:`compare`)."""
    rows = measured_rows(rows, where)
    reports = compare(rows, gpu, model, reducer_for=reducer_for)
    saved = []
    if calibration_out:
        fitted = {id(r.calibration): r.calibration for r in reports if r.calibration is not None}
        if not fitted:
            usable = sum(1 for r in reports for c in r.comparisons if c.row.get("hook") != "in-llm")
            raise ValidateError(f"no calibration could be fitted: it needs >= 3 measured conditions per GPU that run "
                                f"the whole prefill at once (in-LLM reducers' rows do not count), these rows have "
                                f"{usable}; {calibration_out} not written")
        for cal in fitted.values():
            path = Path(calibration_out)
            if len(fitted) > 1:
                path = path.with_name(f"{path.stem}.{cal.gpu}{path.suffix or '.json'}")
            cal.save(path)
            saved.append(str(path))
    return reports, saved
