"""``vtc profile``: a sweep over reducers x budgets x images, one JSON line per condition.

Protocol per image: every condition is warmed up (``warmup`` runs, per input shape), then
timed ``reps`` times with the conditions interleaved in a seeded random order each round, so
drift (clocks, temperature) spreads over all of them. Each phase (preprocess, vision tower,
projector, reducer, prefill, decode) is timed separately; energy is measured per condition in
a window of at least 2 s. Rows are appended and fsynced as an image's conditions finish;
rerunning the same command skips conditions already written with status ok, so a crash or
Ctrl-C loses nothing measured. An error or OOM in one condition becomes a row with its status.
"""

from __future__ import annotations

import json
import random
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .energy import idle_power_w, measure_energy, open_source
from .environment import environment, gpu_label
from .images import load_images
from .models import LoadedModel, load
from .rows import SCHEMA_VERSION, append_rows, read_rows
from .runner import (Runner, get_reducer, identity_reduction, is_in_llm, layerwise_prefill, make_request, needed_signals,
                     synthetic_prompt, template_prompt)
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

    def options(self) -> dict:
        return {"text_tokens": self.text_tokens, "positions": self.positions, "decode_steps": self.decode_steps,
                "warmup": self.warmup, "reps": self.reps}


def condition_key(row: dict) -> str:
    """A condition's identity: what was measured and under which options."""
    ident = {k: row.get(k) for k in ("kind", "model", "gpu", "reducer", "keep", "image", "dtype",
                                     "attn_implementation")}
    ident["batch"] = row.get("batch", 1)
    ident["options"] = {k: row.get("options", {}).get(k) for k in ("text_tokens", "positions", "decode_steps")}
    return json.dumps(ident, sort_keys=True)


def done_keys(path: str | Path) -> set[str]:
    path = Path(path)
    if not path.exists():
        return set()
    return {condition_key(r) for r in read_rows(path) if r.get("kind") == "profile" and r.get("status") == "ok"}


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


def _status_of(exc: BaseException) -> str:
    return "oom" if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower() else "failed"


