"""Reducers replayed from CUDA graphs: captured once per (reducer, input shapes, keep), replayed after.

A reducer's capturable path is its core, ``_reduce`` (or ``select`` for in-LLM methods), without
the input check's host sync: static shapes, randomness from a device generator registered with
the graph, no host synchronisation. :class:`GraphedReducers` keeps one graph per key; the first
call of a key validates the inputs eagerly (``reduce``), checks that the core does not
synchronise (``torch.cuda.set_sync_debug_mode("error")``), captures it, and every later call
copies its inputs into the graph's static buffers and replays. A reducer that cannot be captured
runs eagerly and says why. On a CPU everything runs eagerly, with that reason.
"""

from __future__ import annotations

import dataclasses

import torch


def _tensors(obj):
    """The tensors of a signal value (a tensor, or a dict of tensors and scalars), in a fixed order."""
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in _tensors(obj[k])]
    return []


def _static_copy(obj):
    if torch.is_tensor(obj):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _static_copy(v) for k, v in obj.items()}
    return obj


def _key(reducer, features, keep, signals) -> tuple:
    shapes = tuple((tuple(t.shape), t.dtype) for t in _tensors(signals))
    return (id(reducer), tuple(features.shape), features.dtype, str(features.device), keep, shapes)


@dataclasses.dataclass
class _Graph:
    graph: object
    features: torch.Tensor
    signals: dict
    generator: torch.Generator
    out: object


class GraphedReducers:
    """One CUDA graph per (reducer, shapes, keep); ``execution`` says what the last call did."""

    def __init__(self):
        self.graphs: dict[tuple, _Graph | str] = {}
        self.execution, self.reason = "eager", None

    def reduce(self, reducer, features, keep, *, generator=None, **signals):
        key = _key(reducer, features, keep, signals)
        entry = self.graphs.get(key)
        if entry is None:
            red = reducer.reduce(features, keep, generator=generator, **signals)  # validates; the eager answer
            self.graphs[key] = entry = self._capture(reducer, features, keep, generator, signals)
            self._said(entry)
            return red
        if isinstance(entry, str):
            self._said(entry)
            return reducer.reduce(features, keep, generator=generator, **signals)
        entry.features.copy_(features)
        for dst, src in zip(_tensors(entry.signals), _tensors(signals)):
            dst.copy_(src)
        if generator is not None:
            entry.generator.set_state(generator.get_state())
        entry.graph.replay()
        self._said(entry)
        return dataclasses.replace(entry.out, **{f.name: getattr(entry.out, f.name).clone()
                                                 for f in dataclasses.fields(entry.out)
                                                 if torch.is_tensor(getattr(entry.out, f.name))})

    def _said(self, entry) -> None:
        self.execution, self.reason = ("eager", entry) if isinstance(entry, str) else ("cuda-graph", None)

    def _capture(self, reducer, features, keep, generator, signals) -> _Graph | str:
        if features.device.type != "cuda":
            return f"CUDA graphs need a CUDA device, not {features.device.type}"
        static_x, static_sig = features.clone(), _static_copy(signals)
        gen = torch.Generator(device=features.device)
        if generator is not None:
            gen.set_state(generator.get_state())
        core = (lambda: reducer._reduce(static_x, keep, generator=gen, **static_sig))
        graph, out, reason = capture(core, features.device, gen)
        return reason if reason else _Graph(graph, static_x, static_sig, gen, out)


def capture(fn, device, generator=None):
    """Capture ``fn`` in a CUDA graph: ``(graph, output, None)``, or ``(None, None, reason)`` when
    it cannot be. A function that synchronises with the host is detected eagerly first, so a
    failed capture never leaves the device in an error state."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, None, f"CUDA graphs need a CUDA device, not {device.type}"
    try:
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
            torch.cuda.synchronize(device)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    except RuntimeError as e:
        return None, None, f"synchronises with the host, so it cannot be captured ({str(e).splitlines()[0][:160]})"
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        if generator is not None and hasattr(graph, "register_generator_state"):
            graph.register_generator_state(generator)  # its draws advance on every replay
        with torch.cuda.graph(graph):
            out = fn()
    except Exception as e:  # noqa: BLE001 - the reason goes into the row
        torch.cuda.synchronize(device)
        return None, None, f"capture failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return graph, out, None
