"""``vtc profile``: a sweep over reducers x budgets x images, one JSON line per condition.

Protocol per image: every condition is warmed up (``warmup`` runs, per input shape), then
timed ``reps`` times with the conditions interleaved in a seeded random order each round, so
drift (clocks, temperature) spreads over all of them. Each phase (preprocess, vision tower,
projector, reducer, prefill, decode) is timed separately through the one forward path
(:meth:`vlm.Runner.forward`); energy is measured per condition in a window of at least
``energy_window_s``, and each condition's row is appended (fsynced) as soon as its energy is
measured. Rerunning the same command skips conditions already written with status ok (the
identity includes reducer parameters and options), so a crash or Ctrl-C loses nothing measured.
An error or OOM in one condition becomes a row with its status. Units of work (an image with its
pending conditions) run on a launcher (:mod:`profiler.launchers`): this process or Ray.
"""

from __future__ import annotations

import importlib
import random
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

import rows as R
from vlm import (LoadedModel, Runner, is_in_llm, load, load_images, make_request, synthetic_prompt,
                 template_prompt)

from .energy import idle_power_w, measure_energy, open_source
from .environment import environment, gpu_label
from .launchers import LocalLauncher, Worker
from .timing import PhaseTimer, summarize, synchronize

PHASES = ("preprocess", "vision", "projector", "reducer", "prefill", "decode")


class SweepError(ValueError):
    """A sweep that cannot start (bad budget, unknown reducer, ...)."""


@dataclass
class ProfileConfig:
    preset: str | None = None
    model_path: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    attn_implementation: str = "sdpa"
    reducers: list[str] = field(default_factory=lambda: ["random"])
    reducer_params: dict = field(default_factory=dict)  # reducer name -> parameters
    keeps: list[int] = field(default_factory=lambda: [64, 128, 192])
    images: str | None = None
    image_limit: int | None = None
    text_tokens: int = 64
    question: str = "Describe the image briefly."
    warmup: int = 10
    reps: int = 30
    decode_steps: int = 0
    positions: str = "contiguous"
    energy: str = "auto"
    energy_replay: str | None = None
    energy_window_s: float = 2.0
    seed: int = 0
    baseline: bool = True
    batch: int = 1
    cuda_graphs: bool = False  # replay reducers from CUDA graphs (captured once per shape and keep)
    reducer_factory: str = "reducers.get"  # an importable callable name -> reducer (tests inject faults)

    def options(self) -> dict:
        return {"text_tokens": self.text_tokens, "positions": self.positions, "decode_steps": self.decode_steps,
                "warmup": self.warmup, "reps": self.reps, "cuda_graphs": self.cuda_graphs}

    def check(self) -> None:
        if self.warmup < 0 or self.reps < 1:
            raise SweepError(f"warmup = {self.warmup}, reps = {self.reps}: need warmup >= 0 and reps >= 1")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or not 1 <= self.batch <= 1024:
            raise SweepError(f"batch = {self.batch!r} is not allowed; use an integer in 1..1024")
        if isinstance(self.decode_steps, bool) or not isinstance(self.decode_steps, int) or self.decode_steps < 0:
            raise SweepError(f"decode_steps = {self.decode_steps!r} is not allowed; use an integer >= 0")
        if self.image_limit is not None and self.image_limit < 1:
            raise SweepError(f"image_limit = {self.image_limit} is not allowed; use an integer >= 1 (or none for all)")
        if not self.keeps:
            raise SweepError("no budget given (keeps is empty); give at least one number of visual tokens")


def _factory(name: str) -> Callable:
    mod, _, fn = name.rpartition(".")
    return getattr(importlib.import_module(mod), fn)


@dataclass
class Condition:
    reducer_name: str
    keep: int
    reducer: object = None
    failed: dict | None = None
    samples: dict = field(default_factory=lambda: {p: [] for p in PHASES} | {"request": [], "gpu": []})
    kept_tokens: list = field(default_factory=list)
    llm_tokens: int | None = None
    peak_memory_bytes: int | None = None
    execution: tuple = (None, None)  # how the reducer ran in the last timed call: eager / cuda-graph, why


def _status_of(exc: BaseException) -> str:
    return "oom" if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower() else "failed"


def reducer_params(reducer) -> dict:
    if reducer is None:
        return {}
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v) for k, v in reducer.params().items()}


