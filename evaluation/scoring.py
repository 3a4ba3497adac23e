"""Benchmark scorers: the standard metric of each benchmark, as pure functions.

* VQA accuracy (VQAv2, GQA's single answer, TextVQA, VizWiz): the official answer
  normalisation, then min(1, matches / 3) averaged over the 10 leave-one-out subsets of the
  human answers (with one reference answer it is exact match after normalisation).
* POPE: accuracy, precision, recall, F1 and the ratio of "yes" answers (yes = positive).
* Multiple choice (ScienceQA-IMG, MMBench): the option letter extracted from the answer.
* MME: per subtask, acc (questions right) and acc+ (images with both questions right), each in
  percent; a subtask's score is acc + acc+; perception and cognition scores are the sums over
  their subtasks (the paper's MME is perception + cognition).
"""

from __future__ import annotations

import re
from collections import defaultdict
from itertools import combinations

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "shouldnt": "shouldn't", "thats": "that's", "theres": "there's", "theyre": "they're", "theyve": "they've",
    "wasnt": "wasn't", "werent": "weren't", "whats": "what's", "wheres": "where's", "whos": "who's",
    "wont": "won't", "wouldnt": "wouldn't", "youre": "you're", "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_answer(text: str) -> str:
    """The VQA evaluation's answer normalisation (punctuation, digits, articles, contractions)."""
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = []
    for w in out.split():
        w = _NUMBERS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Official VQA accuracy of one prediction against the human answers (0..1)."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    if len(gts) == 1:
        return float(pred == gts[0])
    scores = []
    for subset in combinations(range(len(gts)), len(gts) - 1):
        matches = sum(1 for i in subset if gts[i] == pred)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def yes_no(text: str) -> str | None:
    """'yes' / 'no' from a free-form answer (first of either word), else None."""
    m = re.search(r"\b(yes|no)\b", text.lower())
    return m.group(1) if m else None


def pope_metrics(predictions: list[str], labels: list[str]) -> dict:
    """POPE: yes is the positive class; an answer that is neither counts as 'no' (as POPE does)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    tp = fp = tn = fn = yes = 0
    for p, l in zip(predictions, labels):
        p = yes_no(p) or "no"
        l = l.strip().lower()
        yes += p == "yes"
        if p == "yes" and l == "yes":
            tp += 1
        elif p == "yes":
            fp += 1
        elif l == "no":
            tn += 1
        else:
            fn += 1
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": yes / n if n else 0.0, "n": n}


def extract_choice(text: str, n_options: int) -> str | None:
    """The option letter of a multiple-choice answer: 'B', 'B.', '(B)', 'The answer is B'."""
    letters = "ABCDEFGHIJ"[:n_options]
    t = text.strip()
    m = re.match(rf"^\(?([{letters}])\)?(?:[.):\s]|$)", t)
    if m:
        return m.group(1)
    m = re.search(rf"answer is:?\s*\(?([{letters}])\b", t, re.IGNORECASE)
    if m:
        return m.group(1).upper()
    found = re.findall(rf"\b([{letters}])\b", t)
    return found[0] if len(found) == 1 else None


def choice_correct(prediction: str, answer_letter: str, n_options: int) -> float:
    return float(extract_choice(prediction, n_options) == answer_letter.strip().upper())


MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_scores(records: list[dict]) -> dict:
    """records: {subtask, image, prediction, answer} -> per-subtask acc, acc+, score; totals."""
    by_task = defaultdict(lambda: defaultdict(list))
    for r in records:
        ok = (yes_no(r["prediction"]) or "other") == r["answer"].strip().lower()
        by_task[r["subtask"]][r["image"]].append(ok)
    tasks = {}
    for task, images in by_task.items():
        answers = [ok for oks in images.values() for ok in oks]
        acc = 100 * sum(answers) / len(answers)
        acc_plus = 100 * sum(all(oks) for oks in images.values()) / len(images)
        tasks[task] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "questions": len(answers)}
    perception = sum(v["score"] for k, v in tasks.items() if k in MME_PERCEPTION)
    cognition = sum(v["score"] for k, v in tasks.items() if k in MME_COGNITION)
    return {"subtasks": tasks, "perception": perception, "cognition": cognition, "total": perception + cognition}
