"""GPU energy, measured in windows (Zeus-style ``begin_window`` / ``end_window``).

Sources, best first:

* :class:`NVMLEnergy` reads the cumulative energy counter
  (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since driver load). The counter refreshes
  about every 100 ms, so :func:`measure_energy` repeats the work until the window lasts at
  least 2 s and divides by the count; a zero or negative delta is rejected, not reported.
* :class:`NVMLPowerSampling` integrates ``nvmlDeviceGetPowerUsage`` sampled by a thread, for
  GPUs without the counter (pre-Volta).
* :class:`NoEnergy`: no NVML (a CPU, no driver, no nvidia-ml-py, a MIG slice). Energy is then
  ``None`` with the reason, never 0.
* :class:`ReplayEnergy` plays back a recorded trace, so the whole energy path runs in tests on a
  CPU. :class:`TraceRecorder` records such traces on a GPU.

Gross energy per request is the primary figure; an idle-subtracted one is secondary. A new
source is a class registered with ``@register_source("name")``: ``--energy`` offers it, and
``auto`` tries it in registration order. The NVML handle comes from :mod:`profiler.device`.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class EnergyWindow:
    energy_j: float
    time_s: float


class EnergySource(ABC):
    name = "none"
    available = False
    unavailable_reason: str | None = None

    @abstractmethod
    def begin_window(self) -> None:
        """Start a measurement window."""

    @abstractmethod
    def end_window(self) -> EnergyWindow:
        """Energy and time since begin_window."""

    def describe(self) -> dict:
        return {"energy_source": self.name, "energy_unavailable_reason": self.unavailable_reason}

    def close(self) -> None:
        pass


class NoEnergy(EnergySource):
    def __init__(self, reason: str):
        self.unavailable_reason = reason

    def begin_window(self) -> None:
        raise RuntimeError(f"no energy source: {self.unavailable_reason}")

    end_window = begin_window


#: energy sources a GPU can use, by CLI name, in preference order for ``--energy auto``
SOURCES: dict[str, type] = {}


def register_source(cli_name: str):
    """Register an energy source class under ``cli_name`` (a decorator). Its ``__init__`` takes
    the torch device; it raises when the device or driver cannot serve it."""
    def deco(cls):
        if cli_name in SOURCES or cli_name in ("auto", "none"):
            raise ValueError(f"energy source name {cli_name!r} is taken")
        SOURCES[cli_name] = cls
        return cls
    return deco


def source_choices() -> list[str]:
    return ["auto", *SOURCES, "none"]


@register_source("nvml")
class NVMLEnergy(EnergySource):
    name = "nvml-total-energy"
    available = True

    def __init__(self, device, clock: Callable[[], float] = time.perf_counter):
        from .device import nvml_device

        self.dev = nvml_device(device)
        self.nvml, self.handle = self.dev.nvml, self.dev.handle
        self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # raises NotSupported on old GPUs
        self.clock = clock
        self._start = None

    def _read_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3

    def begin_window(self) -> None:
        self._start = (self.clock(), self._read_j())

    def end_window(self) -> EnergyWindow:
        t1, e1 = self.clock(), self._read_j()
        t0, e0 = self._start
        return EnergyWindow(energy_j=e1 - e0, time_s=t1 - t0)


@register_source("power")
class NVMLPowerSampling(EnergySource):
    name = "nvml-power-sampling"
    available = True

    def __init__(self, device, period_s: float = 0.01):
        from .device import nvml_device

        self.dev = nvml_device(device)
        self.nvml, self.handle = self.dev.nvml, self.dev.handle
        self.nvml.nvmlDeviceGetPowerUsage(self.handle)
        self.period_s = period_s
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = None

    def _run(self):
        while not self._stop.is_set():
            self._samples.append((time.perf_counter(), self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3))
            time.sleep(self.period_s)

    def begin_window(self) -> None:
        self._samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def end_window(self) -> EnergyWindow:
        self._stop.set()
        self._thread.join()
        s = np.asarray(self._samples)
        if len(s) < 2:
            return EnergyWindow(0.0, 0.0)
        return EnergyWindow(energy_j=float(np.trapezoid(s[:, 1], s[:, 0])), time_s=float(s[-1, 0] - s[0, 0]))


class ReplayEnergy(EnergySource):
    """Plays back a recorded trace: ``{"time_s": [...], "energy_j": [...]}`` (cumulative energy).

    The window's energy is the trace's energy between the window's start and end, measured on
    ``clock`` from the first ``begin_window`` (interpolated linearly).
    """

    name = "replay"
    available = True

    def __init__(self, trace: dict | str | Path, clock: Callable[[], float] = time.perf_counter):
        if not isinstance(trace, dict):
            trace = json.loads(Path(trace).read_text())
        self.t = np.asarray(trace["time_s"], dtype=np.float64)
        self.e = np.asarray(trace["energy_j"], dtype=np.float64)
        if self.t.ndim != 1 or self.t.shape != self.e.shape or self.t.size < 2 or np.any(np.diff(self.t) <= 0):
            raise ValueError("an energy trace needs matching time_s and energy_j lists, time strictly increasing")
        self.t = self.t - self.t[0]
        self.clock = clock
        self._origin = None
        self._start = None

    def _energy_at(self, t: float) -> float:
        return float(np.interp(t, self.t, self.e))

    def begin_window(self) -> None:
        now = self.clock()
        if self._origin is None:
            self._origin = now
        self._start = now - self._origin

    def end_window(self) -> EnergyWindow:
        end = self.clock() - self._origin
        return EnergyWindow(self._energy_at(end) - self._energy_at(self._start), end - self._start)


def open_source(device, kind: str = "auto", replay: str | None = None) -> EnergySource:
    """The best energy source for ``device`` (a torch.device), or NoEnergy with the reason.
    ``kind``: ``auto`` (the registered sources in order), a registered name, or ``none``."""
    if replay is not None:
        return ReplayEnergy(replay)
    if kind == "none":
        return NoEnergy("energy measurement switched off (--energy none)")
    if kind != "auto" and kind not in SOURCES:
        raise ValueError(f"energy source {kind!r} is not allowed; use one of {', '.join(source_choices())}")
    if getattr(device, "type", str(device)) != "cuda":
        return NoEnergy("not measured on the CPU: NVML reads NVIDIA GPUs only")
    errors = []
    for name in (SOURCES if kind == "auto" else [kind]):
        try:
            return SOURCES[name](device)
        except Exception as e:  # not supported on this GPU, a MIG slice, or no NVML at all
            errors.append(f"{SOURCES[name].name}: {e}")
    return NoEnergy("; ".join(errors))


def measure_energy(fn: Callable[[], None], source: EnergySource, sync: Callable[[], None],
                   min_window_s: float = 2.0, max_calls: int = 100_000) -> dict:
    """Energy per call of ``fn``: repeat it until the window lasts ``min_window_s``, divide by the count."""
    if not source.available:
        return {"energy_j": None, "energy_unavailable_reason": source.unavailable_reason}
    clock = getattr(source, "clock", time.perf_counter)  # the source's own time base
    sync()
    source.begin_window()
    calls, t0 = 0, clock()
    while calls < max_calls:
        fn()
        calls += 1
        if calls == 1 or calls % 4 == 0:
            sync()
            if clock() - t0 >= min_window_s:
                break
    sync()
    w = source.end_window()
    if not w.energy_j > 0 or not w.time_s > 0:
        return {"energy_j": None,
                "energy_unavailable_reason": f"{source.name} gave a non-positive delta ({w.energy_j:.4g} J over "
                                             f"{w.time_s:.3g} s, {calls} calls); rejected"}
    return {"energy_j": w.energy_j / calls, "energy_window_s": w.time_s, "energy_calls": calls,
            "power_w": w.energy_j / w.time_s, "energy_source": source.name}


def idle_power_w(source: EnergySource, seconds: float = 1.0) -> float | None:
    """Average power over an idle window (for the secondary, idle-subtracted figure)."""
    if not source.available:
        return None
    source.begin_window()
    time.sleep(seconds)
    w = source.end_window()
    return w.energy_j / w.time_s if w.energy_j > 0 and w.time_s > 0 else None


class TraceRecorder:
    """Samples a cumulative energy reading every ``period_s`` in a thread, for ReplayEnergy."""

    def __init__(self, read_j: Callable[[], float], period_s: float = 0.02):
        self.read_j, self.period_s = read_j, period_s
        self.t: list[float] = []
        self.e: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.t.append(time.perf_counter())
            self.e.append(self.read_j())
            time.sleep(self.period_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"time_s": self.t, "energy_j": self.e}))
