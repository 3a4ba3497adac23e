"""Calibrations: the cost model's roofline times and energies corrected by measurements.

A :class:`Calibration` holds, for one GPU and dtype, what measurements taught the roofline:

* time: ``gpu_s = overhead_s + compute_scale * compute_time_s + memory_scale * memory_time_s``,
  where ``compute_time_s = sum(flops / peak)`` and ``memory_time_s = sum(bytes / bandwidth)``
  over the ops (1 / scale is an effective efficiency);
* an eager runtime's host floor: a framework that issues each decoder layer's kernels from
  Python cannot finish before the host has issued them, so an eager prefill takes
  ``max(host_s_per_layer * layers, gpu_s)``. A runtime that replays CUDA graphs pays no floor
  (``Options(cuda_graphs=True)``);
* energy: ``energy_j = static_w * time_s + j_per_flop * flops + j_per_byte * bytes``;
* a reducer's own phase: ``max(compute, memory) + launches * launch_s`` (``graph_launch_s``
  when replayed from a CUDA graph), the per-launch times fitted to measured reducer phases
  (:func:`fit_launch`); None keeps the GPU spec's first guess.

:func:`fit_time` and :func:`fit_energy` fit them to measured points: eager points (a
profiler's prefill) and CUDA-graph points (the same prefill replayed from a graph, which
identifies the GPU side alone). Imports nothing else of this project.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .energy import EnergyCoefficients, first_guess
from .specs import DATA_DIR, GPUSpec, SpecError

#: calibrations shipped with the package, one JSON file per GPU catalog name
CALIBRATIONS_DIR = DATA_DIR / "calibrations"


@dataclass
class Calibration:
    """Fitted corrections for one GPU (and dtype); see the module docstring for the model."""

    gpu: str
    dtype: str
    overhead_s: float
    compute_scale: float
    memory_scale: float
    host_s_per_layer: float = 0.0
    energy: EnergyCoefficients | None = None
    launch_s: float | None = None        # per kernel of a reducer, eager; None: the GPU spec's
    graph_launch_s: float | None = None  # per kernel replayed from a CUDA graph
    error: dict = field(default_factory=dict)
    n: int = 0
    source: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.to_json() + "\n")

    def time_s(self, compute_time_s: float, memory_time_s: float, layers: int = 0, eager: bool = True) -> float:
        """The calibrated time of work the roofline puts at these compute and memory sums."""
        gpu = self.overhead_s * (layers > 0) + self.compute_scale * compute_time_s + self.memory_scale * memory_time_s
        return max(gpu, self.host_s_per_layer * layers) if eager else gpu

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """From a file written by ``vtc validate``, or by GPU name from the shipped calibrations."""
        path = Path(path)
        if not path.exists() and (CALIBRATIONS_DIR / f"{path.name}.json").is_file():
            path = CALIBRATIONS_DIR / f"{path.name}.json"
        try:
            d = json.loads(path.read_text())
            energy = d.pop("energy", None)
            cal = cls(**d)
        except FileNotFoundError:
            raise SpecError(f"calibration {str(path)!r} is neither a file nor a shipped calibration; shipped: "
                            f"{', '.join(shipped_calibrations()) or 'none'}") from None
        except (json.JSONDecodeError, TypeError) as e:
            raise SpecError(f"calibration file {str(path)!r} is malformed: {e}") from None
        if energy:
            cal.energy = EnergyCoefficients(**energy)
        for k in ("overhead_s", "compute_scale", "memory_scale", "host_s_per_layer", "launch_s", "graph_launch_s"):
            if getattr(cal, k) is not None and not getattr(cal, k) >= 0:
                raise SpecError(f"calibration {str(path)!r}: {k} = {getattr(cal, k)!r} must be >= 0")
        return cal


def shipped_calibrations() -> list[str]:
    """GPU names with a calibration in the package (``vtc predict --calibration NAME``)."""
    return sorted(p.stem for p in CALIBRATIONS_DIR.glob("*.json"))


@dataclass
class TimePoint:
    """One measured time and the roofline's view of the same work."""

    measured_s: float
    compute_time_s: float
    memory_time_s: float
    layers: int
    eager: bool  # issued from the host op by op (True) or replayed from a CUDA graph (False)


