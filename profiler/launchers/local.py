"""Run units in this process, one worker, rows written as each is ready."""

from __future__ import annotations

import time

from .base import Launcher


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, worker_local: dict | None = None):
        self.worker_local = worker_local or {}

    def __init_worker(self, worker, config):
        if getattr(self, "_worker", None) is None or self._worker_key != (worker, id(config)):
            self._worker, self._worker_key = worker(config, **self.worker_local), (worker, id(config))
        return self._worker

    def describe(self, worker, config) -> dict:
        return self.__init_worker(worker, config).describe()

    def map(self, worker, config, units, write, failed, progress=None) -> dict:
        t0 = time.perf_counter()
        w = self.__init_worker(worker, config)
        n = 0
        for unit in units:
            for rows in w.run(unit):
                write(rows)
            n += 1
            if progress:
                progress(1)
        return {"units": n, "workers": 1, "wall_s": time.perf_counter() - t0}
