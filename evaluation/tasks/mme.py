"""MME: yes/no per subtask; acc + acc+ per subtask, perception + cognition."""

from __future__ import annotations

from pathlib import Path

from .base import BenchmarkError, Sample, Task, register_task


def load_mme(folder: Path) -> list[Sample]:
    out = []
    subtasks = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subtasks:
        raise BenchmarkError(f"no MME subtask folders in {str(folder)!r}")
    for task in subtasks:
        qa_dir = task / "questions_answers_YN" if (task / "questions_answers_YN").is_dir() else task
        img_dir = task / "images" if (task / "images").is_dir() else task
        txts = sorted(qa_dir.glob("*.txt"))
        if not txts:
            raise BenchmarkError(f"MME subtask {task.name!r}: no question files (*.txt)")
        for t in txts:
            imgs = [p for p in img_dir.glob(t.stem + ".*") if p.suffix.lower() in (".jpg", ".png", ".jpeg")]
            image = str(imgs[0]) if imgs else str(img_dir / (t.stem + ".jpg"))
            for j, line in enumerate(t.read_text().splitlines()):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                    raise BenchmarkError(f"{t} line {j + 1}: expected 'question<TAB>Yes|No'")
                out.append(Sample(f"{task.name}/{t.stem}/{j}", image, parts[0].strip(), [parts[1].strip().lower()],
                                  "mme", {"subtask": task.name, "image_id": f"{task.name}/{t.stem}"}))
    return out


@register_task
class MMETask(Task):
    name = "mme"
    aliases = ()
    layout = "<subtask>/ folders with questions_answers_YN/*.txt + images/ (or the .txt beside the images); lines question<TAB>Yes|No"
    lmms_headline = ("mme_perception_score", "mme_cognition_score")
    lmms_alternatives = {"mme_percetion_score": "mme_perception_score"}  # the key before 2024

    def load(self, data):
        return load_mme(data)

    def aggregate(self, rows):
        from ..scoring import mme_scores
        mme = mme_scores([{"subtask": r["subtask"], "image": r["image"], "prediction": r["prediction"],
                           "answer": r["answers"][0]} for r in rows])
        return {"accuracy": sum(r["score"] for r in rows) / len(rows), "mme": mme, "mme_total": mme["total"]}
