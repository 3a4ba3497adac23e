"""Energy per forward: a first-principles estimate, and calibrations fitted to measurements.

``energy_j = static_w * time_s + j_per_flop * flops + j_per_byte * bytes``. The first-guess
coefficients derive from the GPU's TDP, peak and bandwidth by the rule in
``data/energy.toml``; a :class:`Calibration` replaces them (and corrects the time) with values
fitted to NVML measurements (``costmodel.calibrate``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache

from .specs import DATA_DIR, GPUSpec


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
