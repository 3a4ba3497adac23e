"""Sweeps on a Ray cluster: ``vtc profile --backend ray``.

The unit of work is the same as the local backend's: one image with its pending conditions
(warmed up and timed interleaved, as locally). Each unit is a task on a pool of actors; an
actor asks for one GPU (``num_gpus=1``; one CPU on a CPU-only cluster) and loads the model once,
not once per task. Results flow back to the driver, which alone appends rows, so lines never
interleave; resume is the local backend's (conditions already written with status ok are
skipped). A worker that dies has its actor restarted and its task retried (bounded); after that
the task's conditions are recorded as failed with the reason. Every row says which node and
which GPU measured it. Ray is imported only here, and only when the Ray backend is asked for.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from .rows import append_rows
from .sweep import ProfileConfig, SweepError, condition_key, done_keys

RAY_HINT = "the Ray backend needs Ray: pip install '.[ray]' (or pip install 'ray>=2.9')"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError(RAY_HINT) from None
    return ray


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail within seconds, with the address in the message, when nothing listens there."""
    if address in (None, "", "auto", "local"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address!r} is not HOST:PORT (or 'auto')")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise SweepError(f"cannot reach a Ray cluster at {address} ({e.strerror or type(e).__name__}); "
                         "start one with `ray start --head` or check the address") from None


def connect(address: str | None, num_cpus: int | None = None):
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    check_reachable(address)
    if address in (None, "", "local"):
        # a cluster of this machine alone: keep all its traffic on the loopback interface
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    else:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as e:
            raise SweepError(f"cannot join the Ray cluster at {address}: {e}") from None
    return ray


def _needs_gpu(cfg: ProfileConfig) -> bool:
    return str(cfg.device).startswith("cuda") or (cfg.preset not in (None, "tiny"))


def run_profile_ray(cfg: ProfileConfig, out: str | Path, *, address: str | None = None, workers: int | None = None,
                    max_retries: int = 2, progress: bool = True, reducer_factory_name: str | None = None) -> dict:
    """Run (or resume) a profile sweep on Ray; the driver writes ``out``."""
    ray = connect(address, num_cpus=workers)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if _needs_gpu(cfg) and gpus == 0:
        raise SweepError(f"the Ray cluster has no GPU (resources: {', '.join(f'{k}={v:g}' for k, v in sorted(resources.items()) if k in ('CPU', 'GPU', 'memory'))}) "
                         f"but {'--device ' + cfg.device if str(cfg.device).startswith('cuda') else 'preset ' + str(cfg.preset)} "
                         "needs one; refused before any task started")
    per_actor = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    n_workers = workers or max(1, gpus or int(resources.get("CPU", 1)))

    from .images import load_images
    images = load_images(cfg.images, cfg.image_limit)

    @ray.remote(max_restarts=max_retries, max_task_retries=max_retries, **per_actor)
    class ProfileWorker:
        def __init__(self, cfg_dict: dict):
            from profiler.models import load
            from profiler.runner import get_reducer
            from profiler.sweep import Profiler
            self.cfg = ProfileConfig(**cfg_dict)
            if gpus:
                self.cfg.device = "cuda"
            self.lm = load(preset=self.cfg.preset, model_path=self.cfg.model_path, device=self.cfg.device,
                           dtype=self.cfg.dtype, attn_implementation=self.cfg.attn_implementation, seed=self.cfg.seed)
            factory = get_reducer
            if reducer_factory_name:  # tests inject faulty reducers by an importable name
                mod, _, fn = reducer_factory_name.rpartition(".")
                factory = getattr(__import__(mod, fromlist=[fn]), fn)
            self.prof = Profiler(self.lm, self.cfg, factory)
            self.node = ray.get_runtime_context().get_node_id()
            self.host = socket.gethostname()
            self.pid = os.getpid()

        def plan(self):
            from profiler.sweep import plan
            return [(name, keep) for name, keep, _ in plan(self.cfg, self.lm, self.prof.factory)], \
                self.prof.gpu, self.lm.source, str(self.lm.dtype).replace("torch.", ""), self.lm.attn_implementation

        def measure(self, name, image, pending):
            from profiler.sweep import Condition
            conds = [Condition(r, k, None if r == "none" else self.prof.factory(r)) for r, k in pending]
            rows = self.prof.measure_image(name, image, conds)
            for row in rows:
                row["node"] = {"ray_node_id": self.node, "hostname": self.host, "pid": self.pid}
            return rows

    cfg_dict = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    actors = [ProfileWorker.remote(cfg_dict) for _ in range(n_workers)]
    conditions, gpu_label, source, dtype, attn = ray.get(actors[0].plan.remote())
    done = done_keys(out)
    tasks = []
    for name, image in images:
        pending = []
        for rname, keep in conditions:
            probe = {"kind": "profile", "model": source, "gpu": gpu_label, "reducer": rname, "keep": keep,
                     "image": name, "dtype": dtype, "attn_implementation": attn, "options": cfg.options()}
            if condition_key(probe) not in done:
                pending.append((rname, keep))
        if pending:
            tasks.append((name, image, pending))
    counts = {"ok": 0, "failed": 0, "oom": 0, "skipped": len(images) * len(conditions) - sum(len(p) for *_, p in tasks),
              "tasks": len(tasks), "workers": n_workers}
    bar = None
    if progress and tasks:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), unit="image", desc="profile (ray)", dynamic_ncols=True)
    free = list(actors)
    in_flight = {}
    queue = list(tasks)
    t0 = time.perf_counter()
    try:
        while queue or in_flight:
            while queue and free:
                actor = free.pop()
                name, image, pending = queue.pop(0)
                in_flight[actor.measure.remote(name, image, pending)] = (actor, name, pending)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            actor, name, pending = in_flight.pop(ref)
            try:
                rows = ray.get(ref)
            except Exception as e:  # the actor died more often than max_retries: record, go on
                rows = [{"kind": "profile", "status": "failed", "model": source, "gpu": gpu_label, "reducer": r,
                         "keep": k, "image": name, "dtype": dtype, "attn_implementation": attn,
                         "options": cfg.options(), "error": f"worker lost after {max_retries} retries: "
                                                            f"{type(e).__name__}: {str(e)[:500]}"} for r, k in pending]
                actor = ProfileWorker.remote(cfg_dict)  # a fresh worker for what remains
            append_rows(out, rows)
            for r in rows:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            free.append(actor)
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
    counts["wall_s"] = time.perf_counter() - t0
    return counts