class Profiler:
    """Runs the conditions of one sweep on one loaded model."""

    def __init__(self, lm: LoadedModel, cfg: ProfileConfig, reducer_factory: Callable | None = None):
        self.lm, self.cfg, self.runner = lm, cfg, Runner(lm, cuda_graphs=cfg.cuda_graphs)
        self.factory = reducer_factory or _factory(cfg.reducer_factory)
        self.sync = lambda: synchronize(lm.device)
        self.energy = open_source(lm.device, cfg.energy, cfg.energy_replay)
        self.idle_w = idle_power_w(self.energy) if self.energy.available else None
        self.env = environment(lm.device, dtype=lm.dtype, attn_implementation=lm.attn_implementation,
                               seed=cfg.seed, source=lm.source)
        self.gpu = gpu_label(lm.device)
        self.gen = torch.Generator(device=lm.device)
        self._prompt = (template_prompt(lm, cfg.question) if lm.tokenizer is not None
                        else synthetic_prompt(lm, cfg.text_tokens, seed=cfg.seed)[0])

    def reducer(self, name: str):
        return None if name == "none" else self.factory(name, **self.cfg.reducer_params.get(name, {}))

    def run_once(self, cond: Condition, image, timer: PhaseTimer | None, pixel_values=None) -> None:
        """One request of one condition through the forward path, each phase under ``timer``
        (None: untimed); in inference mode (no autograd graph: it would cost host time and keep
        every layer's activations alive)."""
        lm, b = self.lm, self.cfg.batch
        with (timer.phase("preprocess", host=True) if timer else _null()):  # b requests preprocess b images
            pv = pixel_values if pixel_values is not None else lm.preprocess([image] * b).to(lm.device, lm.dtype)
        request = make_request(lm, [self._prompt] * b, pv)
        pre = self.runner.forward(request, cond.reducer, cond.keep, generator=self.gen.manual_seed(self.cfg.seed),
                                  positions=self.cfg.positions, timer=timer, decode_steps=self.cfg.decode_steps)
        cond.kept_tokens.append(pre.extra["kept_tokens"])
        cond.llm_tokens = pre.llm_tokens
        cond.execution = (pre.extra.get("reducer_execution"), pre.extra.get("reducer_execution_reason"))

    def _timed(self, cond: Condition, image) -> None:
        timer = PhaseTimer(self.lm.device)
        cuda = self.lm.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.lm.device)
        self.run_once(cond, image, timer)
        secs = timer.seconds()
        if cuda:
            cond.peak_memory_bytes = max(cond.peak_memory_bytes or 0, torch.cuda.max_memory_allocated(self.lm.device))
        for p in PHASES:
            cond.samples[p].append(secs.get(p))
        cond.samples["request"].append(sum(secs.values()))
        cond.samples["gpu"].append(sum(v for k, v in secs.items() if k != "preprocess"))

    def measure_image(self, name: str, image, conds: list[Condition], progress=None):
        """Warm up, time interleaved, then per condition: energy, and its row (yielded)."""
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}:{name}")
        for cond in conds:  # warm-up, per input shape
            self._guard(cond, lambda c=cond: [self.run_once(c, image, None) for _ in range(cfg.warmup)])
            if progress:
                progress(cfg.warmup)
        for _ in range(cfg.reps):
            order = conds[:]
            rng.shuffle(order)
            for cond in order:
                self._guard(cond, lambda c=cond: self._timed(c, image))
                if progress:
                    progress(1)
        for cond in conds:
            energy = {}
            if not cond.failed:
                pv = self.lm.preprocess([image] * cfg.batch).to(self.lm.device, self.lm.dtype)
                energy = self._guard(cond, lambda c=cond: measure_energy(
                    lambda: self.run_once(c, image, None, pixel_values=pv), self.energy, self.sync,
                    cfg.energy_window_s)) or {}
            yield [self._row(name, cond, energy)]

    def _guard(self, cond: Condition, fn):
        if cond.failed:
            return None
        try:
            return fn()
        except Exception as e:  # one condition's failure must not stop the sweep
            cond.failed = {"status": _status_of(e), "error": f"{type(e).__name__}: {e}".strip()[:2000],
                           "traceback": traceback.format_exc(limit=4)[-2000:]}
            if self.lm.device.type == "cuda":
                torch.cuda.empty_cache()
            return None

    def identity_fields(self, image_name: str, reducer_name: str, keep: int, reducer) -> dict:
        lm = self.lm
        return {"model": lm.source, "spec": lm.spec.key, "gpu": self.gpu, "reducer": reducer_name, "keep": keep,
                "visual_tokens": lm.visual_tokens, "image": image_name, "batch": self.cfg.batch,
                "dtype": str(lm.dtype).replace("torch.", ""), "attn_implementation": lm.attn_implementation,
                "options": self.cfg.options() | {"reducer_params": reducer_params(reducer)},
                "hook": getattr(reducer, "hook", "post-projector") if reducer is not None else "post-projector"}

    def _row(self, image_name: str, cond: Condition, energy: dict) -> dict:
        ident = self.identity_fields(image_name, cond.reducer_name, cond.keep, cond.reducer)
        if cond.failed:
            return R.profile_row(**ident, environment=self.env, **cond.failed)
        return R.profile_row(**ident, environment=self.env, **self._measured(cond, energy))

    def _measured(self, cond: Condition, energy: dict) -> dict:
        lm, cfg = self.lm, self.cfg
        stats = {p: summarize([v for v in cond.samples[p] if v is not None], seed=cfg.seed)
                 for p in PHASES + ("request", "gpu") if any(v is not None for v in cond.samples[p])}
        out = {"text_tokens": len(self._prompt) - lm.visual_tokens,
               "kept_tokens": sum(cond.kept_tokens) / len(cond.kept_tokens), "llm_tokens": cond.llm_tokens}
        key = {"request": "request_time_s", "gpu": "gpu_time_s"}
        out.update({key.get(p, f"{p}_time_s"): s["median"] for p, s in stats.items()})
        if cond.reducer is not None:
            out["reducer_execution"], why = cond.execution
            if why:
                out["reducer_execution_reason"] = why
        if cond.reducer is None:
            out["reducer_time_s"] = 0.0  # the baseline runs no reducer
        elif is_in_llm(cond.reducer):
            out["reducer_time_s_scope"] = ("inside the layer loop: the pruning layers' q/k and the selection, "
                                           "subtracted from prefill_time_s")
        if not cfg.decode_steps:
            out.update(decode_time_s=None, decode_time_s_unavailable_reason="decode not requested (--decode-steps 0)")
        out.update(stats=stats, noisy_phases=[p for p, s in stats.items() if s["noisy"]])
        if lm.device.type == "cuda":
            out["peak_memory_bytes"] = cond.peak_memory_bytes
        else:
            out.update(peak_memory_bytes=None, peak_memory_bytes_unavailable_reason="not measured on the CPU")
        out.update(energy)
        if out.get("energy_j") is None:
            out["energy_j"] = None
            out.setdefault("energy_unavailable_reason", self.energy.unavailable_reason)
        else:
            out["energy_per_request_j"] = out["energy_j"] / cfg.batch  # energy_j is per call (the batch)
            if self.idle_w is not None and energy.get("energy_window_s"):
                out["idle_power_w"] = self.idle_w
                out["energy_idle_subtracted_j"] = out["energy_j"] - self.idle_w * energy["energy_window_s"] / \
                    energy["energy_calls"]
        return out


