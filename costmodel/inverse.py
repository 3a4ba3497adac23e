"""The questions asked the other way round: which budget reaches a target, and from which
budget a reducer stops paying for itself.

* :func:`solve_target`: per GPU and batch, the largest ``keep`` (and retention) whose time to
  first token is at most a target (``ttft_ms``) or saves at least a fraction of the unreduced
  one (``ttft_saving``); where no budget reaches it, why (the vision tower alone, an eager
  runtime's host floor, the LLM's weight reads, the reducer's own cost).
* :func:`break_even`: per reducer, GPU and batch, the budgets at which the time saved, net of
  the reducer's own time, is positive.

Both evaluate every budget the reducer defines (1..N) in one :func:`costmodel.sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import schedule as S
from .options import Options, PredictError
from .predict import sweep
from .specs import load_model


@dataclass
class TargetAnswer:
    gpu: str
    batch: int
    target_s: float
    baseline_ttft_s: float
    keep: int | None          # the largest budget that reaches the target; None: none does
    retention: float | None
    ttft_s: float             # at ``keep``, or the smallest reachable TTFT (at ``floor_keep``)
    saving: float
    floor_keep: int
    reason: str | None = None  # why it cannot be reached


@dataclass
class BreakEven:
    reducer: str
    gpu: str
    batch: int
    smallest: int | None     # the smallest keep whose net time saved is positive; None: none
    largest: int | None      # the largest one
    contiguous: bool         # every defined keep between them has a positive net saving too
    net_saving_s: dict       # keep -> baseline time - reduced time (the reducer's time included)
    reducer_time_s: dict     # keep -> the reducer's own time


def defined_keeps(reducer, model, visual_tokens=None, text_tokens: int = 64, options=None) -> np.ndarray:
    """The budgets 1..N the reducer's schedule and cost model define (all, without a reducer)."""
    spec = load_model(model)
    llm, opts = getattr(spec, "llm", spec), (options or Options()).validated()
    V, text = int(visual_tokens or getattr(spec, "visual_tokens", 0)), int(text_tokens)
    if V < 1:
        raise PredictError(f"model {spec.key!r} is an LLM without a vision preset; give --visual-tokens")
    keeps = np.arange(1, V + 1)
    if reducer is None:
        return keeps
    ok = []
    for k in keeps:
        try:
            S.layer_counts(reducer, int(k), V, llm.num_hidden_layers)
            S.reducer_costs(reducer, spec, llm, opts, V, text, int(k), 1)
            ok.append(int(k))
        except PredictError:
            continue
    return np.asarray(ok, dtype=np.int64)


def _grid(model, gpus, batch, reducer, kw):
    keeps = defined_keeps(reducer, model, kw.get("visual_tokens"), kw.get("text_tokens", 64), kw.get("options"))
    if keeps.size == 0:
        raise PredictError(f"reducer {S.reducer_name(reducer)!r} defines no budget for this model")
    return sweep(model, gpus, keep=keeps, batch=batch, reducer=reducer, **kw)


def _why(sw, gi: int, bi: int, ki: int, target: float) -> str:
    r = {k: float(v[gi, bi, ki]) for k, v in sw.reduced.items()}
    ms = lambda s: f"{s * 1e3:.3g} ms"  # noqa: E731
    parts = f"vision {ms(r['vision_time_s'])} + projector {ms(r['projector_time_s'])} + reducer " \
            f"{ms(r['reducer_time_s'])} + LLM {ms(r['time_s'])}"
    head = f"even at keep {int(sw.keep[ki])} the TTFT is {ms(r['ttft_s'])} ({parts}), over the target {ms(target)}"
    fixed = r["vision_time_s"] + r["projector_time_s"]
    if fixed >= target:
        return f"{head}: the vision tower and projector alone take {ms(fixed)}"
    if r["reducer_time_s"] >= target - fixed - r["time_s"] and r["reducer_time_s"] > r["time_s"]:
        return f"{head}: the reducer's own time ({ms(r['reducer_time_s'])}) is the largest part"
    host = sw.components.get("host_floor_s")
    if host is not None and host[gi] > 0 and r["time_s"] <= host[gi] * 1.000001:
        return f"{head}: the LLM sits on the eager runtime's host floor ({ms(host[gi])}; try --cuda-graphs)"
    weights = float(sw.reduced["weight_bytes"][gi, bi, ki]) / sw.components["bandwidth"][gi]
    return f"{head}: the LLM still reads every weight ({ms(weights)} at the GPU's bandwidth)"