def run_eval_ray(*, preset: str | None, model_path: str | None, device: str, dtype: str | None, seed: int,
                 benchmark: str, samples, reducer_name: str, keep: int | None, out: str | Path,
                 limit: int | None = None, fidelity: bool = True, max_new_tokens: int = 8, address: str | None = None,
                 workers: int | None = None, shard: int = 32, max_retries: int = 2, progress: bool = True) -> dict:
    """``vtc eval --backend ray``: shards of samples on a pool of actors; the driver writes rows."""
    from .evaluate import summarize_eval
    from .rows import read_rows

    ray = connect(address, num_cpus=workers)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if (str(device).startswith("cuda") or preset not in (None, "tiny")) and gpus == 0:
        raise SweepError("the Ray cluster has no GPU but this model needs one; refused before any task started")
    per_actor = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    n_workers = workers or max(1, gpus or int(resources.get("CPU", 1)))

    @ray.remote(max_restarts=max_retries, max_task_retries=max_retries, **per_actor)
    class EvalWorker:
        def __init__(self):
            from profiler.evaluate import Evaluator
            from profiler.models import load
            self.lm = load(preset=preset, model_path=model_path, device="cuda" if gpus else device, dtype=dtype,
                           seed=seed)
            self.ev = Evaluator(self.lm, max_new_tokens, seed)

        def identity(self):
            return self.lm.source, self.lm.visual_tokens

        def run(self, chunk, keep_):
            from profiler.evaluate import eval_base, sample_row
            from profiler.runner import get_reducer
            red = None if reducer_name == "none" else get_reducer(reducer_name)
            base = eval_base(self.lm, benchmark, reducer_name, red, keep_)
            rows = [sample_row(self.ev, base, s, red, keep_, fidelity) for s in chunk]
            node = ray.get_runtime_context().get_node_id()
            for r in rows:
                r["node"] = {"ray_node_id": node, "hostname": socket.gethostname(), "pid": os.getpid()}
            return rows

    actors = [EvalWorker.remote() for _ in range(n_workers)]
    source, visual = ray.get(actors[0].identity.remote())
    keep = visual if reducer_name == "none" or keep is None else keep
    if not 1 <= keep <= visual:
        raise SweepError(f"keep = {keep} is out of range; allowed: 1..{visual} visual tokens")
    samples = samples[:limit] if limit else samples
    done = set()
    if Path(out).exists():
        done = {r["sample_id"] for r in read_rows(out) if r.get("kind") == "eval" and r.get("status") == "ok"
                and not r.get("summary") and (r["benchmark"], r["model"], r["reducer"], r["keep"])
                == (benchmark, source, reducer_name, keep)}
    todo = [s for s in samples if s.sample_id not in done]
    chunks = [todo[i:i + shard] for i in range(0, len(todo), shard)]
    free, in_flight = list(actors), {}
    while chunks or in_flight:
        while chunks and free:
            a = free.pop()
            c = chunks.pop(0)
            in_flight[a.run.remote(c, keep)] = (a, c)
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        a, c = in_flight.pop(ready[0])
        try:
            rows = ray.get(ready[0])
        except Exception as e:
            rows = [{"kind": "eval", "status": "failed", "benchmark": benchmark, "model": source,
                     "reducer": reducer_name, "keep": keep, "sample_id": s.sample_id, "metric": s.metric,
                     "error": f"worker lost after {max_retries} retries: {type(e).__name__}"} for s in c]
            a = EvalWorker.remote()
        append_rows(out, rows)
        free.append(a)
    summary = summarize_eval(out, benchmark, source, reducer_name, keep, {s.sample_id for s in samples})
    append_rows(out, [{"schema_version": 1, "kind": "eval", "benchmark": benchmark, "model": source,
                       "reducer": reducer_name, "keep": keep, **summary}])
    return summary
