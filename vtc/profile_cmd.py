"""``vtc profile``: measure LLaVA with each reducer, phase by phase, with energy."""

from __future__ import annotations

import sys

import torch

import reducers
from profiler.energy import source_choices
from profiler.sweep import ProfileConfig, run_profile

from .cli import comma_list

HELP = "profile LLaVA with reducers: per-phase latency, NVML energy, reducer overhead (JSON Lines, resumable)"


def add_model_arguments(p) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="tiny | llava-1.5-7b | llava-1.5-13b (random weights, real geometry)")
    g.add_argument("--model-path", help="a local LLaVA checkpoint folder (from_pretrained, offline)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--attn", default="sdpa", dest="attn_implementation", help="sdpa | eager | flash_attention_2")
    p.add_argument("--seed", type=int, default=0)


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--reducers", default="all", help="'all' or comma-separated names (see vtc reducers)")
    p.add_argument("--keep", default="64,128,192", help="visual tokens kept, comma-separated")
    p.add_argument("--images", help="folder of images (default: photos shipped with scikit-image)")
    p.add_argument("--image-limit", type=int, help="use at most this many images")
    p.add_argument("--text-tokens", type=int, default=64, help="prompt length for models without a tokenizer")
    p.add_argument("--warmup", type=int, default=10, help="warm-up runs per condition (default 10)")
    p.add_argument("--reps", type=int, default=30, help="timed repetitions per condition (default 30)")
    p.add_argument("--decode-steps", type=int, default=0, help="also time N greedy decode steps")
    p.add_argument("--batch", type=int, default=1, help="requests per call: the image and prompt repeated (default 1)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay each reducer from a CUDA graph captured once per shape and keep (rows say which ran)")
    p.add_argument("--positions", choices=["contiguous", "reduced"], default="contiguous",
                   help="position ids of the kept tokens: contiguous, or the reducer's original positions")
    p.add_argument("--energy", choices=source_choices(), default="auto",
                   help="energy source: auto (the best available), a registered source, or none")
    p.add_argument("--energy-replay", metavar="TRACE", help="replay a recorded energy trace (tests)")
    p.add_argument("--energy-window", type=float, default=2.0, help="minimum energy window in seconds")
    p.add_argument("--no-baseline", action="store_true", help="skip the all-tokens baseline condition")
    p.add_argument("--out", required=True, help="JSON Lines file; rerunning resumes it")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="where conditions run")
    p.add_argument("--address", default=None, help="Ray: 'auto' or HOST:PORT of a cluster (default: start a local one)")
    p.add_argument("--workers", type=int, default=None, help="Ray: actors (default: one per GPU, else per CPU)")
    p.add_argument("--max-retries", type=int, default=2, help="Ray: retries of a task whose worker died")


def device_of(args) -> str:
    """The device to run on: --device, else cuda when available; a CUDA device is refused, in one
    line, where CUDA is not available."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"--device {device!r} is not allowed; use cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine; allowed: cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"allowed: cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def run(args) -> int:
    names = reducers.available() if args.reducers == "all" else [r.strip() for r in args.reducers.split(",") if r.strip()]
    if not names:
        raise ValueError(f"--reducers {args.reducers!r} names no reducer; give 'all' or names from vtc reducers")
    for n in names:
        reducers.get_class(n)  # an unknown name fails here, listing every registered one
    cfg = ProfileConfig(preset=args.preset, model_path=args.model_path, device=device_of(args), dtype=args.dtype,
                        attn_implementation=args.attn_implementation, reducers=names, keeps=comma_list(args.keep, "--keep"),
                        images=args.images, image_limit=args.image_limit, text_tokens=args.text_tokens,
                        warmup=args.warmup, reps=args.reps, decode_steps=args.decode_steps, positions=args.positions,
                        energy=args.energy, energy_replay=args.energy_replay, energy_window_s=args.energy_window,
                        seed=args.seed, baseline=not args.no_baseline, batch=args.batch, cuda_graphs=args.cuda_graphs)
    launcher = None
    if args.backend == "ray":
        from profiler.launchers import get_launcher
        needs = f"--device {cfg.device}" if str(cfg.device).startswith("cuda") else (
            f"preset {cfg.preset}" if cfg.preset not in (None, "tiny") else None)
        launcher = get_launcher("ray", address=args.address, workers=args.workers, max_retries=args.max_retries,
                                needs_gpu=needs)
    counts = run_profile(cfg, args.out, progress=not args.no_progress, launcher=launcher)
    print(f"{args.out}: {counts['ok']} ok, {counts['failed']} failed, {counts['oom']} oom, "
          f"{counts['skipped']} already done", file=sys.stderr)
    return 0