class Profiler:
    """Runs the conditions of one sweep on one loaded model."""

    def __init__(self, lm: LoadedModel, cfg: ProfileConfig, reducer_factory: Callable = get_reducer):
        self.lm, self.cfg, self.runner = lm, cfg, Runner(lm)
        self.factory = reducer_factory
        self.sync = lambda: synchronize(lm.device)
        self.energy = open_source(lm.device, cfg.energy, cfg.energy_replay)
        self.idle_w = idle_power_w(self.energy) if self.energy.available else None
        self.env = environment(lm.device, dtype=lm.dtype, attn_implementation=lm.attn_implementation,
                               seed=cfg.seed, source=lm.source)
        self.gpu = gpu_label(lm.device)
        self.gen = torch.Generator(device=lm.device)

    def prompt(self) -> list[int]:
        """The prompt ids, built once: every run of a sweep uses the same prompt."""
        if not hasattr(self, "_prompt"):
            self._prompt = (template_prompt(self.lm, self.cfg.question) if self.lm.tokenizer is not None
                            else synthetic_prompt(self.lm, self.cfg.text_tokens, seed=self.cfg.seed)[0])
        return self._prompt

    @torch.inference_mode()
    def run_once(self, cond: Condition, image, timer: PhaseTimer | None, pixel_values=None) -> None:
        """One request of one condition, each phase under ``timer`` (None: untimed). Runs in
        inference mode: no autograd graph is recorded (it would cost host time and keep every
        layer's activations alive)."""
        t = timer or PhaseTimer(torch.device("cpu"))
        lm, r = self.lm, self.runner
        b = self.cfg.batch
        with t.phase("preprocess", host=True):  # a batch of b requests preprocesses b images
            pv = pixel_values if pixel_values is not None else lm.preprocess([image] * b).to(lm.device, lm.dtype)
        request = make_request(lm, [self.prompt()] * b, pv)
        red_obj = cond.reducer
        signals = needed_signals(red_obj)
        with t.phase("vision"):
            hidden, captured = r.vision(request.pixel_values, signals)
        with t.phase("projector"):
            feats = r.project(hidden)
        if is_in_llm(red_obj):
            with t.phase("prefill"):
                red = identity_reduction(feats)
                embeds, mask, pos = r.assemble(request, red, self.cfg.positions)
                pre = layerwise_prefill(r, red_obj, embeds, mask, pos, request, cond.keep)
            cond.kept_tokens.append(cond.keep)
        else:
            if red_obj is None:  # the baseline runs no reducer: no reducer phase to time
                red = identity_reduction(feats)
            else:
                with t.phase("reducer"):
                    sig = r.vision_signals(captured)
                    if any(s in signals for s in ("text_embeds", "layer0")):
                        sig.update(r.text_signals(request))
                    sig = {k: v for k, v in sig.items() if k in signals}
                    red = red_obj.reduce(feats, cond.keep, generator=self.gen.manual_seed(self.cfg.seed), **sig)
            with t.phase("prefill"):
                embeds, mask, pos = r.assemble(request, red, self.cfg.positions)
                pre = r.prefill(embeds, mask, pos)
            cond.kept_tokens.append(float(red.lengths.float().mean()))
        cond.llm_tokens = pre.llm_tokens
        if self.cfg.decode_steps:
            with t.phase("decode"):
                r.decode(pre, self.cfg.decode_steps)

    def measure_image(self, name: str, image, conds: list[Condition], progress=None) -> list[dict]:
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}:{name}")
        for cond in conds:  # warm-up, per input shape
            self._guard(cond, lambda: [self.run_once(cond, image, None) for _ in range(cfg.warmup)])
            if progress:
                progress.update(cfg.warmup)
        for _ in range(cfg.reps):
            order = conds[:]
            rng.shuffle(order)
            for cond in order:
                if cond.failed:
                    continue

                def timed(c=cond):
                    timer = PhaseTimer(self.lm.device)
                    if self.lm.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(self.lm.device)
                    self.run_once(c, image, timer)
                    secs = timer.seconds()
                    if self.lm.device.type == "cuda":
                        c.peak_memory_bytes = max(c.peak_memory_bytes or 0,
                                                  torch.cuda.max_memory_allocated(self.lm.device))
                    for p in PHASES:
                        c.samples[p].append(secs.get(p))
                    c.samples["request"].append(sum(v for v in secs.values()))
                    c.samples["gpu"].append(sum(v for k, v in secs.items() if k != "preprocess"))
                self._guard(cond, timed)
                if progress:
                    progress.update(1)
        rows = []
        for cond in conds:
            energy = {}
            if not cond.failed:
                pv = self.lm.preprocess([image] * cfg.batch).to(self.lm.device, self.lm.dtype)
                energy = self._guard(cond, lambda c=cond: measure_energy(
                    lambda: self.run_once(c, image, None, pixel_values=pv), self.energy, self.sync,
                    cfg.energy_window_s)) or {}
            rows.append(self._row(name, cond, energy))
        return rows

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

    def _row(self, image_name: str, cond: Condition, energy: dict) -> dict:
        lm, cfg = self.lm, self.cfg
        row = {
            "schema_version": SCHEMA_VERSION, "kind": "profile", "status": "ok",
            "model": lm.source, "spec": lm.spec.key, "gpu": self.gpu, "reducer": cond.reducer_name,
            "keep": cond.keep, "visual_tokens": lm.visual_tokens, "image": image_name, "batch": cfg.batch,
            "dtype": str(lm.dtype).replace("torch.", ""), "attn_implementation": lm.attn_implementation,
            "options": cfg.options() | {"reducer_params": _params(cond.reducer)},
            "hook": "in-llm" if is_in_llm(cond.reducer) else "post-projector",
            "environment": self.env,
        }
        if cond.failed:
            row.update(cond.failed)
            return row
        prompt_len = len(self.prompt())
        row["text_tokens"] = prompt_len - lm.visual_tokens
        row["kept_tokens"] = sum(cond.kept_tokens) / len(cond.kept_tokens)
        row["llm_tokens"] = cond.llm_tokens
        stats = {}
        for p in PHASES + ("request", "gpu"):
            vals = [v for v in cond.samples[p] if v is not None]
            if vals:
                stats[p] = summarize(vals, seed=cfg.seed)
        key = {"request": "request_time_s", "gpu": "gpu_time_s"}
        for p, s in stats.items():
            row[key.get(p, f"{p}_time_s")] = s["median"]
        if cond.reducer is None:
            row["reducer_time_s"] = 0.0  # the baseline runs no reducer
        elif is_in_llm(cond.reducer):
            row["reducer_time_s"] = None
            row["reducer_time_s_unavailable_reason"] = "in-LLM method: its cost is inside prefill_time_s"
        if not cfg.decode_steps:
            row["decode_time_s"] = None
            row["decode_time_s_unavailable_reason"] = "decode not requested (--decode-steps 0)"
        row["stats"] = stats
        row["noisy_phases"] = [p for p, s in stats.items() if s["noisy"]]
        if lm.device.type == "cuda":
            row["peak_memory_bytes"] = cond.peak_memory_bytes
        else:
            row["peak_memory_bytes"] = None
            row["peak_memory_bytes_unavailable_reason"] = "not measured on the CPU"
        row.update({k: v for k, v in energy.items()})
        if row.get("energy_j") is not None:
            row["energy_per_request_j"] = row["energy_j"] / cfg.batch  # energy_j is per call (the batch)
        if row.get("energy_j") is None:
            row["energy_j"] = None
            row.setdefault("energy_unavailable_reason", self.energy.unavailable_reason)
        elif self.idle_w is not None and energy.get("energy_window_s"):
            per_call_s = energy["energy_window_s"] / energy["energy_calls"]
            row["idle_power_w"] = self.idle_w
            row["energy_idle_subtracted_j"] = row["energy_j"] - self.idle_w * per_call_s
        return row


