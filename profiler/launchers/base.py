"""The launcher interface and the worker contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable, Iterator


class LauncherError(ValueError):
    """A launcher that cannot start (no Ray, no GPU on the cluster, unreachable address...)."""


class Worker(ABC):
    """Built once per process from a picklable ``config``; ``run(unit)`` yields lists of rows as
    they are ready (a profile condition, an evaluated sample)."""

    @abstractmethod
    def __init__(self, config: dict, **local):
        """``local``: objects only a local launcher can pass (e.g. an already loaded model)."""

    @abstractmethod
    def run(self, unit) -> Iterator[list[dict]]:
        """Rows for one unit of work, yielded as they are ready."""

    def describe(self) -> dict:
        """What the driver needs to know of the worker's setup (model, GPU...) to plan units."""
        return {}


class Launcher(ABC):
    """Runs units of work on workers and hands their rows to ``write``."""

    name = ""

    @abstractmethod
    def describe(self, worker: type[Worker], config: dict) -> dict:
        """A worker's ``describe()``, built where the units will run."""

    @abstractmethod
    def map(self, worker: type[Worker], config: dict, units: Iterable, write: Callable[[list[dict]], None],
            failed: Callable[[object, str], list[dict]], progress: Callable[[int], None] | None = None) -> dict:
        """Run every unit; ``failed(unit, reason)`` gives the rows of a unit whose worker was lost
        for good. Returns counts (``units``, ``workers``, ``wall_s`` and launcher-specific ones)."""


def get_launcher(name: str, **options) -> Launcher:
    """``local`` or ``ray`` (options: address, workers, max_retries, needs_gpu, worker_local)."""
    if name == "local":
        from .local import LocalLauncher
        return LocalLauncher(**{k: v for k, v in options.items() if k == "worker_local"})
    if name == "ray":
        from .ray import RayLauncher
        return RayLauncher(**{k: v for k, v in options.items() if k != "worker_local"})
    raise LauncherError(f"backend {name!r} is not allowed; use 'local' or 'ray'")
