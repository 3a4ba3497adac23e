"""``vtc demo``: the whole suite end to end on an embedded default, then the report.

Default (no GPU, no downloads): predictions for LLaVA-1.5-7B on an H100, a profile and an
evaluation of the tiny LLaVA trained on easy-vqa (shipped in models/) with every reducer at
25% and 11% of its visual tokens, the published LLaVA-1.5-7B numbers, and the report. With
--model-path or a GPU preset it does the same on that model.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

import costmodel
from profiler.data.published import published_rows
from profiler.rows import append_rows, prediction_rows
from reports.build import build_report

HELP = "run the suite end to end on an embedded default (predict, profile, eval, published, report)"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "llava-tiny-easyvqa"
CPU_SPEC = Path(costmodel.specs.DATA_DIR) / "cpu-generic.toml"


def add_arguments(p) -> None:
    p.add_argument("--out", default="out/demo", help="folder for rows and the report (default: out/demo)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model-path", help="a LLaVA checkpoint folder (default: the shipped tiny easy-vqa model)")
    g.add_argument("--preset", help="a random-weight preset (llava-1.5-7b on a GPU): timing and fidelity only")
    p.add_argument("--benchmark", default="easy-vqa", help="benchmark for accuracy (default: easy-vqa)")
    p.add_argument("--data", help="benchmark folder (not needed for easy-vqa)")
    p.add_argument("--limit", type=int, default=200, help="evaluation samples (default 200)")
    p.add_argument("--retention", default="0.25,0.11", help="visual-token budgets as fractions")
    p.add_argument("--reducers", default="all")
    p.add_argument("--images", type=int, default=2, help="profile images")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None)


def run(args) -> int:
    from tqdm import tqdm

    from profiler.benchmarks import load_benchmark
    from profiler.evaluate import Evaluator, run_eval
    from profiler.models import load
    from profiler.runner import all_reducer_names
    from profiler.sweep import ProfileConfig, run_profile

    t0 = time.time()
    out = Path(args.out)
    rows_dir = out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    default = os.path.relpath(DEFAULT_MODEL)  # a short, machine-independent label in the rows
    model_path = None if args.preset else (args.model_path or (default if not default.startswith("..")
                                                                 else str(DEFAULT_MODEL)))
    names = all_reducer_names() if args.reducers == "all" else args.reducers.split(",")
    stages = tqdm(total=5, desc="vtc demo", unit="stage", file=sys.stderr, dynamic_ncols=True)

    stages.set_postfix_str("predict")
    sw = costmodel.sweep("llava-1.5-7b", ["h100-sxm"], retention=[0.05, 0.11, 0.25, 0.5, 0.75, 1.0])
    pred = rows_dir / "predict.jsonl"
    pred.unlink(missing_ok=True)
    append_rows(pred, prediction_rows(sw))
    stages.update(1)

    stages.set_postfix_str("load model")
    lm = load(preset=args.preset, model_path=model_path, device=device)
    keeps = sorted({max(1, round(float(r) * lm.visual_tokens)) for r in args.retention.split(",")}, reverse=True)
    samples = load_benchmark(args.benchmark, args.data)
    image_dir = None
    if args.benchmark == "easy-vqa":
        image_dir = str(Path(samples[0].image).parent)
    stages.set_postfix_str(f"profile {len(names)} reducers x {keeps}")
    cfg = ProfileConfig(model_path=model_path, preset=args.preset, device=device, reducers=names, keeps=keeps,
                        images=image_dir, image_limit=args.images, warmup=args.warmup, reps=args.reps)
    run_profile(cfg, rows_dir / "profile.jsonl", lm=lm, progress=True)
    stages.update(1)

    stages.set_postfix_str(f"eval {args.benchmark} x {args.limit}")
    ev = Evaluator(lm)
    for name in ["none"] + names:
        for k in ([lm.visual_tokens] if name == "none" else keeps):
            run_eval(lm, args.benchmark, samples, name, k, rows_dir / "eval.jsonl", limit=args.limit,
                     progress=True, evaluator=ev)
    stages.update(1)

    stages.set_postfix_str("published")
    pub = rows_dir / "published.jsonl"
    pub.unlink(missing_ok=True)
    append_rows(pub, published_rows())
    stages.update(1)

    stages.set_postfix_str("report")
    rep = build_report([pred, rows_dir / "profile.jsonl", rows_dir / "eval.jsonl", pub], out / "report", force=True,
                       gpu_spec=None if device == "cuda" else str(CPU_SPEC),
                       title=f"Visual-token compression: {lm.spec.key} measured on {device}, "
                             "LLaVA-1.5-7B on an H100 predicted")
    stages.update(1)
    stages.close()
    print(rep.headline)
    print(f"\nreport: {rep.files['report.html']} (summary.md, CSV tables and figures beside it); "
          f"demo took {time.time() - t0:.0f} s")
    return 0
