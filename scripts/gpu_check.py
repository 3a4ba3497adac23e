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
#: stage -> (method, seconds of budget it needs to start)
NEEDS = {"env": 0, "reducers": 60, "profile": 60, "validate": 0, "graphs": 30, "batch": 30, "repeat": 30,
         "decode": 30, "large": 45, "spread": 45}


def parse(argv=None):
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
    args = ap.parse_args(argv)
    bad = [s for s in args.stages.split(",") if s not in STAGES]
    if bad:
        sys.exit(f"--stages: unknown stage {bad[0]!r}; allowed: {', '.join(STAGES)}")
    return args


class Check:
    """The stages, sharing one output folder, one time budget and one loaded model at a time."""

    def __init__(self, args):
        import torch

        self.args, self.t0, self.results, self.loaded = args, time.time(), {}, {}
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.keeps = [int(k) for k in args.keep.split(",")]
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.per_condition = 1.0  # seconds per condition, the largest seen so far (a first guess before any)
        self.chunks = [c.split(",") for c in args.reducers.split(";")]

    def say(self, msg):
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - self.t0:5.0f} s] {msg}", flush=True)

    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.t0)

    def stage(self, name: str) -> None:
        need = NEEDS[name]
        if self.left() < need:
            self.results[name] = f"skipped: {self.left():.0f} s of the budget left, needs about {need:.0f} s"
            self.say(f"stage {name}: {self.results[name]}")
            return
        self.say(f"stage {name}: start")
        try:
            getattr(self, f"stage_{name}")()
            self.results[name] = "ok"
            self.say(f"stage {name}: ok")
        except Exception as e:  # noqa: BLE001 - one stage's crash must not lose the others' files
            self.results[name] = f"failed: {type(e).__name__}: {str(e)[:300]}"
            self.say(f"stage {name}: FAILED\n{traceback.format_exc()}")

    def model(self, preset):
        """The preset, built once; building another frees the previous one first."""
        import torch

        from vlm import build_preset
        if preset not in self.loaded:
            self.loaded.clear()
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()
            tb = time.time()
            self.loaded[preset] = build_preset(preset, device=self.device, dtype="bfloat16" if self.cuda else None)
            self.say(f"built {preset} in {time.time() - tb:.1f} s; "
                     f"{sum(p.numel() for p in self.loaded[preset].model.parameters()) / 1e9:.2f} B parameters")
        return self.loaded[preset]

    def profile(self, preset, chunks, keeps, images, path, energy=True, decode_steps=0, batch=1):
        """Run ``chunks`` (lists of reducers; the baseline with the first) on each image in turn,
        each chunk only while the budget lasts."""
        from profiler.sweep import ProfileConfig, run_profile

        lm, a = self.model(preset), self.args
        for image in images:
            for i, chunk in enumerate(chunks):
                need = self.per_condition * (len(chunk) * len(keeps) + (i == 0)) * 1.1 * (1 + (batch - 1) / 8)
                if self.left() < need:
                    self.say(f"{preset} image {image}, {chunk}: skipped ({self.left():.0f} s left, needs about "
                             f"{need:.0f} s)")
                    continue
                tc = time.time()
                cfg = ProfileConfig(preset=preset, device=a.device, reducers=chunk, keeps=keeps, image_limit=image,
                                    warmup=a.warmup, reps=a.reps, energy="auto" if energy else "none",
                                    energy_window_s=a.energy_window_s, decode_steps=decode_steps, baseline=i == 0,
                                    batch=batch)
                counts = run_profile(cfg, path, lm=lm, progress=False)
                ran = counts["ok"] + counts["failed"] + counts["oom"]
                if ran and not decode_steps and batch == 1:
                    self.per_condition = max(self.per_condition, (time.time() - tc) / ran)
                self.say(f"{preset} image {image}, batch {batch}, {chunk}: {counts} in {time.time() - tc:.0f} s")

    # ------------------------------------------------------------------ the stages

    def stage_env(self):
        from profiler.environment import environment
        try:
            smi = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, timeout=30).stdout
        except Exception as e:  # noqa: BLE001 - no driver (dry run on a CPU)
            smi = f"nvidia-smi unavailable: {e}"
        (self.out / "env.txt").write_text(json.dumps(environment(self.device), indent=2) + "\n\n" + smi)

    def stage_reducers(self):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_reducers.py"), "--device", self.args.device,
               "--keeps", self.args.keep, "--reps", "20", "--no-sklearn", "--jsonl", str(self.out / "reducers.jsonl")]
        if self.cuda:
            cmd.append("--graphs")
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=max(30, min(150, self.left())))
        print(p.stdout + p.stderr[-3000:], flush=True)
        if p.returncode:
            raise RuntimeError(f"bench_reducers.py exited with {p.returncode}")

    def stage_profile(self):
        from profiler.energy import TraceRecorder, open_source
        source = open_source(self.device)
        recorder = TraceRecorder(source._read_j, period_s=0.02) if hasattr(source, "_read_j") else None
        self.say(f"energy source: {source.name} {source.unavailable_reason or ''}")
        try:
            with recorder if recorder is not None else contextlib.nullcontext():
                self.profile(self.args.preset, self.chunks, self.keeps, [1], self.out / "profile.jsonl")
        finally:
            if recorder is not None and recorder.t:
                recorder.save(self.out / "energy_trace.json")
            source.close()

    def stage_validate(self):
        from vtc.cli import main as vtc
        buf = io.StringIO()
        files = [str(self.out / f) for f in ("profile.jsonl", "graphs.jsonl") if (self.out / f).exists()]
        extra = [] if self.cuda else ["--gpu", str(ROOT / "costmodel" / "data" / "cpu-generic.toml")]
        with contextlib.redirect_stdout(buf):
            rc = vtc(["validate", *files, "--calibration-out", str(self.out / "calibration.json"), *extra])
        (self.out / "validate.txt").write_text(buf.getvalue())
        print(buf.getvalue(), flush=True)
        if rc:
            raise RuntimeError(f"vtc validate returned {rc}")

    def stage_graphs(self):
        from profiler.graph_timing import time_prefill
        from rows import append_rows

        lm = self.model(self.args.preset)
        for batch in [int(b) for b in self.args.batches.split(",")]:
            if self.left() < 10:
                self.say(f"graphs batch {batch}: skipped ({self.left():.0f} s left)")
                break
            rows = time_prefill(lm, keeps=[lm.visual_tokens, *self.keeps], batches=[batch], reps=20)
            append_rows(self.out / "graphs.jsonl", rows)
            for r in rows:
                g = r.get("graph_time_s")
                self.say(f"  {r['part']:11s} batch {batch:3d} keep {str(r['keep']):>4s}: eager "
                         f"{(r.get('eager_time_s') or float('nan')) * 1e3:8.2f} ms, graph "
                         + (f"{g * 1e3:8.2f} ms" if g else f"n/a ({r.get('graph_time_s_unavailable_reason') or r.get('error')})"))

    def stage_batch(self):
        for b in [int(x) for x in self.args.batches.split(",") if int(x) > 1]:
            self.profile(self.args.preset, [["random"]], self.keeps, [1], self.out / "profile.jsonl", batch=b)

    def stage_repeat(self):
        # the first chunk's conditions again in a fresh process: the run-to-run spread
        self.profile(self.args.preset, [self.chunks[0]], self.keeps, [1], self.out / "profile.jsonl")

    def stage_decode(self):
        self.profile(self.args.preset, [["random"]], [min(self.keeps)], [1], self.out / "decode.jsonl",
                     decode_steps=self.args.decode_steps)

    def stage_large(self):
        self.profile(self.args.large_preset, [["random"]], self.keeps, [1], self.out / "profile.jsonl")

    def stage_spread(self):
        # the same conditions measured again in later blocks (other images): run-to-run spread
        self.profile(self.args.preset, [self.args.spread_reducers.split(",")], self.keeps,
                     list(range(2, self.args.images + 1)), self.out / "profile.jsonl")


def main(argv=None) -> int:
    args = parse(argv)
    check = Check(args)
    for name in args.stages.split(","):  # in the order given
        check.stage(name)
    check.say(f"done in {time.time() - check.t0:.0f} s; stages: {json.dumps(check.results)}")
    check.say(f"files: {sorted(p.name for p in check.out.iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