def _null():
    import contextlib
    return contextlib.nullcontext()


class ProfileWorker(Worker):
    """Loads the model once (or takes ``lm``), then measures units (image name, image, [(reducer, keep)])."""

    def __init__(self, config: dict, lm: LoadedModel | None = None, reducer_factory: Callable | None = None,
                 progress: Callable | None = None):
        self.cfg = ProfileConfig(**config)
        self.lm = lm or load(preset=self.cfg.preset, model_path=self.cfg.model_path, device=self.cfg.device,
                             dtype=self.cfg.dtype, attn_implementation=self.cfg.attn_implementation, seed=self.cfg.seed,
                             batch=self.cfg.batch)
        self.prof = Profiler(self.lm, self.cfg, reducer_factory)
        self.progress = progress

    def describe(self) -> dict:
        lm = self.lm
        return {"source": lm.source, "spec": lm.spec, "visual_tokens": lm.visual_tokens, "gpu": self.prof.gpu,
                "dtype": lm.dtype, "attn_implementation": lm.attn_implementation}

    def run(self, unit):
        name, image, pending = unit
        conds = [Condition(r, k, self.prof.reducer(r)) for r, k in pending]
        yield from self.prof.measure_image(name, image, conds, self.progress)


def plan(cfg: ProfileConfig, lm: LoadedModel, factory: Callable | None = None) -> list[tuple[str, int, object]]:
    """(reducer name, keep, reducer object) of every condition; errors before anything runs."""
    n = lm.visual_tokens
    bad = [k for k in cfg.keeps if not 1 <= k <= n]
    if bad:
        raise SweepError(f"keep = {bad[0]} is out of range for {lm.spec.key}; allowed: 1..{n} visual tokens")
    factory = factory or _factory(cfg.reducer_factory)
    out = [("none", n, None)] if cfg.baseline else []
    for name in cfg.reducers:
        reducer = factory(name, **cfg.reducer_params.get(name, {}))
        out += [(name, k, reducer) for k in cfg.keeps]
    return out


