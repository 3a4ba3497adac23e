"""One module per benchmark, registered by canonical name (aliases: the names lmms-eval and
the paper use). ``get_task(name)``, ``load_benchmark(name, data)``, ``canonical(name)``."""

from . import easy_vqa, gqa, jsonl, mmbench, mme, mmvet, pope, scienceqa, shapes, textvqa, vizwiz, vqav2  # noqa: F401
from .base import (LETTER, METRICS, SHORT, TASKS, BenchmarkError, Sample, Task, canonical, get_task,
                   load_benchmark, register_task)

__all__ = ["LETTER", "METRICS", "SHORT", "TASKS", "BenchmarkError", "Sample", "Task", "canonical", "get_task",
           "load_benchmark", "register_task"]
