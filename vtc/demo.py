"""The demo pipeline as a library function (a notebook can call it): predict, profile, evaluate,
published numbers, report; ``vtc demo`` is its command line.

Default (no GPU, no downloads): predictions for LLaVA-1.5-7B on an H100, a profile and an
evaluation of the tiny LLaVA trained on shapes VQA that ships in ``models/llava-tiny-shapes`` on
the ``shapes`` benchmark with every reducer at the given retentions and the blank- and
shuffled-image ablations (the floor), the published LLaVA-1.5-7B numbers, and the report.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import costmodel
import reducers
import rows as R
from evaluation.harness import EvalOptions, Evaluator, run_eval
from evaluation.published import published_rows
from evaluation.tasks import load_benchmark
from profiler.sweep import ProfileConfig, run_profile
from reports.build import build_report
from vlm import load

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "llava-tiny-shapes"
CPU_SPEC = Path(costmodel.specs.DATA_DIR) / "cpu-generic.toml"


class DemoError(ValueError):
    pass


@dataclass
class DemoConfig:
    out: str = "out/demo"
    model_path: str | None = None
    preset: str | None = None
    benchmark: str = "shapes"
    data: str | None = None
    limit: int = 300
    retention: list[float] = field(default_factory=lambda: [0.25, 0.11])
    reducers: list[str] | None = None  # None: every registered reducer
    images: int = 2
    reps: int = 5
    warmup: int = 2
    device: str = "cpu"
    force: bool = False

    def check(self) -> None:
        bad = [r for r in self.retention if not 0 < r <= 1]
        if bad:
            raise DemoError(f"--retention {bad[0]} is not allowed; use fractions in (0, 1], e.g. 0.25,0.11")
        for name, v in (("--limit", self.limit), ("--images", self.images), ("--reps", self.reps)):
            if v < 1:
                raise DemoError(f"{name} {v} is not allowed; use an integer >= 1")
        out = Path(self.out)
        if out.exists() and any(out.iterdir()) and not self.force:
            raise DemoError(f"output folder {str(out)!r} exists and is not empty; pass --force to start it fresh "
                            "(its rows would otherwise mix with this run's)")


def _default_model() -> str:
    rel = os.path.relpath(DEFAULT_MODEL)  # a short, machine-independent label in the rows
    return rel if not rel.startswith("..") else str(DEFAULT_MODEL)


def run_demo(cfg: DemoConfig, stage=lambda name: None) -> "object":
    """Run every stage into ``cfg.out``; ``stage(name)`` is called as each starts. Returns the report."""
    cfg.check()
    out = Path(cfg.out)
    if out.exists() and cfg.force:
        shutil.rmtree(out)
    rows_dir = out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    model_path = None if cfg.preset else (cfg.model_path or _default_model())
    names = cfg.reducers or reducers.available()
    stage("predict")
    sw = costmodel.sweep("llava-1.5-7b", ["h100-sxm"], retention=[0.05, 0.11, 0.25, 0.5, 0.75, 1.0])
    R.append_rows(rows_dir / "predict.jsonl", R.prediction_rows(sw))
    stage("load model")
    lm = load(preset=cfg.preset, model_path=model_path, device=cfg.device)
    keeps = sorted({max(1, round(r * lm.visual_tokens)) for r in cfg.retention}, reverse=True)
    samples = load_benchmark(cfg.benchmark, cfg.data)
    image_dir = str(Path(samples[0].image).parent) if isinstance(samples[0].image, str) else None
    stage(f"profile {len(names)} reducers x {keeps}")
    pcfg = ProfileConfig(model_path=model_path, preset=cfg.preset, device=cfg.device, reducers=names, keeps=keeps,
                         images=image_dir, image_limit=cfg.images, warmup=cfg.warmup, reps=cfg.reps)
    run_profile(pcfg, rows_dir / "profile.jsonl", lm=lm, progress=True)
    stage(f"eval {cfg.benchmark} x {cfg.limit}")
    ev = Evaluator(lm)
    for name in ["none"] + names:
        for k in ([None] if name == "none" else keeps):
            run_eval(lm, cfg.benchmark, samples, name, k, rows_dir / "eval.jsonl", limit=cfg.limit,
                     options=EvalOptions(), progress=True, evaluator=ev)
    for ablate in () if cfg.preset else ("blank", "shuffle"):  # the floor (random weights have none)
        run_eval(lm, cfg.benchmark, samples, "none", None, rows_dir / "eval.jsonl", limit=cfg.limit,
                 options=EvalOptions(ablate_image=ablate), progress=True, evaluator=ev)
    stage("published")
    R.append_rows(rows_dir / "published.jsonl", published_rows())
    stage("report")
    return build_report([rows_dir / f for f in ("predict.jsonl", "profile.jsonl", "eval.jsonl", "published.jsonl")],
                        out / "report", force=True, gpu_spec=None if cfg.device.startswith("cuda") else str(CPU_SPEC),
                        title=f"Visual-token compression: {lm.spec.key} measured on {cfg.device}, "
                              "LLaVA-1.5-7B on an H100 predicted")


def main_progress():
    """A stage printer for the command line."""
    t0 = time.time()

    def stage(name):
        print(f"[vtc demo +{time.time() - t0:4.0f} s] {name}", file=sys.stderr, flush=True)
    return stage
