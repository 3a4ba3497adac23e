"""Benchmark loaders: each benchmark's published file layout in a local folder -> samples.

A :class:`Sample` holds an image path, a question (with options for multiple choice), the
reference answer(s), the metric, and the LLaVA-1.5 answer prompt. Layouts (folder = --data):

* ``pope``: ``*.json``/``*.jsonl`` lines ``{"question_id", "image", "text", "label"}`` + images
  in the folder or ``images/`` (the POPE files from the POPE repository / LLaVA's eval kit).
* ``gqa``: ``testdev_balanced_questions.json`` ``{qid: {"imageId", "question", "answer"}}`` +
  ``images/<imageId>.jpg``.
* ``vqav2``: ``*questions*.json`` ``{"questions": [...]}`` + ``*annotations*.json``
  ``{"annotations": [{"question_id", "answers": [{"answer"}]}]}`` + COCO images under
  ``images/`` (``COCO_<split>_<image_id:012d>.jpg``, or ``<image_id>.jpg``).
* ``textvqa``: ``TextVQA_0.5.1_val.json`` ``{"data": [{"question_id", "image_id", "question",
  "answers"}]}`` + ``train_images/<image_id>.jpg``.
* ``vizwiz``: ``val.json`` ``[{"image", "question", "answers": [{"answer"}]}]`` + ``val/<image>``;
  "unanswerable" is an answer like any other.
* ``scienceqa``: ``problems.json`` ``{id: {"question", "choices", "answer", "image", "split"}}``
  (+ ``pid_splits.json``) + ``images/<split>/<id>/<image>``; only questions with an image
  (SQA-IMG), test split.
* ``mmbench``: a ``.tsv`` with ``index, question, hint, A..D, answer, image`` (base64), images
  written to a cache folder beside it.
* ``mme``: ``<subtask>/`` folders with ``questions_answers_YN/*.txt`` + ``images/``, or the
  ``.txt`` files beside the images; each line ``question<TAB>Yes|No``.
* ``jsonl``: any other benchmark: lines ``{"image", "question", "answers", "metric"}``, metric
  one of vqa, exact, yesno, choice (with ``"choices"``).
* ``easy-vqa``: the test split of the easy-vqa package (offline), exact match.
"""

from __future__ import annotations

import base64
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
METRICS = ("vqa", "exact", "yesno", "choice", "pope", "mme")


class BenchmarkError(ValueError):
    """A benchmark folder or file that cannot be read; names the file and what was expected."""


@dataclass
class Sample:
    sample_id: str
    image: str
    question: str           # the full prompt text after the image (question + options + answer prompt)
    answers: list[str]
    metric: str
    extra: dict = field(default_factory=dict)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchmarkError(f"missing file {str(path)!r}") from None
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"malformed JSON in {str(path)!r}: {e.msg} at line {e.lineno}") from None


def _read_jsonl(path: Path) -> list[dict]:
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


def _need(d: dict, keys, where: str):
    missing = [k for k in keys if k not in d]
    if missing:
        raise BenchmarkError(f"{where}: missing field(s) {', '.join(missing)}")


def _first(folder: Path, patterns: list[str], what: str) -> Path:
    for pat in patterns:
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    raise BenchmarkError(f"no {what} in {str(folder)!r} (looked for {', '.join(patterns)})")


def _image(folder: Path, candidates: list[str]) -> str:
    for c in candidates:
        p = folder / c
        if p.is_file():
            return str(p)
    return str(folder / candidates[0])  # reported as missing when the sample is evaluated


def load_pope(folder: Path) -> list[Sample]:
    files = sorted(folder.glob("*.json")) + sorted(folder.glob("*.jsonl"))
    if not files:
        raise BenchmarkError(f"no POPE question files (*.json, *.jsonl) in {str(folder)!r}")
    out = []
    for f in files:
        for i, q in enumerate(_read_jsonl(f)):
            _need(q, ("image", "text", "label"), f"{f} line {i + 1}")
            out.append(Sample(f"{f.stem}:{q.get('question_id', i)}", _image(folder, [q["image"], "images/" + q["image"]]),
                              f"{q['text']}\n{SHORT}", [q["label"]], "pope", {"category": f.stem}))
    return out


def load_gqa(folder: Path) -> list[Sample]:
    f = _first(folder, ["testdev_balanced_questions.json", "*questions*.json"], "GQA questions file")
    data = _read_json(f)
    out = []
    for qid, q in data.items():
        _need(q, ("imageId", "question", "answer"), f"{f} question {qid}")
        out.append(Sample(str(qid), _image(folder, [f"images/{q['imageId']}.jpg", f"{q['imageId']}.jpg"]),
                          f"{q['question']}\n{SHORT}", [q["answer"]], "vqa"))
    return out


def load_vqav2(folder: Path) -> list[Sample]:
    qf = _first(folder, ["*questions*.json"], "VQAv2 questions file")
    af = _first(folder, ["*annotations*.json"], "VQAv2 annotations file")
    qs, ann = _read_json(qf), _read_json(af)
    if "questions" not in qs or "annotations" not in ann:
        raise BenchmarkError(f"{qf} needs a 'questions' list and {af} an 'annotations' list")
    answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in ann["annotations"]}
    out = []
    for q in qs["questions"]:
        _need(q, ("question_id", "image_id", "question"), str(qf))
        iid = q["image_id"]
        img = _image(folder, [f"images/COCO_val2014_{iid:012d}.jpg", f"images/{iid}.jpg", f"{iid}.jpg"])
        if q["question_id"] not in answers:
            raise BenchmarkError(f"{af}: no answers for question {q['question_id']}")
        out.append(Sample(str(q["question_id"]), img, f"{q['question']}\n{SHORT}", answers[q["question_id"]], "vqa"))
    return out


