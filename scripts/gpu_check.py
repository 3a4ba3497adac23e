"""The GPU check: one call, a few minutes, at most 8 files in one output folder.

    python scripts/gpu_check.py OUT [--preset llava-1.5-7b] [--device cuda] [--images N] [--reps N]
                                    [--budget-s 300] [--stages env,reducers,profile,validate,decode,large,spread]

On an H100/H200 with torch and transformers (no internet, nothing installed; needs only torch,
transformers, numpy, scikit-learn, scikit-image, nvidia-ml-py, tqdm). Stages, in this order, each
in its own try (a crash in one keeps the others' files) and each started only while the time
budget lasts:

  env       env.txt          the environment record and ``nvidia-smi -q``
  reducers  reducers.jsonl   every post-projector reducer on [1, 576, 4096] at keep 64/128/192:
                             eager time, dispatched ops, host syncs, CUDA kernels, CUDA-graph
                             replay time (benchmarks/bench_reducers.py)
  profile   profile.jsonl    the llava-1.5-7b preset (bf16, SDPA), image 1: baseline and every
            energy_trace.json reducer at --keep with NVML energy, in chunks of reducers (most wanted
                             first, each while the budget lasts); the NVML energy counter recorded
                             as a trace for ReplayEnergy in CPU tests
  validate  validate.txt     vtc validate: predicted vs measured, and the calibration
            calibration.json
  decode    decode.jsonl     baseline and random at the smallest keep with --decode-steps tokens
                             decoded after the prefill (whole-request time and energy)
  large     profile.jsonl    the llava-1.5-13b preset: baseline and random at --keep, one image,
                             so the calibration sees a second model
  spread    profile.jsonl    baseline and --spread-reducers again on images 2..--images: the same
                             conditions in later blocks, the run-to-run spread (then validate again)

With --preset tiny --device cpu it is a dry run of the same path on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("env", "reducers", "profile", "validate", "decode", "large", "spread", "graphs", "batch", "repeat")
DEFAULT_STAGES = ("env", "reducers", "profile", "decode", "large", "spread", "validate")
#: the main profile's reducers in chunks (";"), most wanted first; each chunk runs while the budget lasts
ALL_REDUCERS = ("random,spatial,cluster-aggregate,visionzip,fastv;"
                "saliency,cluster-saliency-static,cluster-saliency-dynamic,cluster-saliency-aggregate,"
                "cluster-saliency-keys;prumerge-plus,tome,fastervlm,divprune,sparsevlm,dart")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--preset", default="llava-1.5-7b")
    ap.add_argument("--large-preset", default="llava-1.5-13b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=3, help="images 2.. are the spread stage's")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--keep", default="64,128,192")
    ap.add_argument("--reducers", default=ALL_REDUCERS, help="chunks separated by ';', reducers by ','")
    ap.add_argument("--spread-reducers", default="random,cluster-aggregate,fastv",
                    help="measured again on images 2..--images for the run-to-run spread")
    ap.add_argument("--energy-window-s", type=float, default=1.0)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--budget-s", type=float, default=300.0, help="no stage starts after this many seconds")
    ap.add_argument("--stages", default=",".join(DEFAULT_STAGES), help=f"any of {', '.join(STAGES)}, run in this order")
    ap.add_argument("--batches", default="1,16", help="batch sizes of the graphs and batch stages")
    args = ap.parse_args()
    stages = args.stages.split(",")
    bad = [s for s in stages if s not in STAGES]
    if bad:
        sys.exit(f"--stages: unknown stage {bad[0]!r}; allowed: {', '.join(STAGES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    keeps = [int(k) for k in args.keep.split(",")]

    def say(msg):
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - t0:5.0f} s] {msg}", flush=True)

    def left() -> float:
        return args.budget_s - (time.time() - t0)

    results: dict[str, str] = {}

    def stage(name, fn, need_s: float = 0.0):
        if name not in stages:
            return None
        if left() < need_s:
            results[name] = f"skipped: {left():.0f} s of the budget left, needs about {need_s:.0f} s"
            say(f"stage {name}: {results[name]}")
            return None
        say(f"stage {name}: start")
        try:
            value = fn()
            results[name] = "ok"
            say(f"stage {name}: ok")
            return value
        except BaseException as e:  # noqa: BLE001 - one stage's crash must not lose the others' files
            if isinstance(e, KeyboardInterrupt):
                raise
            results[name] = f"failed: {type(e).__name__}: {str(e)[:300]}"
            say(f"stage {name}: FAILED\n{traceback.format_exc()}")
            return None

    import torch

    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def env():
        from profiler.environment import environment
        try:
            smi = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, timeout=30).stdout
        except Exception as e:  # noqa: BLE001 - no driver (dry run on a CPU)
            smi = f"nvidia-smi unavailable: {e}"
        (out / "env.txt").write_text(json.dumps(environment(device), indent=2) + "\n\n" + smi)

    def bench_reducers():
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_reducers.py"), "--device", args.device,
               "--keeps", args.keep, "--reps", "20", "--no-sklearn", "--jsonl", str(out / "reducers.jsonl")]
        if cuda:
            cmd.append("--graphs")
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=max(30, min(150, left())))
        print(p.stdout + p.stderr[-3000:], flush=True)
        if p.returncode:
            raise RuntimeError(f"bench_reducers.py exited with {p.returncode}")

    loaded: dict = {}

    def model(preset):
        """The preset, built once; building another frees the previous one first."""
        from profiler.models import build_preset

        if preset not in loaded:
            loaded.clear()
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            tb = time.time()
            loaded[preset] = build_preset(preset, device=device, dtype="bfloat16" if cuda else None)
            say(f"built {preset} in {time.time() - tb:.1f} s; "
                f"{sum(p.numel() for p in loaded[preset].model.parameters()) / 1e9:.2f} B parameters")
        return loaded[preset]

    def profile(preset, chunks, keeps_, images, path, energy=True, decode_steps=0, batch=1):
        """Run ``chunks`` (lists of reducers; the baseline with the first) on each image in turn,
        each chunk only while the budget lasts."""
        from profiler.sweep import ProfileConfig, run_profile

        lm = model(preset)
        for image in images:
            for i, chunk in enumerate(chunks):
                need = per_condition[0] * (len(chunk) * len(keeps_) + (i == 0)) * 1.1 * (1 + (batch - 1) / 8)
                if left() < need:
                    say(f"{preset} image {image}, {chunk}: skipped ({left():.0f} s left, needs about {need:.0f} s)")
                    continue
                tc = time.time()
                cfg = ProfileConfig(preset=preset, device=args.device, reducers=chunk, keeps=keeps_,
                                    image_limit=image, warmup=args.warmup, reps=args.reps,
                                    energy="auto" if energy else "none", energy_window_s=args.energy_window_s,
                                    decode_steps=decode_steps, baseline=i == 0, batch=batch)
                counts = run_profile(cfg, path, lm=lm, progress=False)
                ran = counts["ok"] + counts["failed"] + counts["oom"]
                if ran and not decode_steps and batch == 1:
                    per_condition[0] = max(per_condition[0], (time.time() - tc) / ran)
                say(f"{preset} image {image}, batch {batch}, {chunk}: {counts} in {time.time() - tc:.0f} s")

    per_condition = [1.0]  # seconds per condition, the largest seen so far (a first guess before any)
    reducer_chunks = [c.split(",") for c in args.reducers.split(";")]

    def main_profile():
        from profiler.energy import TraceRecorder, open_source
        source = open_source(device)
        recorder = TraceRecorder(source._read_j, period_s=0.02) if hasattr(source, "_read_j") else None
        say(f"energy source: {source.name} {source.unavailable_reason or ''}")
        try:
            with recorder if recorder is not None else contextlib.nullcontext():
                profile(args.preset, reducer_chunks, keeps, [1], out / "profile.jsonl")
        finally:
            if recorder is not None and recorder.t:
                recorder.save(out / "energy_trace.json")
            source.close()

    def validate():
        from vtc.cli import main as vtc
        buf = io.StringIO()
        extra = [] if cuda else ["--gpu", str(ROOT / "costmodel" / "data" / "cpu-generic.toml")]
        with contextlib.redirect_stdout(buf):
            rc = vtc(["validate", str(out / "profile.jsonl"), "--calibration-out", str(out / "calibration.json"), *extra])
        (out / "validate.txt").write_text(buf.getvalue())
        print(buf.getvalue(), flush=True)
        if rc:
            raise RuntimeError(f"vtc validate returned {rc}")

    def decode():
        profile(args.preset, [["random"]], [min(keeps)], [1], out / "decode.jsonl", decode_steps=args.decode_steps)

    def large():
        profile(args.large_preset, [["random"]], keeps, [1], out / "profile.jsonl")

    def graphs():
        from profiler.graph_timing import time_prefill
        from profiler.rows import append_rows

        lm = model(args.preset)
        for batch in [int(b) for b in args.batches.split(",")]:
            if left() < 10:
                say(f"graphs batch {batch}: skipped ({left():.0f} s left)")
                break
            rows = time_prefill(lm, keeps=[lm.visual_tokens, *keeps], batches=[batch], reps=20)
            append_rows(out / "graphs.jsonl", rows)
            for r in rows:
                g = r.get("graph_time_s")
                say(f"  {r['part']:11s} batch {batch:3d} keep {str(r['keep']):>4s}: eager "
                    f"{(r.get('eager_time_s') or float('nan')) * 1e3:8.2f} ms, graph "
                    + (f"{g * 1e3:8.2f} ms" if g else f"n/a ({r.get('graph_time_s_unavailable_reason') or r.get('error')})"))

    def batch():
        for b in [int(x) for x in args.batches.split(",") if int(x) > 1]:
            profile(args.preset, [["random"]], keeps, [1], out / "profile.jsonl", batch=b)

    def repeat():
        # the first chunk's conditions again in a fresh process: the run-to-run spread
        profile(args.preset, [reducer_chunks[0]], keeps, [1], out / "profile.jsonl")

    def spread():
        # the same conditions measured again in later blocks (other images): run-to-run spread
        profile(args.preset, [args.spread_reducers.split(",")], keeps, list(range(2, args.images + 1)),
                out / "profile.jsonl")

    table = {"env": (env, 0), "reducers": (bench_reducers, 60), "profile": (main_profile, 60), "validate": (validate, 0),
             "graphs": (graphs, 30), "batch": (batch, 30), "repeat": (repeat, 30), "decode": (decode, 30),
             "large": (large, 45), "spread": (spread, 45)}
    for name in stages:  # in the order given
        fn, need = table[name]
        stage(name, fn, need_s=need)
    say(f"done in {time.time() - t0:.0f} s; stages: {json.dumps(results)}")
    say(f"files: {sorted(p.name for p in out.iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
