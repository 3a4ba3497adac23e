import pytest

from evaluation.scoring import (choice_correct, extract_choice, mme_scores, normalize_answer, pope_metrics,
                              vqa_accuracy)


@pytest.mark.parametrize("raw, norm", [
    ("Two", "2"), ("the dog.", "dog"), ("A Red Car", "red car"), ("dont", "don't"), ("yes!", "yes"),
    ("1,000", "1000"), ("3.5", "3.5"), ("left-hand", "left hand"), ("ten apples", "10 apples"),
])
def test_vqa_normalisation_corner_cases(raw, norm):
    assert normalize_answer(raw) == norm


def test_vqa_accuracy_is_min1_matches_over_3_averaged_over_leave_one_out():
    answers = ["2"] * 3 + ["3"] * 7
    # each 9-answer subset holds 2 or 3 "2"s: 3 subsets with 2 (score 2/3), 7 with 3 (score 1)
    assert vqa_accuracy("two", answers) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("3", answers) == 1.0
    assert vqa_accuracy("4", answers) == 0.0
    assert vqa_accuracy("Dog.", ["dog"]) == 1.0  # one reference: exact match after normalisation
    assert vqa_accuracy("unanswerable", ["unanswerable"] * 10) == 1.0


def test_pope_metrics_by_hand():
    preds = ["Yes", "yes, there is", "No", "no", "I think not"]  # the last is neither: counts as no
    labels = ["yes", "no", "yes", "no", "no"]
    m = pope_metrics(preds, labels)
    assert (m["accuracy"], m["precision"], m["recall"]) == (0.6, 0.5, 0.5)
    assert m["f1"] == 0.5 and m["yes_ratio"] == 0.4


@pytest.mark.parametrize("text, letter", [("B", "B"), ("B.", "B"), ("(C) a cat", "C"), ("The answer is D.", "D"),
                                          ("A", "A"), ("cat", None), ("A or B", "A"), ("it is B or C", None)])
def test_choice_letter_extraction(text, letter):
    assert extract_choice(text, 4) == letter


def test_choice_scoring():
    assert choice_correct("C", "c", 4) == 1.0 and choice_correct("B", "C", 4) == 0.0


def test_mme_acc_and_acc_plus():
    recs = [  # two images per subtask, two questions each
        {"subtask": "color", "image": "1", "prediction": "Yes", "answer": "yes"},
        {"subtask": "color", "image": "1", "prediction": "No", "answer": "no"},     # image 1: both right
        {"subtask": "color", "image": "2", "prediction": "Yes", "answer": "yes"},
        {"subtask": "color", "image": "2", "prediction": "Yes", "answer": "no"},    # image 2: one wrong
        {"subtask": "code_reasoning", "image": "3", "prediction": "No", "answer": "yes"},
        {"subtask": "code_reasoning", "image": "3", "prediction": "No", "answer": "no"},
    ]
    s = mme_scores(recs)
    assert s["subtasks"]["color"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "questions": 4}
    assert s["subtasks"]["code_reasoning"]["score"] == 50.0 + 0.0
    assert (s["perception"], s["cognition"], s["total"]) == (125.0, 50.0, 175.0)
