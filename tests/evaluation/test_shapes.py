"""The synthetic shapes VQA generator: deterministic, balanced, disjoint splits, correct answers."""

from collections import Counter

import numpy as np
import pytest

from evaluation import shapes
from evaluation.shapes import Obj


@pytest.fixture(scope="module")
def test_set():
    return shapes.generate("test", 240, seed=0)


def _pixels(sample):
    return np.asarray(sample.image).tobytes()


def test_deterministic_and_prefix_stable(test_set):
    again = shapes.generate("test", 240, seed=0)
    assert [(s.id, s.question, s.answer, s.kind) for s in again] == \
        [(s.id, s.question, s.answer, s.kind) for s in test_set]
    assert all(_pixels(a) == _pixels(b) for a, b in zip(again, test_set))
    head = shapes.generate("test", 30, seed=0)
    assert [s.question for s in head] == [s.question for s in test_set[:30]]
    tail = shapes.generate("test", 10, seed=0, start=100)
    assert [(s.id, s.question) for s in tail] == [(s.id, s.question) for s in test_set[100:110]]
    other = shapes.generate("test", 30, seed=1)
    assert [s.question for s in other] != [s.question for s in head]


def test_splits_are_disjoint(test_set):
    train = shapes.generate("train", 480, seed=0)
    key = lambda s: (s.question, _pixels(s))  # noqa: E731
    assert not {key(s) for s in train} & {key(s) for s in test_set}
    assert not {s.id for s in train} & {s.id for s in test_set}
    # scenes, not just ids, differ: same index, same kind, different scene
    assert sum(a.objects == b.objects for a, b in zip(train, test_set)) == 0
    # membership is by content, so even the same seed and index never cross over
    assert all(shapes._split_of(s.question, s.objects) == "test" for s in test_set)
    assert all(shapes._split_of(s.question, s.objects) == "train" for s in train)


def test_every_kind_present_and_answers_balanced(test_set):
    kinds = Counter(s.kind for s in test_set)
    assert set(kinds) == set(shapes.KINDS)
    assert max(kinds.values()) - min(kinds.values()) <= 1
    for kind in shapes.KINDS:
        answers = Counter(s.answer for s in test_set if s.kind == kind)
        assert set(answers) == set(shapes.KIND_ANSWERS[kind]), kind
        assert max(answers.values()) - min(answers.values()) <= 1, (kind, answers)
    rates = shapes.majority_rate(test_set)
    assert list(rates) == list(shapes.KINDS)
    for kind, rate in rates.items():
        assert rate == pytest.approx(1 / len(shapes.KIND_ANSWERS[kind]), abs=0.03)


def test_balanced_at_any_length():
    samples = shapes.generate("train", 77, seed=3)
    for kind in shapes.KINDS:
        answers = Counter(s.answer for s in samples if s.kind == kind)
        counts = [answers.get(a, 0) for a in shapes.KIND_ANSWERS[kind]]
        assert max(counts) - min(counts) <= 1, (kind, answers)


