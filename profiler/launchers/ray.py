"""Units of work on a Ray cluster: ``vtc profile --backend ray``, ``vtc eval --backend ray``.

Each unit is a task on a pool of actors; an actor asks for one GPU (``num_gpus=1``; one CPU on
a CPU-only cluster) and builds its worker once (the model loads once, not once per task).
Rows flow back to the driver, which alone writes them. A worker that dies has its actor
restarted and its task retried (bounded); after that the unit's rows are the caller's
``failed`` rows with the reason, and a fresh actor takes the next unit. Every row says which
node measured it. Ray is imported only here, and only when the Ray backend is asked for.
"""

from __future__ import annotations

import os
import socket
import time

from .base import Launcher, LauncherError

RAY_HINT = "the Ray backend needs Ray: pip install '.[ray]' (or pip install 'ray>=2.9')"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LauncherError(RAY_HINT) from None
    return ray


def check_reachable(address: str | None, timeout_s: float = 3.0) -> None:
    """Fail within seconds, with the address in the message, when nothing listens there."""
    if address in (None, "", "auto", "local"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise LauncherError(f"--address {address!r} is not HOST:PORT (or 'auto')")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise LauncherError(f"cannot reach a Ray cluster at {address} ({e.strerror or type(e).__name__}); "
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
            raise LauncherError(f"cannot join the Ray cluster at {address}: {e}") from None
    return ray


def _actor_class(ray, worker, per_actor: dict, max_retries: int):
    @ray.remote(max_restarts=max_retries, max_task_retries=max_retries, **per_actor)
    class Actor:
        def __init__(self, config):
            self.worker = worker(config)
            self.node = {"ray_node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
                         "pid": os.getpid()}

        def describe(self):
            return self.worker.describe()

        def run(self, unit):
            rows = [r for batch in self.worker.run(unit) for r in batch]
            for r in rows:
                r["node"] = self.node
            return rows
    return Actor


class RayLauncher(Launcher):
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, max_retries: int = 2,
                 needs_gpu: str | None = None):
        """``needs_gpu``: why the work needs a GPU (refused on a cluster without one), or None."""
        self.address, self.workers, self.max_retries, self.needs_gpu = address, workers, max_retries, needs_gpu

    def _pool(self, ray, worker, config):
        key = (worker, repr(config))
        if getattr(self, "_cached", None) is not None and self._cached[0] == key:
            return self._cached[1]
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if self.needs_gpu and gpus == 0:
            have = ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU", "memory"))
            raise LauncherError(f"the Ray cluster has no GPU (resources: {have}) but {self.needs_gpu} needs one; "
                                "refused before any task started")
        per_actor = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        n = self.workers or max(1, gpus or int(resources.get("CPU", 1)))
        cls = _actor_class(ray, worker, per_actor, self.max_retries)
        if gpus:
            config = {**config, "device": "cuda"}
        pool = (cls, config, [cls.remote(config) for _ in range(n)])
        self._cached = (key, pool)
        return pool

    def describe(self, worker, config) -> dict:
        ray = connect(self.address, num_cpus=self.workers)
        _, _, actors = self._pool(ray, worker, config)
        return ray.get(actors[0].describe.remote())

    def map(self, worker, config, units, write, failed, progress=None) -> dict:
        ray = connect(self.address, num_cpus=self.workers)
        cls, config, actors = self._pool(ray, worker, config)
        queue, free, in_flight = list(units), list(actors), {}
        t0, lost = time.perf_counter(), 0
        while queue or in_flight:
            while queue and free:
                actor, unit = free.pop(), queue.pop(0)
                in_flight[actor.run.remote(unit)] = (actor, unit)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor, unit = in_flight.pop(ready[0])
            try:
                rows = ray.get(ready[0])
            except Exception as e:  # the actor died more often than max_retries: record, go on
                rows = failed(unit, f"worker lost after {self.max_retries} retries: {type(e).__name__}: {str(e)[:500]}")
                actor, lost = cls.remote(config), lost + 1  # a fresh worker for what remains
            write(rows)
            free.append(actor)
            if progress:
                progress(1)
        return {"units": len(units), "workers": len(actors), "lost": lost, "wall_s": time.perf_counter() - t0}
