"""Timing protocol: per-phase timers (CUDA events on a GPU, perf_counter after a sync on a CPU)
and the statistics every timed value is reported with (median, IQR, p90, n, bootstrap 95% CI).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch

NOISY_IQR_OVER_MEDIAN = 0.10


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Times named phases of one request.

    On CUDA each phase is bracketed by events recorded on the current stream and read after one
    synchronisation at the end (no sync inside the timed region); on the CPU, where work is
    synchronous, ``perf_counter`` is read at each boundary. CPU-side phases (``host=True``,
    e.g. image preprocessing) always use ``perf_counter``. A phase entered several times
    accumulates; a phase ``nested_in`` another (an in-LLM reducer's scoring inside the prefill)
    is subtracted from it, so the phases add up to the request.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._events: dict[str, list[tuple]] = {}
        self._host: dict[str, float] = {}
        self._nested: dict[str, str] = {}

    @contextmanager
    def phase(self, name: str, host: bool = False, nested_in: str | None = None):
        if nested_in is not None:
            self._nested[name] = nested_in
        if self.device.type == "cuda" and not host:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.setdefault(name, []).append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._host[name] = self._host.get(name, 0.0) + time.perf_counter() - t0

    def seconds(self) -> dict[str, float]:
        """Phase durations in seconds (synchronises the device once)."""
        out = dict(self._host)
        if self._events:
            synchronize(self.device)
            for name, pairs in self._events.items():
                out[name] = out.get(name, 0.0) + sum(s.elapsed_time(e) for s, e in pairs) / 1e3
        for name, parent in self._nested.items():
            if name in out and parent in out:
                out[parent] -= out[name]
        return out


def summarize(samples, *, seed: int = 0, n_boot: int = 2000) -> dict:
    """Median, IQR, p90, n, mean, a bootstrap 95% CI of the median, and a noise flag."""
    x = np.asarray([s for s in samples if s is not None], dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "median": None, "iqr": None, "p90": None, "mean": None, "ci95": None, "noisy": None}
    q1, med, q3, p90 = np.percentile(x, [25, 50, 75, 90])
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(x, size=(n_boot, x.size), replace=True), axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    iqr = q3 - q1
    return {"n": int(x.size), "median": float(med), "iqr": float(iqr), "p90": float(p90), "mean": float(x.mean()),
            "ci95": [float(lo), float(hi)], "noisy": bool(med > 0 and iqr / med > NOISY_IQR_OVER_MEDIAN)}


def wall_samples(fn, device: torch.device, warmup: int = 3, reps: int = 15) -> list[float]:
    """Wall seconds per call of ``fn``, each from a device sync to the next (the latency a
    request pays, launch overhead included)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def cuda_graph_samples(fn, device: torch.device, warmup: int = 3, reps: int = 15, generator=None):
    """Capture ``fn`` in a CUDA graph (:func:`vlm.graphs.capture`) and time its replays.

    Returns ``(samples, output, reason)``: the replay wall times and the graph's output tensors,
    or ``(None, None, reason)`` when ``fn`` cannot be captured.
    """
    from vlm.graphs import capture

    graph, out, reason = capture(fn, device, generator)
    if reason:
        return None, None, reason
    return wall_samples(graph.replay, device, warmup, reps), out, None
