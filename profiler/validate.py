"""``vtc validate``: the cost model's predictions next to a profile's measurements, and a calibration.

For every measured condition the cost model predicts the same thing (model, GPU, dtype,
attention kernel, kept tokens, prompt length): LLM prefill time, vision-tower time, and the
fraction of prefill time saved against the same image's all-tokens baseline. The errors are
printed before and after a per-GPU calibration fitted with scikit-learn:

* time: ``measured = overhead + a * compute_time + b * memory_time`` (non-negative least
  squares), where compute_time and memory_time are the cost model's sums of flops / peak and
  bytes / bandwidth; 1/a and 1/b are the effective compute and bandwidth efficiencies.
* energy: ``measured_j = static_w * time + j_per_flop * flops + j_per_byte * bytes`` fitted
  to the NVML measurements, when the run has them.

The calibration is saved as JSON; ``vtc predict --calibration FILE`` applies it. The errors
"after" are in-sample (the same rows fit and judge); with few rows, read them as a floor.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import costmodel as cm

from .rows import read_rows


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
    predicted_prefill_s: float
    predicted_vision_s: float | None
    compute_time_s: float
    memory_time_s: float
    flops_total: float
    bytes_total: float
    predicted_saving: float | None = None
    measured_saving: float | None = None
    calibrated_prefill_s: float | None = None


@dataclass
class Report:
    gpu: str
    spec: str
    comparisons: list[Comparison] = field(default_factory=list)
    calibration: cm.Calibration | None = None
    skipped: list[str] = field(default_factory=list)


def load_profile_rows(paths) -> list[dict]:
    rows = []
    for p in paths:
        rows += [r for r in read_rows(p) if r.get("kind") == "profile" and r.get("status") == "ok"]
    if not rows:
        raise ValidateError(f"no ok profile rows in {', '.join(map(str, paths))}")
    return rows


def _resolve_gpu(name: str, override: str | None) -> cm.GPUSpec:
    if override:
        return cm.load_gpu(override)
    key = cm.gpu_for_device_name(name)
    if key is None:
        raise ValidateError(f"no hardware spec matches device {name!r}; give one with --gpu (a catalog name or a "
                            f"spec file: {', '.join(cm.gpu_names())})")
    return cm.load_gpu(key)


def _resolve_model(spec_key: str, override: str | None):
    try:
        return cm.load_model(override or spec_key)
    except cm.SpecError:
        raise ValidateError(f"the run's model spec {spec_key!r} is not in the catalog; give it with --model") from None


def compare(rows: list[dict], gpu_override: str | None = None, model_override: str | None = None) -> list[Report]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["gpu"], r.get("spec", r["model"]), r.get("dtype"), r.get("attn_implementation"))].append(r)
    reports = []
    for (gpu_name, spec_key, dtype, attn), grp in groups.items():
        gpu = _resolve_gpu(gpu_name, gpu_override)
        model = _resolve_model(spec_key, model_override)
        rep = Report(gpu=gpu.key, spec=model.key)
        baseline = {(r["image"], r.get("batch", 1)): r for r in grp if r["reducer"] == "none"}
        for r in grp:
            opts = cm.Options(a_bits=_bits(dtype), w_bits=_bits(dtype), flash_attention=_flash(r))
            text = int(r.get("text_tokens") or 64)
            keep = max(1, int(round(r.get("kept_tokens") or r["keep"])))
            sw = cm.sweep(model, [gpu], keep=[keep, model.visual_tokens], batch=int(r.get("batch") or 1),
                          text_tokens=text, options=opts)
            red = sw.components["reduced"]
            pred = float(sw.reduced["time_s"][0, 0, 0])
            tc, tm = float(red["compute_time_s"][0, 0, 0]), float(red["memory_time_s"][0, 0, 0])
            if r.get("hook") == "in-llm":  # layers before K see every token, the rest only `keep`
                k_layer = int(r.get("options", {}).get("reducer_params", {}).get("layer", 2))
                f = k_layer / model.llm.num_hidden_layers
                full = float(sw.reduced["time_s"][0, 0, 1])
                pred = f * full + (1 - f) * pred
                tc = f * float(red["compute_time_s"][0, 0, 1]) + (1 - f) * tc
                tm = f * float(red["memory_time_s"][0, 0, 1]) + (1 - f) * tm
            vis = sw.reduced.get("vision_time_s")
            c = Comparison(row=r, predicted_prefill_s=pred,
                           predicted_vision_s=None if vis is None else float(vis[0, 0, 0]),
                           compute_time_s=tc, memory_time_s=tm, flops_total=float(red["flops"][0, 0, 0]),
                           bytes_total=float(red["memory_access_bytes"][0, 0, 0]))
            b = baseline.get((r["image"], r.get("batch", 1)))
            if b is not None and r["reducer"] != "none" and b.get("prefill_time_s"):
                c.measured_saving = 1 - r["prefill_time_s"] / b["prefill_time_s"]
                c.predicted_saving = 1 - pred / float(sw.reduced["time_s"][0, 0, 1])
            rep.comparisons.append(c)
        rep.calibration = fit_calibration(rep, gpu, dtype)
        reports.append(rep)
    return reports


def _rel_errors(pred, meas):
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    return np.abs(pred - meas) / meas


def fit_calibration(rep: Report, gpu: cm.GPUSpec, dtype: str) -> cm.Calibration | None:
    from sklearn.linear_model import LinearRegression

    comps = [c for c in rep.comparisons if c.row.get("prefill_time_s")]
    if len(comps) < 3:
        rep.skipped.append(f"calibration needs >= 3 measured conditions, have {len(comps)}")
        return None
    X = np.array([[c.compute_time_s, c.memory_time_s] for c in comps])
    y = np.array([c.row["prefill_time_s"] for c in comps])
    reg = LinearRegression(positive=True).fit(X, y)
    overhead = max(0.0, float(reg.intercept_))
    a, b = (float(v) for v in reg.coef_)
    for c, x in zip(comps, X):
        c.calibrated_prefill_s = overhead + a * x[0] + b * x[1]
    before = _rel_errors([c.predicted_prefill_s for c in comps], y)
    after = _rel_errors([c.calibrated_prefill_s for c in comps], y)
    error = {"before_median_abs_rel": float(np.median(before)), "before_max_abs_rel": float(before.max()),
             "after_median_abs_rel": float(np.median(after)), "after_max_abs_rel": float(after.max()),
             "in_sample": True}
    energy = None
    ec = [c for c in rep.comparisons if c.row.get("energy_j") and c.row.get("gpu_time_s")]
    if len(ec) >= 3:
        Xe = np.array([[c.row["gpu_time_s"], c.flops_total, c.bytes_total] for c in ec])
        ye = np.array([c.row["energy_j"] for c in ec])
        scale = Xe.max(0)
        scale[scale == 0] = 1
        ereg = LinearRegression(positive=True, fit_intercept=False).fit(Xe / scale, ye)
        coef = ereg.coef_ / scale
        energy = cm.EnergyCoefficients(static_w=float(coef[0]), j_per_flop=float(coef[1]), j_per_byte=float(coef[2]),
                                       source=f"fitted to {len(ec)} NVML measurements")
        first = cm.first_guess(gpu, "bf16" if _bits(dtype) == 16 else "fp32")
        e_before = _rel_errors([first.static_w * c.row["gpu_time_s"] + first.j_per_flop * c.flops_total
                                + first.j_per_byte * c.bytes_total for c in ec], ye)
        e_after = _rel_errors(Xe @ coef, ye)
        error.update({"energy_before_median_abs_rel": float(np.median(e_before)),
                      "energy_after_median_abs_rel": float(np.median(e_after)), "energy_n": len(ec)})
    else:
        rep.skipped.append(f"energy calibration needs >= 3 rows with energy_j, have {len(ec)}")
    return cm.Calibration(gpu=gpu.key, dtype=dtype or "", overhead_s=overhead, compute_scale=a, memory_scale=b,
                          energy=energy, error=error, n=len(comps),
                          source=f"vtc validate on {len(comps)} conditions of {rep.spec}")


def validate(paths, *, gpu: str | None = None, model: str | None = None, calibration_out: str | None = None):
    rows = load_profile_rows(paths)
    reports = compare(rows, gpu, model)
    saved = []
    if calibration_out:
        fitted = [r for r in reports if r.calibration is not None]
        for r in fitted:
            path = Path(calibration_out)
            if len(fitted) > 1:
                path = path.with_name(f"{path.stem}.{r.gpu}{path.suffix or '.json'}")
            r.calibration.save(path)
            saved.append(str(path))
    return reports, saved