def solve_target(model, gpus, *, ttft_saving: float | None = None, ttft_ms: float | None = None, batch=1,
                 reducer=None, **kw) -> list[TargetAnswer]:
    """Per GPU and batch, the largest budget reaching the target (one of ``ttft_saving``, a
    fraction in (0, 1), or ``ttft_ms``). Raises :class:`PredictError` when no GPU and batch can
    reach it (the message names the floor); ``kw``: :func:`sweep`'s other arguments."""
    if (ttft_saving is None) == (ttft_ms is None):
        raise PredictError("give one target: a TTFT saving (a fraction in (0, 1)) or a TTFT in ms")
    if ttft_saving is not None and not 0 < ttft_saving < 1:
        raise PredictError(f"target TTFT saving {ttft_saving!r} is out of range; allowed: 0 < saving < 1")
    if ttft_ms is not None and not ttft_ms > 0:
        raise PredictError(f"target TTFT {ttft_ms!r} ms is out of range; allowed: > 0 ms")
    sw = _grid(model, gpus, batch, reducer, kw)
    if "ttft_s" not in sw.reduced:
        raise PredictError(f"model {sw.model!r} has no vision encoder: a TTFT target needs a VLM preset")
    out = []
    for gi, gpu in enumerate(sw.gpus):
        for bi, b in enumerate(sw.batch):
            ttft, base = sw.reduced["ttft_s"][gi, bi], float(sw.baseline["ttft_s"][gi, bi, 0])
            target = ttft_ms / 1e3 if ttft_ms is not None else base * (1 - ttft_saving)
            ok = np.flatnonzero(ttft <= target)
            ki = int(ok[-1]) if ok.size else int(np.argmin(ttft))
            k = int(sw.keep[ki])
            out.append(TargetAnswer(gpu=gpu, batch=int(b), target_s=target, baseline_ttft_s=base,
                                    keep=k if ok.size else None, retention=k / sw.visual_tokens if ok.size else None,
                                    ttft_s=float(ttft[ki]), saving=1 - float(ttft[ki]) / base, floor_keep=k,
                                    reason=None if ok.size else _why(sw, gi, bi, ki, target)))
    if all(a.keep is None for a in out):
        best = min(out, key=lambda a: a.ttft_s)
        allowed = (f">= {best.ttft_s * 1e3:.3g} ms" if ttft_ms is not None else
                   f"<= {1 - best.ttft_s / best.baseline_ttft_s:.3g}")
        what = f"TTFT {ttft_ms:g} ms" if ttft_ms is not None else f"TTFT saving {ttft_saving:g}"
        raise PredictError(f"target {what} is below the floor on every GPU and batch given ({best.gpu}, batch "
                           f"{best.batch}: {best.reason}); allowed: {allowed}")
    return out


def break_even(model, gpus, reducers: list, *, batch=1, **kw) -> list[BreakEven]:
    """Per reducer, GPU and batch: where the time saved, the reducer's own time included, is
    positive (request time with ``output_tokens``, else time to first token)."""
    out = []
    for reducer in reducers:
        sw = _grid(model, gpus, batch, reducer, kw)
        key = "request_time_s" if sw.output_tokens else ("ttft_s" if "ttft_s" in sw.reduced else "request_time_s")
        net = sw.baseline[key] - sw.reduced[key]
        for gi, gpu in enumerate(sw.gpus):
            for bi, b in enumerate(sw.batch):
                row = net[gi, bi]
                pos = np.flatnonzero((row > 0) & (sw.keep < sw.visual_tokens))
                out.append(BreakEven(
                    reducer=S.reducer_name(reducer), gpu=gpu, batch=int(b),
                    smallest=int(sw.keep[pos[0]]) if pos.size else None,
                    largest=int(sw.keep[pos[-1]]) if pos.size else None,
                    contiguous=bool(pos.size == 0 or pos[-1] - pos[0] + 1 == pos.size),
                    net_saving_s={int(k): float(v) for k, v in zip(sw.keep, row)},
                    reducer_time_s={int(k): float(v) for k, v in zip(sw.keep, sw.reduced["reducer_time_s"][gi, bi])}))
    return out