def test_answers_vocabulary_and_images(test_set):
    for s in test_set:
        assert s.answer in shapes.ANSWERS
        assert s.answer in shapes.KIND_ANSWERS[s.kind]
        assert s.image.mode == "RGB" and s.image.size == (96, 96)
        assert 3 <= len(s.objects) <= 6
        assert len({(o.row, o.col) for o in s.objects}) == len(s.objects)  # one shape per cell
        assert len({(o.colour, o.shape) for o in s.objects}) == len(s.objects)  # unique referents
        assert shapes.answer(s.question, s.objects) == s.answer  # the scene has the dealt answer
    big = shapes.generate("test", 2, image_size=192)
    assert big[0].image.size == (192, 192) and big[0].question == test_set[0].question
    # enough 8-pixel patches for budgets of 64, 36, 16 and 9 to be different regimes
    assert (96 // 8) ** 2 >= 144


def _questions(split, n, seed=0):
    """(kind, question, answer) without drawing the images (fast)."""
    out = []
    for i in range(n):
        kind, target = shapes._target(seed, split, i)
        q, objs = shapes._scene(np.random.default_rng([seed, i]), kind, target)
        assert shapes.answer(q, objs) == target
        out.append((kind, q, target))
    return out


def test_question_does_not_give_the_answer_away():
    # the most common answer of each question (learned on train) is no better on test than the
    # kind's majority answer: a model that ignores the image is held to the majority rate
    train, test = _questions("train", 6000), _questions("test", 3000, seed=1)
    by_question, by_kind = {}, {}
    for kind, q, a in train:
        by_question.setdefault(q, Counter())[a] += 1
        by_kind.setdefault(kind, Counter())[a] += 1
    for kind in shapes.KINDS:
        rows = [(q, a) for k, q, a in test if k == kind]
        guess = lambda q: (by_question.get(q) or by_kind[kind]).most_common(1)[0][0]  # noqa: E731
        acc = sum(guess(q) == a for q, a in rows) / len(rows)
        assert acc < 1 / len(shapes.KIND_ANSWERS[kind]) + 0.06, (kind, acc)


KNOWN = (Obj("circle", "red", 0, 0, 20), Obj("triangle", "blue", 0, 2, 20), Obj("triangle", "green", 2, 1, 20),
         Obj("square", "yellow", 1, 1, 8), Obj("cross", "red", 2, 2, 18))


def test_known_scene_is_drawn_where_it_says():
    im = np.asarray(shapes.render(KNOWN)).astype(int)
    assert tuple(im[16, 16]) == shapes.RGB["red"]       # top left cell centre
    assert tuple(im[80, 48]) == shapes.RGB["green"]     # bottom middle
    assert tuple(im[48, 48]) == shapes.RGB["yellow"]    # centre
    assert tuple(im[80, 80]) == shapes.RGB["red"]       # bottom right (cross centre)
    assert tuple(im[48, 16]) == shapes.BACKGROUND       # middle left is empty
    assert tuple(im[1, 1]) == shapes.BACKGROUND
    # a red circle has red pixels only in the top left cell and the bottom right one (the cross)
    red = np.all(im == shapes.RGB["red"], axis=-1)
    assert red[:32, :32].sum() > 200 and red[64:, 64:].sum() > 100 and red[:64, 32:].sum() == 0
    assert np.all(np.asarray(shapes.blank()) == shapes.BACKGROUND)


@pytest.mark.parametrize("question, expected", [
    ("is there a red circle?", "yes"),
    ("is there a red triangle?", "no"),
    ("how many triangles are there?", "2"),
    ("how many red shapes are there?", "2"),
    ("how many circles are there?", "1"),
    ("how many crosses are there?", "1"),
    ("how many yellow shapes are there?", "1"),
    ("how many squares are there?", "1"),
    ("what colour is the shape in the top left?", "red"),
    ("what colour is the shape in the bottom middle?", "green"),
    ("what shape is in the top right?", "triangle"),
    ("what shape is in the center?", "square"),
    ("is the red circle left of the blue triangle?", "yes"),
    ("is the blue triangle left of the red circle?", "no"),
    ("is the red circle right of the green triangle?", "no"),
    ("is the red circle above the green triangle?", "yes"),
    ("is the red cross below the blue triangle?", "yes"),
    ("is the yellow square above the blue triangle?", "no"),
    ("what colour is the smallest shape?", "yellow"),
])
def test_answers_of_a_known_scene(question, expected):
    assert shapes.answer(question, KNOWN) == expected


def test_unanswerable_questions_are_refused():
    with pytest.raises(ValueError, match="middle left"):
        shapes.answer("what colour is the shape in the middle left?", KNOWN)
    with pytest.raises(ValueError, match="same row"):
        shapes.answer("is the red circle above the blue triangle?", KNOWN)
    with pytest.raises(ValueError, match="not one of"):
        shapes.answer("why?", KNOWN)


@pytest.mark.parametrize("args, kwargs, match", [
    (("val", 3), {}, r"split = 'val' is not allowed; allowed: train, test"),
    (("train", -1), {}, r"n = -1 is out of range"),
    (("train", 2.5), {}, r"n = 2.5 is out of range"),
    (("train", True), {}, r"n = True is out of range"),
    (("train", 2), {"seed": -3}, r"seed = -3 is out of range"),
    (("train", 2), {"image_size": 16}, r"image_size = 16 is out of range; allowed: integers 48..1024"),
    (("train", 2), {"start": -1}, r"start = -1 is out of range"),
])
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        shapes.generate(*args, **kwargs)
    assert "\n" not in str(e.value)


def test_zero_samples():
    assert shapes.generate("train", 0) == []
    assert shapes.majority_rate([]) == {}
