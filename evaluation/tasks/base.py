"""The benchmark contract: a :class:`Sample`, a :class:`Task` (load, prompt, per-sample score,
aggregation, ONE canonical name plus the aliases other tools use), and the registry.

A new benchmark is one module in ``evaluation/tasks/`` defining a ``Task`` subclass with
``@register_task``, imported in ``evaluation/tasks/__init__.py``; measured rows, lmms-eval
imports and published numbers then all carry its canonical name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import scoring

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
METRICS = ("vqa", "exact", "yesno", "choice", "pope", "mme")


class BenchmarkError(ValueError):
    """A benchmark folder or file that cannot be read; names the file and what was expected."""


@dataclass
class Sample:
    sample_id: str
    image: object           # a path (str) or a PIL image (generated benchmarks)
    question: str           # the full prompt text after the image (question + options + answer prompt)
    answers: list[str]
    metric: str
    extra: dict = field(default_factory=dict)


class Task:
    """One benchmark. Subclasses set ``name``, ``aliases``, ``layout`` and implement ``load``."""

    name = ""
    aliases: tuple[str, ...] = ()
    layout = ""             # the folder layout --data points at, for help and errors
    needs_data = True       # False: the samples are generated or shipped (no --data)
    #: lmms-eval's metric key(s) of the headline number (a tuple is summed, e.g. MME)
    lmms_headline: str | tuple[str, ...] | None = None
    lmms_alternatives: dict[str, str] = {}  # an older metric key -> the current one

    def load(self, data: Path | None) -> list[Sample]:
        raise NotImplementedError

    def score(self, sample: Sample, prediction: str) -> float:
        m = sample.metric
        if m == "vqa":
            return scoring.vqa_accuracy(prediction, sample.answers)
        if m == "exact":
            return float(scoring.normalize_answer(prediction) in {scoring.normalize_answer(a) for a in sample.answers})
        if m in ("yesno", "pope", "mme"):
            return float((scoring.yes_no(prediction) or "") == sample.answers[0].strip().lower())
        if m == "choice":
            return scoring.choice_correct(prediction, sample.answers[0], sample.extra.get("n_options", 4))
        raise BenchmarkError(f"unknown metric {m!r}; allowed: {', '.join(METRICS)}")

    def aggregate(self, rows: list[dict]) -> dict:
        """The summary of scored sample rows: accuracy (mean score) and the benchmark's own metrics."""
        return {"accuracy": sum(r["score"] for r in rows) / len(rows)}


TASKS: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


def register_task(cls: type[Task]) -> type[Task]:
    task = cls()
    for n in (task.name, *task.aliases):
        if n in _ALIASES and _ALIASES[n] != task.name:
            raise BenchmarkError(f"benchmark name {n!r} is taken by {_ALIASES[n]!r}")
        _ALIASES[n] = task.name
    TASKS[task.name] = task
    return cls


def canonical(name: str) -> str | None:
    """The canonical benchmark name for a name or alias (``scienceqa_img`` -> ``scienceqa``)."""
    return _ALIASES.get(name) or _ALIASES.get(name.lower())


def get_task(name: str) -> Task:
    key = canonical(name)
    if key is None:
        raise BenchmarkError(f"unknown benchmark {name!r}; allowed: {', '.join(TASKS)}")
    return TASKS[key]


def load_benchmark(name: str, data: str | None) -> list[Sample]:
    task = get_task(name)
    if not task.needs_data:
        return task.load(Path(data) if data else None)
    if data is None:
        raise BenchmarkError(f"benchmark {task.name!r} needs --data PATH (its folder: {task.layout})")
    path = Path(data)
    if not path.exists():
        raise BenchmarkError(f"benchmark data {str(path)!r} does not exist")
    samples = task.load(path)
    if not samples:
        raise BenchmarkError(f"benchmark {task.name!r} at {str(path)!r} has no samples")
    return samples


# ---------------------------------------------------------------------- file helpers


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchmarkError(f"missing file {str(path)!r}") from None
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"malformed JSON in {str(path)!r}: {e.msg} at line {e.lineno}") from None


def read_jsonl(path: Path) -> list[dict]:
    out = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise BenchmarkError(f"missing file {str(path)!r}") from None
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"malformed JSON in {str(path)!r} line {i}: {e.msg}") from None
    return out


def need(d: dict, keys, where: str):
    missing = [k for k in keys if k not in d]
    if missing:
        raise BenchmarkError(f"{where}: missing field(s) {', '.join(missing)}")


def first(folder: Path, patterns: list[str], what: str) -> Path:
    for pat in patterns:
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    raise BenchmarkError(f"no {what} in {str(folder)!r} (looked for {', '.join(patterns)})")


def image_path(folder: Path, candidates: list[str]) -> str:
    for c in candidates:
        p = folder / c
        if p.is_file():
            return str(p)
    return str(folder / candidates[0])  # reported as missing when the sample is evaluated
