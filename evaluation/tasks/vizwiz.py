"""VizWiz-VQA (val): VQA accuracy; 'unanswerable' is an answer like any other."""

from __future__ import annotations

from pathlib import Path

from .base import SHORT, Sample, Task, first, image_path, need, read_json, register_task


def load_vizwiz(folder: Path) -> list[Sample]:
    f = first(folder, ["val.json", "*.json"], "VizWiz annotations")
    data = read_json(f)
    prompt = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT
    out = []
    for i, q in enumerate(data):
        need(q, ("image", "question", "answers"), f"{f} item {i}")
        out.append(Sample(q["image"], image_path(folder, [f"val/{q['image']}", f"images/{q['image']}", q["image"]]),
                          f"{q['question']}\n{prompt}", [a["answer"] for a in q["answers"]], "vqa"))
    return out


@register_task
class VizWizTask(Task):
    name = "vizwiz"
    aliases = ("vizwiz_vqa_val", "vizwiz_vqa", "vizwiz_vqa_test")
    layout = "val.json [{image, question, answers}] + val/<image>"
    lmms_headline = "exact_match"

    def load(self, data):
        return load_vizwiz(data)
