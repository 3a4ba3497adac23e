"""POPE: object hallucination, yes/no; accuracy, precision, recall, F1, yes-ratio."""

from __future__ import annotations

from pathlib import Path

from .base import SHORT, BenchmarkError, Sample, Task, image_path, need, read_jsonl, register_task


def load_pope(folder: Path) -> list[Sample]:
    files = sorted(folder.glob("*.json")) + sorted(folder.glob("*.jsonl"))
    if not files:
        raise BenchmarkError(f"no POPE question files (*.json, *.jsonl) in {str(folder)!r}")
    out = []
    for f in files:
        for i, q in enumerate(read_jsonl(f)):
            need(q, ("image", "text", "label"), f"{f} line {i + 1}")
            out.append(Sample(f"{f.stem}:{q.get('question_id', i)}", image_path(folder, [q["image"], "images/" + q["image"]]),
                              f"{q['text']}\n{SHORT}", [q["label"]], "pope", {"category": f.stem}))
    return out


@register_task
class PopeTask(Task):
    name = "pope"
    aliases = ("pope_pop", "pope_adv", "pope_random", "pope_full")
    layout = "*.json/*.jsonl lines {question_id, image, text, label} + images in the folder or images/ (the POPE repository / LLaVA eval kit files)"
    lmms_headline = "pope_accuracy"

    def load(self, data):
        return load_pope(data)

    def aggregate(self, rows):
        from ..scoring import pope_metrics
        pope = pope_metrics([r["prediction"] for r in rows], [r["answers"][0] for r in rows])
        return {"accuracy": pope["accuracy"], "pope": pope}
