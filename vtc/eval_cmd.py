"""``vtc eval``: accuracy and fidelity with reducers on local benchmark files; image ablations;
lmms-eval import; the published numbers."""

from __future__ import annotations

import sys

from evaluation.harness import ABLATIONS, EvalOptions, Evaluator, run_eval
from evaluation.lmms_import import import_lmms_eval
from evaluation.published import published_rows
from evaluation.tasks import TASKS, load_benchmark
from reports.tables import pct, text_table
from rows import append_rows
from vlm import load

from .cli import comma_list
from .profile_cmd import device_of

HELP = "evaluate accuracy and fidelity with reducers; import lmms-eval results; write the published numbers"


def add_arguments(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="tiny | llava-1.5-7b | llava-1.5-13b (random weights: fidelity only)")
    g.add_argument("--model-path", help="a local LLaVA checkpoint folder")
    g.add_argument("--import-lmms-eval", metavar="PATH", help="an lmms-eval results file or folder")
    g.add_argument("--published", action="store_true", help="write the paper's published numbers as rows")
    p.add_argument("--benchmark", choices=sorted(TASKS), help="benchmark name")
    p.add_argument("--data", help="the benchmark's folder (or .jsonl file for --benchmark jsonl)")
    p.add_argument("--reducer", default="none", help="reducer name(s), comma-separated ('none' = all tokens)")
    p.add_argument("--keep", default=None, help="visual tokens kept, comma-separated (needed with a reducer)")
    p.add_argument("--limit", type=int, help="first K samples only (K >= 1)")
    p.add_argument("--ablate-image", choices=ABLATIONS,
                   help="replace each image: blank (grey) or shuffle (another sample's), to measure the floor")
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


def _keeps(text: str | None) -> list[int]:
    return [] if text is None else comma_list(
        text, "--keep", empty="gives no budget; give numbers of visual tokens, e.g. --keep 64,128")


def run(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit} is not allowed; use an integer >= 1 (or leave it out for all samples)")
    if args.published:
        n = append_rows(args.out, published_rows())
        print(f"{args.out}: {n} published rows", file=sys.stderr)
        return 0
    if args.import_lmms_eval:
        keeps = _keeps(args.keep)
        rows = import_lmms_eval(args.import_lmms_eval, None if args.reducer == "none" else args.reducer,
                                keeps[0] if len(keeps) == 1 else None)
        n = append_rows(args.out, rows)
        print(f"{args.out}: {n} rows imported from lmms-eval", file=sys.stderr)
        return 0
    if not (args.preset or args.model_path):
        raise ValueError("give --model-path DIR or --preset NAME (or --import-lmms-eval / --published)")
    if not args.benchmark:
        raise ValueError(f"give --benchmark, one of {', '.join(sorted(TASKS))}")
    names = [r.strip() for r in args.reducer.split(",") if r.strip()]
    if not names:
        raise ValueError(f"--reducer {args.reducer!r} names no reducer; give none, or names from vtc reducers")
    keeps = _keeps(args.keep)
    if any(n != "none" for n in names) and not keeps:
        raise ValueError(f"--reducer {args.reducer} needs --keep (visual tokens kept, e.g. --keep 64)")
    if keeps and all(n == "none" for n in names):
        raise ValueError(f"--keep {args.keep} with --reducer none is not allowed: none keeps every visual token; "
                         "leave --keep out, or name a reducer")
    samples = load_benchmark(args.benchmark, args.data)
    options = EvalOptions(max_new_tokens=args.max_new_tokens, fidelity=not args.no_fidelity,
                          ablate_image=args.ablate_image, seed=args.seed)
    device = device_of(args)
    launcher, lm, ev, config = None, None, None, {}
    if args.backend == "ray":
        from profiler.launchers import get_launcher
        needs = "this model" if device.startswith("cuda") or args.preset not in (None, "tiny") else None
        launcher = get_launcher("ray", address=args.address, workers=args.workers, needs_gpu=needs)
        config = {"preset": args.preset, "model_path": args.model_path, "device": device, "dtype": args.dtype,
                  "seed": args.seed, "max_new_tokens": args.max_new_tokens}
    else:
        lm = load(preset=args.preset, model_path=args.model_path, device=device, dtype=args.dtype, seed=args.seed)
        ev = Evaluator(lm, args.max_new_tokens, args.seed)
    table = []
    for red in names:
        for k in ([None] if red == "none" else keeps):
            s = run_eval(lm, args.benchmark, samples, red, k, args.out, limit=args.limit, options=options,
                         progress=not args.no_progress, evaluator=ev, launcher=launcher, config=config)
            ci = s.get("accuracy_ci95")
            kept = s.get("kept_tokens")
            label = red if not args.ablate_image else f"{red} (image {args.ablate_image})"
            table.append([label, k or "all", "n/a" if kept is None else f"{kept:.1f}", s["n"], s.get("n_failed", 0), pct(s.get("accuracy")),
                          f"[{pct(ci[0])}, {pct(ci[1])}]" if ci else "n/a", pct(s.get("top1_agree")),
                          f"{s['kl_first_token']:.4f}" if "kl_first_token" in s else "n/a", pct(s.get("answer_agree"))])
    print(text_table(["reducer", "keep", "tokens kept (mean)", "n", "failed", "accuracy (%)", "95% CI (%)", "top-1 agree (%)",
                      "KL first token (nats)", "answer agree (%)"], table))
    return 0