def run_profile(cfg: ProfileConfig, out: str | Path, *, lm: LoadedModel | None = None,
                reducer_factory: Callable | None = None, progress: bool = True, launcher=None) -> dict:
    """Run (or resume) a sweep into the JSON Lines file ``out``. Returns counts."""
    cfg.check()
    images = load_images(cfg.images, cfg.image_limit)  # unreadable images fail here, before the model loads
    local = launcher is None or isinstance(launcher, LocalLauncher)
    if local:
        lm = lm or load(preset=cfg.preset, model_path=cfg.model_path, device=cfg.device, dtype=cfg.dtype,
                        attn_implementation=cfg.attn_implementation, seed=cfg.seed, batch=cfg.batch)
        probe, gpu = lm, gpu_label(lm.device)
    else:  # the model loads on the workers: ask one of them what it loaded
        from types import SimpleNamespace
        d = launcher.describe(ProfileWorker, asdict(cfg))
        probe, gpu = SimpleNamespace(**d), d["gpu"]
    conditions = plan(cfg, probe, reducer_factory)
    done = {R.identity(r) for r in R.read_rows(out) if r.get("kind") == "profile" and r.get("status") == "ok"} \
        if Path(out).exists() else set()
    units, skipped = [], 0
    for name, image in images:
        pending = [(rn, k) for rn, k, red in conditions if R.identity(R.profile_row(
            **_ident(cfg, probe, gpu, name, rn, k, red), environment={})) not in done]
        skipped += len(conditions) - len(pending)
        if pending:
            units.append((name, image, pending))
    counts = {"ok": 0, "failed": 0, "oom": 0, "skipped": skipped}
    bar = _bar(progress, sum(len(p) * (cfg.warmup + cfg.reps) for *_, p in units), probe)

    def write(rs):
        R.append_rows(out, rs)
        for r in rs:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    try:
        if local:
            launcher = LocalLauncher({"lm": lm, "reducer_factory": reducer_factory,
                                      "progress": bar.update if bar else None})
        stats = launcher.map(ProfileWorker, asdict(cfg), units, write, lambda u, why: _failed_rows(cfg, probe, gpu, u, why))
    finally:
        if bar:
            bar.close()
    if stats.get("lost"):
        counts["workers_lost"] = stats["lost"]
    return counts


def _ident(cfg: ProfileConfig, lm, gpu: str, image: str, reducer_name: str, keep: int, reducer) -> dict:
    return {"model": lm.source, "spec": lm.spec.key, "gpu": gpu, "reducer": reducer_name, "keep": keep,
            "visual_tokens": lm.visual_tokens, "image": image, "batch": cfg.batch,
            "dtype": str(lm.dtype).replace("torch.", ""), "attn_implementation": lm.attn_implementation,
            "options": cfg.options() | {"reducer_params": reducer_params(reducer)},
            "hook": getattr(reducer, "hook", "post-projector") if reducer is not None else "post-projector"}


def _failed_rows(cfg, lm, gpu, unit, why: str) -> list[dict]:
    name, _, pending = unit
    factory = _factory(cfg.reducer_factory)
    return [R.profile_row(**_ident(cfg, lm, gpu, name, r, k, None if r == "none" else
                                   factory(r, **cfg.reducer_params.get(r, {}))),
                          environment={}, status="failed", error=why) for r, k in pending]


def _bar(progress: bool, total: int, lm):
    if not (progress and total):
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="run", desc=f"profile {lm.spec.key}", dynamic_ncols=True)