def _params(reducer) -> dict:
    if reducer is None:
        return {}
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v) for k, v in reducer.params().items()}


def plan(cfg: ProfileConfig, lm: LoadedModel, factory: Callable = get_reducer) -> list[tuple[str, int, object]]:
    """(reducer name, keep, reducer object) of every condition; errors before anything runs."""
    n = lm.visual_tokens
    bad = [k for k in cfg.keeps if not 1 <= k <= n]
    if bad:
        raise SweepError(f"keep = {bad[0]} is out of range for {lm.spec.key}; allowed: 1..{n} visual tokens")
    out = [("none", n, None)] if cfg.baseline else []
    for name in cfg.reducers:
        reducer = factory(name)
        for k in cfg.keeps:
            out.append((name, k, reducer))
    return out


def run_profile(cfg: ProfileConfig, out: str | Path, *, lm: LoadedModel | None = None,
                reducer_factory: Callable = get_reducer, progress: bool = True) -> dict:
    """Run (or resume) a sweep into the JSON Lines file ``out``. Returns counts."""
    if cfg.warmup < 0 or cfg.reps < 1:
        raise SweepError(f"warmup = {cfg.warmup}, reps = {cfg.reps}: need warmup >= 0 and reps >= 1")
    if isinstance(cfg.batch, bool) or not isinstance(cfg.batch, int) or not 1 <= cfg.batch <= 1024:
        raise SweepError(f"batch = {cfg.batch!r} is not allowed; use an integer in 1..1024")
    images = load_images(cfg.images, cfg.image_limit)  # unreadable images fail here, before the model loads
    lm = lm or load(preset=cfg.preset, model_path=cfg.model_path, device=cfg.device, dtype=cfg.dtype,
                    attn_implementation=cfg.attn_implementation, seed=cfg.seed)
    conditions = plan(cfg, lm, reducer_factory)
    prof = Profiler(lm, cfg, reducer_factory)
    done = done_keys(out)
    todo = []
    for name, image in images:
        pending = []
        for rname, keep, reducer in conditions:
            probe = {"kind": "profile", "model": lm.source, "gpu": prof.gpu, "reducer": rname, "keep": keep,
                     "image": name, "batch": cfg.batch, "dtype": str(lm.dtype).replace("torch.", ""),
                     "attn_implementation": lm.attn_implementation, "options": cfg.options()}
            if condition_key(probe) not in done:
                pending.append(Condition(rname, keep, reducer))
        if pending:
            todo.append((name, image, pending))
    total_runs = sum(len(p) * (cfg.warmup + cfg.reps) for _, _, p in todo)
    bar = None
    if progress and total_runs:
        from tqdm import tqdm
        bar = tqdm(total=total_runs, unit="run", desc=f"profile {lm.spec.key}", dynamic_ncols=True)
    written = {"ok": 0, "failed": 0, "oom": 0, "skipped": len(images) * len(conditions) - sum(len(p) for *_, p in todo)}
    try:
        for name, image, pending in todo:
            rows = prof.measure_image(name, image, pending, bar)
            append_rows(out, rows)
            for r in rows:
                written[r["status"]] += 1
    finally:
        if bar:
            bar.close()
        prof.energy.close()
    return written
