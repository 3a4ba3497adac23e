"""Energy per forward: a first-principles estimate, and calibrations fitted to measurements.

``energy_j = static_w * time_s + j_per_flop * flops + j_per_byte * bytes``. The first-guess
coefficients derive from the GPU's TDP, peak and bandwidth by the rule in
``data/energy.toml``; a :class:`Calibration` replaces them (and corrects the time) with values
fitted to NVML measurements.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from .specs import DATA_DIR, GPUSpec, SpecError


@dataclass(frozen=True)
class EnergyCoefficients:
    static_w: float
    j_per_flop: float
    j_per_byte: float
    source: str


@cache
def _rule() -> dict:
    with open(DATA_DIR / "energy.toml", "rb") as f:
        return tomllib.load(f)


def first_guess(gpu: GPUSpec, dtype: str) -> EnergyCoefficients:
    r = _rule()
    static = r["static_fraction_of_tdp"] * gpu.tdp_w
    dynamic = gpu.tdp_w - static
    return EnergyCoefficients(static_w=static, j_per_flop=r["compute_share"] * dynamic / gpu.peak_for(dtype),
                              j_per_byte=r["memory_share"] * dynamic / gpu.memory_bandwidth_bytes_per_s,
                              source="first guess (costmodel/data/energy.toml)")


@dataclass
class Calibration:
    """Fitted corrections for one GPU (and dtype).

    time:   measured_s = overhead_s + compute_scale * compute_time_s + memory_scale * memory_time_s,
            where compute_time_s = sum(flops / peak) and memory_time_s = sum(bytes / bandwidth) over
            the ops; 1 / compute_scale and 1 / memory_scale are the effective efficiencies.
    energy: the three energy coefficients, fitted.
    error:  the fit's errors (relative), before and after, for the record.
    """

    gpu: str
    dtype: str
    overhead_s: float
    compute_scale: float
    memory_scale: float
    energy: EnergyCoefficients | None = None
    error: dict = field(default_factory=dict)
    n: int = 0
    source: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        try:
            d = json.loads(Path(path).read_text())
            energy = d.pop("energy", None)
            cal = cls(**d)
        except FileNotFoundError:
            raise SpecError(f"calibration file {str(path)!r} does not exist") from None
        except (json.JSONDecodeError, TypeError) as e:
            raise SpecError(f"calibration file {str(path)!r} is malformed: {e}") from None
        if energy:
            cal.energy = EnergyCoefficients(**energy)
        for k in ("overhead_s", "compute_scale", "memory_scale"):
            if not getattr(cal, k) >= 0:
                raise SpecError(f"calibration {str(path)!r}: {k} = {getattr(cal, k)!r} must be >= 0")
        return cal
