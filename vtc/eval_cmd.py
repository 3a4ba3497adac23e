"""``vtc eval``: accuracy and fidelity with reducers on local benchmark files; lmms-eval import;
the published numbers."""

from __future__ import annotations

import sys

import torch

from profiler.benchmarks import LOADERS, load_benchmark
from profiler.data.published import published_rows
from profiler.evaluate import Evaluator, run_eval
from profiler.lmms_import import import_lmms_eval
from profiler.models import load
from profiler.rows import append_rows
from reports.tables import pct, text_table

HELP = "evaluate accuracy and fidelity with reducers; import lmms-eval results; write the published numbers"


def add_arguments(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="tiny | llava-1.5-7b | llava-1.5-13b (random weights: fidelity only)")
    g.add_argument("--model-path", help="a local LLaVA checkpoint folder")
    g.add_argument("--import-lmms-eval", metavar="PATH", help="an lmms-eval results file or folder")
    g.add_argument("--published", action="store_true", help="write the paper's published numbers as rows")
    p.add_argument("--benchmark", choices=sorted(LOADERS), help="benchmark name")
    p.add_argument("--data", help="the benchmark's folder (or .jsonl file for --benchmark jsonl)")
    p.add_argument("--reducer", default="none", help="reducer name(s), comma-separated ('none' = all tokens)")
    p.add_argument("--keep", default=None, help="visual tokens kept, comma-separated")
    p.add_argument("--limit", type=int, help="first K samples only")
    p.add_argument("--no-fidelity", action="store_true", help="skip the unreduced reference (faster)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON Lines file; rerunning resumes it")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--address", default=None, help="Ray: 'auto' or HOST:PORT (default: start a local cluster)")
    p.add_argument("--workers", type=int, default=None, help="Ray: actors (default: one per GPU, else per CPU)")


def run(args) -> int:
    if args.published:
        n = append_rows(args.out, published_rows())
        print(f"{args.out}: {n} published rows", file=sys.stderr)
        return 0
    if args.import_lmms_eval:
        keep = int(args.keep) if args.keep and "," not in args.keep else None
        rows = import_lmms_eval(args.import_lmms_eval, None if args.reducer == "none" else args.reducer, keep)
        n = append_rows(args.out, rows)
        print(f"{args.out}: {n} rows imported from lmms-eval", file=sys.stderr)
        return 0
    if not (args.preset or args.model_path):
        raise ValueError("give --model-path DIR or --preset NAME (or --import-lmms-eval / --published)")
    if not args.benchmark:
        raise ValueError(f"give --benchmark, one of {', '.join(sorted(LOADERS))}")
    samples = load_benchmark(args.benchmark, args.data)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.backend == "ray":
        from profiler.cluster import run_eval_ray
        table = []
        for red in [r.strip() for r in args.reducer.split(",") if r.strip()]:
            for k in ([None] if red == "none" else [int(x) for x in (args.keep or "").split(",") if x]):
                s = run_eval_ray(preset=args.preset, model_path=args.model_path, device=device, dtype=args.dtype,
                                 seed=args.seed, benchmark=args.benchmark, samples=samples, reducer_name=red, keep=k,
                                 out=args.out, limit=args.limit, fidelity=not args.no_fidelity,
                                 max_new_tokens=args.max_new_tokens, address=args.address, workers=args.workers)
                table.append([red, k or "all", s["n"], s.get("n_failed", 0), pct(s.get("accuracy"))])
        print(text_table(["reducer", "keep", "n", "failed", "accuracy (%)"], table))
        return 0
    lm = load(preset=args.preset, model_path=args.model_path, device=device, dtype=args.dtype, seed=args.seed)
    reducers_ = [r.strip() for r in args.reducer.split(",") if r.strip()]
    keeps = [int(k) for k in args.keep.split(",")] if args.keep else [lm.visual_tokens]
    ev = Evaluator(lm, args.max_new_tokens, args.seed)
    table = []
    for red in reducers_:
        for k in ([lm.visual_tokens] if red == "none" else keeps):
            s = run_eval(lm, args.benchmark, samples, red, k, args.out, limit=args.limit,
                         fidelity=not args.no_fidelity, seed=args.seed, progress=not args.no_progress, evaluator=ev)
            table.append([red, k, s["n"], s.get("n_failed", 0), pct(s.get("accuracy")), pct(s.get("top1_agree")),
                          f"{s['kl_first_token']:.4f}" if "kl_first_token" in s else "n/a", pct(s.get("answer_agree"))])
    print(text_table(["reducer", "keep", "n", "failed", "accuracy (%)", "top-1 agree (%)", "KL first token (nats)",
                      "answer agree (%)"], table))
    return 0
