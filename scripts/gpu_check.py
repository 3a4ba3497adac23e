"""The GPU check: one call, a few minutes, everything into one output folder.

    python scripts/gpu_check.py OUT [--preset llava-1.5-7b] [--device cuda] [--images N] [--reps N]

On an H100/H200 with torch and transformers installed (no internet, nothing installed): profiles
the llava-1.5-7b preset (bf16, SDPA) at baseline and keep 64/128/192 for random, spatial,
cluster-aggregate, visionzip and fastv with NVML energy, records the NVML energy counter as a
trace (for ReplayEnergy in CPU tests), runs vtc validate and fits a calibration, and times the
reducers on the GPU. With --preset tiny --device cpu it is a dry run of the same path.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--preset", default="llava-1.5-7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--keep", default="64,128,192")
    ap.add_argument("--reducers", default="random,spatial,cluster-aggregate,visionzip,fastv")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.txt", "a")

    def say(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    import torch

    from profiler.energy import TraceRecorder, open_source
    from profiler.environment import environment
    from profiler.models import build_preset
    from profiler.sweep import ProfileConfig, run_profile
    from vtc.cli import main as vtc

    t0 = time.time()
    device = torch.device(args.device)
    try:
        smi = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, timeout=30).stdout
    except Exception as e:  # no driver (dry run on a CPU)
        smi = f"nvidia-smi unavailable: {e}"
    (out / "env.txt").write_text(json.dumps(environment(device), indent=2) + "\n\n" + smi)
    say(f"building preset {args.preset} on {device}")
    lm = build_preset(args.preset, device=device, dtype="bfloat16" if device.type == "cuda" else None)
    say(f"built in {time.time() - t0:.1f} s; parameters {sum(p.numel() for p in lm.model.parameters()) / 1e9:.2f} B")

    cfg = ProfileConfig(preset=args.preset, device=args.device, reducers=args.reducers.split(","),
                        keeps=[int(k) for k in args.keep.split(",")], image_limit=args.images, warmup=args.warmup,
                        reps=args.reps, energy_window_s=2.0)
    source = open_source(device)
    recorder = None
    if getattr(source, "nvml", None) is not None and hasattr(source, "_read_j"):
        recorder = TraceRecorder(source._read_j, period_s=0.02)
    ctx = recorder if recorder is not None else contextlib.nullcontext()
    with ctx:
        counts = run_profile(cfg, out / "profile.jsonl", lm=lm, progress=False)
    if recorder is not None:
        recorder.save(out / "energy_trace.json")
    say(f"profile: {counts}; energy source: {source.name} {source.unavailable_reason or ''}")

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        extra = [] if device.type == "cuda" else ["--gpu", str(ROOT / "costmodel" / "data" / "cpu-generic.toml")]
        rc = vtc(["validate", str(out / "profile.jsonl"), "--calibration-out", str(out / "calibration.json"), *extra])
    (out / "validate.txt").write_text(buf.getvalue())
    say(f"validate rc={rc}\n{buf.getvalue()}")

    del lm
    if device.type == "cuda":
        torch.cuda.empty_cache()
    bench = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_reducers.py"), "--device", args.device,
                            "--reps", "10"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    (out / "bench_reducers.txt").write_text(bench.stdout + bench.stderr[-3000:])
    say(f"reducer benchmark rc={bench.returncode}; total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
