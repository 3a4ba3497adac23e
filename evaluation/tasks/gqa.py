"""GQA (testdev balanced): exact match after VQA normalisation."""

from __future__ import annotations

from pathlib import Path

from .base import SHORT, Sample, Task, first, image_path, need, read_json, register_task


def load_gqa(folder: Path) -> list[Sample]:
    f = first(folder, ["testdev_balanced_questions.json", "*questions*.json"], "GQA questions file")
    data = read_json(f)
    out = []
    for qid, q in data.items():
        need(q, ("imageId", "question", "answer"), f"{f} question {qid}")
        out.append(Sample(str(qid), image_path(folder, [f"images/{q['imageId']}.jpg", f"{q['imageId']}.jpg"]),
                          f"{q['question']}\n{SHORT}", [q["answer"]], "vqa"))
    return out


@register_task
class GQATask(Task):
    name = "gqa"
    aliases = ("gqa_testdev", "gqa_testdev_balanced")
    layout = "testdev_balanced_questions.json {qid: {imageId, question, answer}} + images/<imageId>.jpg"
    lmms_headline = "exact_match"

    def load(self, data):
        return load_gqa(data)
