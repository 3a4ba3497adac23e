"""``vtc demo``: the whole suite end to end on an embedded default, then the report
(the pipeline itself is :func:`vtc.demo.run_demo`)."""

from __future__ import annotations

import time

from .demo import DemoConfig, main_progress, run_demo
from .cli import comma_list
from .profile_cmd import device_of

HELP = "run the suite end to end on an embedded default (predict, profile, eval, published, report)"


def add_arguments(p) -> None:
    p.add_argument("--out", default="out/demo", help="folder for rows and the report (default: out/demo)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model-path", help="a LLaVA checkpoint folder (default: the shipped tiny shapes model)")
    g.add_argument("--preset", help="a random-weight preset (llava-1.5-7b on a GPU): timing and fidelity only")
    p.add_argument("--benchmark", default="shapes",
                   help="benchmark for accuracy (default: shapes, which the shipped model was trained on)")
    p.add_argument("--data", help="benchmark folder (not needed for generated or packaged benchmarks)")
    p.add_argument("--limit", type=int, default=300, help="evaluation samples (default 300: 50 per shapes question kind)")
    p.add_argument("--retention", default="0.25,0.11", help="visual-token budgets as fractions in (0, 1]")
    p.add_argument("--reducers", default="all")
    p.add_argument("--images", type=int, default=2, help="profile images")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--force", action="store_true", help="start an existing output folder fresh")


def run(args) -> int:
    retention = comma_list(args.retention, "--retention", float)
    cfg = DemoConfig(out=args.out, model_path=args.model_path, preset=args.preset, benchmark=args.benchmark,
                     data=args.data, limit=args.limit, retention=retention,
                     reducers=None if args.reducers == "all" else args.reducers.split(","), images=args.images,
                     reps=args.reps, warmup=args.warmup, device=device_of(args), force=args.force)
    t0 = time.time()
    rep = run_demo(cfg, main_progress())
    print(rep.headline)
    print(f"\nreport: {rep.files['report.html']} (summary.md, CSV tables and figures beside it); "
          f"demo took {time.time() - t0:.0f} s")
    return 0