def _model(theta, X):
    overhead, a, b, host = theta
    gpu = overhead + a * X[:, 0] + b * X[:, 1]
    return np.where(X[:, 3] > 0, np.maximum(gpu, host * X[:, 2]), gpu)


def fit_time(points: list[TimePoint]) -> tuple[tuple[float, float, float, float], np.ndarray]:
    """(overhead_s, compute_scale, memory_scale, host_s_per_layer) minimising the relative
    error, all non-negative; and the fitted times. The host floor is only identified when
    some points are eager; the GPU side best by CUDA-graph points."""
    from scipy.optimize import least_squares

    X = np.array([[p.compute_time_s, p.memory_time_s, p.layers, 1.0 if p.eager else 0.0] for p in points])
    y = np.array([p.measured_s for p in points])
    gpu_pts = X[:, 3] == 0 if (X[:, 3] == 0).sum() >= 3 else np.ones(len(y), bool)
    # start: a non-negative linear fit of the GPU-side points, the host floor from the eager ones
    A = np.c_[np.ones(gpu_pts.sum()), X[gpu_pts, :2]]
    from scipy.optimize import nnls
    start_lin, _ = nnls(A / y[gpu_pts, None], np.ones(gpu_pts.sum()))
    eager = X[:, 3] > 0
    host0 = float(np.median(y[eager] / X[eager, 2])) if eager.any() else 0.0
    theta0 = np.r_[start_lin, host0 * 0.9]
    fit = least_squares(lambda t: (_model(t, X) - y) / y, np.maximum(theta0, 1e-12), bounds=(0, np.inf),
                        x_scale=np.maximum(np.abs(theta0), 1e-6))
    theta = tuple(float(v) for v in fit.x)
    if not eager.any():
        theta = theta[:3] + (0.0,)
    return theta, _model(np.asarray(theta), X)


def relative_errors(pred, meas) -> np.ndarray:
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    return np.abs(pred - meas) / meas


def fit_energy(time_s, flops, bytes_, energy_j, gpu: GPUSpec, dtype: str) -> tuple[EnergyCoefficients, dict]:
    """Non-negative energy coefficients fitted to measured energies; and the errors before
    (the first guess) and after."""
    from sklearn.linear_model import LinearRegression

    X = np.c_[time_s, flops, bytes_].astype(float)
    y = np.asarray(energy_j, float)
    scale = X.max(0)
    scale[scale == 0] = 1
    coef = LinearRegression(positive=True, fit_intercept=False).fit(X / scale, y).coef_ / scale
    fitted = EnergyCoefficients(static_w=float(coef[0]), j_per_flop=float(coef[1]), j_per_byte=float(coef[2]),
                                source=f"fitted to {len(y)} NVML measurements")
    first = first_guess(gpu, dtype)
    before = relative_errors(X @ [first.static_w, first.j_per_flop, first.j_per_byte], y)
    after = relative_errors(X @ coef, y)
    return fitted, {"energy_before_median_abs_rel": float(np.median(before)),
                    "energy_after_median_abs_rel": float(np.median(after)), "energy_n": len(y)}


def fit_launch(measured_s, roofline_s, launches) -> tuple[float | None, dict]:
    """The per-launch time minimising the relative error of ``roofline + launches x t`` against
    measured reducer phases (closed form, clamped at 0); None without points. And the errors."""
    m, r, n = (np.asarray(v, float) for v in (measured_s, roofline_s, launches))
    ok = (m > 0) & (n > 0)
    if not ok.any():
        return None, {"n": 0}
    m, r, n = m[ok], r[ok], n[ok]
    t = max(0.0, float(np.sum(n / m * (m - r) / m) / np.sum((n / m) ** 2)))
    err = relative_errors(r + n * t, m)
    return t, {"n": int(ok.sum()), "median_abs_rel": float(np.median(err)), "max_abs_rel": float(err.max())}
