"""MMBench (en dev): multiple choice by letter."""

from __future__ import annotations

import base64
import csv
from pathlib import Path

from .base import LETTER, BenchmarkError, Sample, Task, first, need, register_task


def load_mmbench(folder: Path) -> list[Sample]:
    f = first(folder, ["*.tsv"], "MMBench .tsv file")
    cache = folder / ".images"
    cache.mkdir(exist_ok=True)
    out = []
    with open(f, newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh, delimiter="\t")):
            need(row, ("index", "question", "A", "B", "answer", "image"), f"{f} row {i + 2}")
            img = cache / f"{row['index']}.jpg"
            if not img.exists():
                try:
                    img.write_bytes(base64.b64decode(row["image"], validate=True))
                except ValueError:
                    raise BenchmarkError(f"{f} row {i + 2}: 'image' is not base64") from None
            opts = [(k, row[k]) for k in "ABCD" if row.get(k) and row[k] != "nan"]
            hint = f"{row['hint']}\n" if row.get("hint") and row["hint"] != "nan" else ""
            text = hint + row["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in opts) + "\n" + LETTER
            out.append(Sample(str(row["index"]), str(img), text, [row["answer"]], "choice",
                              {"n_options": len(opts), "category": row.get("category")}))
    return out


@register_task
class MMBenchTask(Task):
    name = "mmbench"
    aliases = ("mmbench_en_dev", "mmbench_en", "mmbench_en_test")
    layout = "a .tsv with index, question, hint, A..D, answer, image (base64); images cached beside it"
    lmms_headline = "gpt_eval_score"

    def load(self, data):
        return load_mmbench(data)
