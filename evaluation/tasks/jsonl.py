"""Any other benchmark as JSON Lines: metric one of vqa, exact, yesno, choice."""

from __future__ import annotations

from pathlib import Path

from .base import (LETTER, METRICS, BenchmarkError, Sample, Task, first, need, read_jsonl, register_task)


def load_jsonl(path: Path) -> list[Sample]:
    f = path if path.is_file() else first(path, ["*.jsonl"], "JSON Lines file")
    out = []
    for i, d in enumerate(read_jsonl(f)):
        need(d, ("image", "question", "answers"), f"{f} line {i + 1}")
        metric = d.get("metric", "vqa")
        if metric not in METRICS:
            raise BenchmarkError(f"{f} line {i + 1}: metric {metric!r} is not one of {', '.join(METRICS)}")
        q = d["question"]
        extra = {}
        if metric == "choice":
            need(d, ("choices",), f"{f} line {i + 1}")
            q += "\n" + "\n".join(f"{'ABCDEFGHIJ'[k]}. {c}" for k, c in enumerate(d["choices"])) + "\n" + LETTER
            extra["n_options"] = len(d["choices"])
        answers = d["answers"] if isinstance(d["answers"], list) else [d["answers"]]
        img = d["image"] if Path(d["image"]).is_absolute() else str(f.parent / d["image"])
        out.append(Sample(str(d.get("id", i)), img, q, answers, metric, extra))
    return out


@register_task
class JSONLTask(Task):
    name = "jsonl"
    aliases = ()
    layout = "a .jsonl file (or a folder with one): lines {image, question, answers, metric[, choices]}"
    lmms_headline = None

    def load(self, data):
        return load_jsonl(data)