def load_textvqa(folder: Path) -> list[Sample]:
    f = _first(folder, ["TextVQA_0.5.1_val.json", "*.json"], "TextVQA file")
    data = _read_json(f)
    if "data" not in data:
        raise BenchmarkError(f"{f}: expected a 'data' list")
    return [Sample(str(q["question_id"]), _image(folder, [f"train_images/{q['image_id']}.jpg", f"images/{q['image_id']}.jpg"]),
                   f"{q['question']}\n{SHORT}", q["answers"], "vqa") for q in data["data"]]


def load_vizwiz(folder: Path) -> list[Sample]:
    f = _first(folder, ["val.json", "*.json"], "VizWiz annotations")
    data = _read_json(f)
    prompt = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT
    out = []
    for i, q in enumerate(data):
        _need(q, ("image", "question", "answers"), f"{f} item {i}")
        out.append(Sample(q["image"], _image(folder, [f"val/{q['image']}", f"images/{q['image']}", q["image"]]),
                          f"{q['question']}\n{prompt}", [a["answer"] for a in q["answers"]], "vqa"))
    return out


def load_scienceqa(folder: Path) -> list[Sample]:
    f = _first(folder, ["problems.json"], "ScienceQA problems.json")
    problems = _read_json(f)
    out = []
    for pid, p in problems.items():
        _need(p, ("question", "choices", "answer", "split"), f"{f} problem {pid}")
        if not p.get("image") or p["split"] != "test":
            continue
        letters = "ABCDE"
        opts = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(p["choices"]))
        ctx = f"Context: {p['hint']}\n" if p.get("hint") else ""
        out.append(Sample(pid, _image(folder, [f"images/test/{pid}/{p['image']}", f"test/{pid}/{p['image']}"]),
                          f"{ctx}{p['question']}\n{opts}\n{LETTER}", [letters[p["answer"]]], "choice",
                          {"n_options": len(p["choices"])}))
    return out


def load_mmbench(folder: Path) -> list[Sample]:
    f = _first(folder, ["*.tsv"], "MMBench .tsv file")
    cache = folder / ".images"
    cache.mkdir(exist_ok=True)
    out = []
    with open(f, newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh, delimiter="\t")):
            _need(row, ("index", "question", "A", "B", "answer", "image"), f"{f} row {i + 2}")
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


def load_jsonl(path: Path) -> list[Sample]:
    f = path if path.is_file() else _first(path, ["*.jsonl"], "JSON Lines file")
    out = []
    for i, d in enumerate(_read_jsonl(f)):
        _need(d, ("image", "question", "answers"), f"{f} line {i + 1}")
        metric = d.get("metric", "vqa")
        if metric not in METRICS:
            raise BenchmarkError(f"{f} line {i + 1}: metric {metric!r} is not one of {', '.join(METRICS)}")
        q = d["question"]
        extra = {}
        if metric == "choice":
            _need(d, ("choices",), f"{f} line {i + 1}")
            q += "\n" + "\n".join(f"{'ABCDEFGHIJ'[k]}. {c}" for k, c in enumerate(d["choices"])) + "\n" + LETTER
            extra["n_options"] = len(d["choices"])
        answers = d["answers"] if isinstance(d["answers"], list) else [d["answers"]]
        img = d["image"] if Path(d["image"]).is_absolute() else str(f.parent / d["image"])
        out.append(Sample(str(d.get("id", i)), img, q, answers, metric, extra))
    return out


def load_easy_vqa(_folder=None) -> list[Sample]:
    try:
        from easy_vqa import get_test_image_paths, get_test_questions
    except ImportError:
        raise BenchmarkError("the easy-vqa package is not installed (pip install easy-vqa)") from None
    qs, answers, ids = get_test_questions()
    paths = get_test_image_paths()
    return [Sample(str(i), paths[im], q, [a], "exact") for i, (q, a, im) in enumerate(zip(qs, answers, ids))]


LOADERS = {"pope": load_pope, "gqa": load_gqa, "vqav2": load_vqav2, "textvqa": load_textvqa, "vizwiz": load_vizwiz,
           "scienceqa": load_scienceqa, "mmbench": load_mmbench, "mme": load_mme, "jsonl": load_jsonl,
           "easy-vqa": load_easy_vqa}


def load_benchmark(name: str, data: str | None) -> list[Sample]:
    if name not in LOADERS:
        raise BenchmarkError(f"unknown benchmark {name!r}; allowed: {', '.join(LOADERS)}")
    if name == "easy-vqa":
        return load_easy_vqa()
    if data is None:
        raise BenchmarkError(f"benchmark {name!r} needs --data PATH (its folder)")
    path = Path(data)
    if not path.exists():
        raise BenchmarkError(f"benchmark data {str(path)!r} does not exist")
    samples = LOADERS[name](path)
    if not samples:
        raise BenchmarkError(f"benchmark {name!r} at {str(path)!r} has no samples")
    return samples
