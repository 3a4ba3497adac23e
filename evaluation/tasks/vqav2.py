"""VQAv2: VQA accuracy over the 10 human answers."""

from __future__ import annotations

from pathlib import Path

from .base import (SHORT, BenchmarkError, Sample, Task, first, image_path, need, read_json, register_task)


def load_vqav2(folder: Path) -> list[Sample]:
    qf = first(folder, ["*questions*.json"], "VQAv2 questions file")
    af = first(folder, ["*annotations*.json"], "VQAv2 annotations file")
    qs, ann = read_json(qf), read_json(af)
    if "questions" not in qs or "annotations" not in ann:
        raise BenchmarkError(f"{qf} needs a 'questions' list and {af} an 'annotations' list")
    answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in ann["annotations"]}
    out = []
    for q in qs["questions"]:
        need(q, ("question_id", "image_id", "question"), str(qf))
        iid = q["image_id"]
        img = image_path(folder, [f"images/COCO_val2014_{iid:012d}.jpg", f"images/{iid}.jpg", f"{iid}.jpg"])
        if q["question_id"] not in answers:
            raise BenchmarkError(f"{af}: no answers for question {q['question_id']}")
        out.append(Sample(str(q["question_id"]), img, f"{q['question']}\n{SHORT}", answers[q["question_id"]], "vqa"))
    return out


@register_task
class VQAv2Task(Task):
    name = "vqav2"
    aliases = ("vqav2_val", "vqav2_test", "vqav2_val_lite")
    layout = "*questions*.json {questions: [...]} + *annotations*.json {annotations: [...]} + COCO images under images/"
    lmms_headline = "exact_match"

    def load(self, data):
        return load_vqav2(data)
