"""TextVQA (val): VQA accuracy."""

from __future__ import annotations

from pathlib import Path

from .base import SHORT, BenchmarkError, Sample, Task, first, image_path, read_json, register_task


def load_textvqa(folder: Path) -> list[Sample]:
    f = first(folder, ["TextVQA_0.5.1_val.json", "*.json"], "TextVQA file")
    data = read_json(f)
    if "data" not in data:
        raise BenchmarkError(f"{f}: expected a 'data' list")
    return [Sample(str(q["question_id"]), image_path(folder, [f"train_images/{q['image_id']}.jpg", f"images/{q['image_id']}.jpg"]),
                   f"{q['question']}\n{SHORT}", q["answers"], "vqa") for q in data["data"]]


@register_task
class TextVQATask(Task):
    name = "textvqa"
    aliases = ("textvqa_val", "textvqa_test")
    layout = "TextVQA_0.5.1_val.json {data: [...]} + train_images/<image_id>.jpg"
    lmms_headline = "exact_match"

    def load(self, data):
        return load_textvqa(data)
