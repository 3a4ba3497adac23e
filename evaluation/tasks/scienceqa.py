"""ScienceQA-IMG: the test questions with an image, multiple choice by letter."""

from __future__ import annotations

from pathlib import Path

from .base import LETTER, Sample, Task, first, image_path, need, read_json, register_task


def load_scienceqa(folder: Path) -> list[Sample]:
    f = first(folder, ["problems.json"], "ScienceQA problems.json")
    problems = read_json(f)
    out = []
    for pid, p in problems.items():
        need(p, ("question", "choices", "answer", "split"), f"{f} problem {pid}")
        if not p.get("image") or p["split"] != "test":
            continue
        letters = "ABCDE"
        opts = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(p["choices"]))
        ctx = f"Context: {p['hint']}\n" if p.get("hint") else ""
        out.append(Sample(pid, image_path(folder, [f"images/test/{pid}/{p['image']}", f"test/{pid}/{p['image']}"]),
                          f"{ctx}{p['question']}\n{opts}\n{LETTER}", [letters[p["answer"]]], "choice",
                          {"n_options": len(p["choices"])}))
    return out


@register_task
class ScienceQATask(Task):
    name = "scienceqa"
    aliases = ("scienceqa_img", "sqa", "sqa-img", "scienceqa-img")
    layout = "problems.json {id: {question, choices, answer, image, split}} + images/test/<id>/<image>"
    lmms_headline = "exact_match"

    def load(self, data):
        return load_scienceqa(data)
