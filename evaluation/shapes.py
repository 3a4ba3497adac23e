"""Shapes VQA: a seeded, offline, synthetic visual question answering set where the image matters.

Each image shows 3 to 6 small shapes (circle, square, triangle, cross) in four colours on a
dark background, one per cell of a 3x3 grid, with a size and a small offset inside its cell;
no two shapes of a scene share both colour and shape. Questions come in six kinds, chosen to
stress what visual-token reducers lose in different ways:

==============  =====================================================  =====================
kind            example question                                       answers
==============  =====================================================  =====================
presence        is there a red circle?                                 yes, no
count           how many triangles are there? / how many red shapes    0, 1, 2, 3
                are there?
colour_at       what colour is the shape in the top left?              red, green, blue, yellow
shape_at        what shape is in the center?                           circle, square, ...
relative        is the red circle left of the blue square?             yes, no
                (left of, right of, above, below)
smallest        what colour is the smallest shape?                     red, green, blue, yellow
==============  =====================================================  =====================

Kinds take turns (sample ``i`` is of kind ``KINDS[i % 6]``) and each kind's answers are
balanced: they are dealt in shuffled rounds of the kind's answer set, and the scene is built
to have the dealt answer, so no question gives its answer away (a model that does not look at
the image is held to the majority-answer rate, :func:`majority_rate`). Every answer is one word.

The ``train`` and ``test`` splits are disjoint streams: each sample draws from its own
generator seeded with ``(seed, split, index)``, and a sample (question and scene) belongs to
exactly one split by a hash of its content, so no (image, question) pair of one split can
appear in the other, whatever the seeds.

Public API::

    from evaluation import shapes
    samples = shapes.generate("test", 1000, seed=0)   # deterministic list of Sample
    s = samples[0]; s.id, s.image, s.question, s.answer, s.kind, s.objects
    shapes.KINDS, shapes.ANSWERS, shapes.COLOURS, shapes.SHAPES, shapes.POSITIONS
    shapes.majority_rate(samples)                     # {kind: rate of its most common answer}
    shapes.render(objects, image_size=96)             # draw a scene of Obj
    shapes.answer(question, objects)                  # the answer read off a scene
    shapes.blank(image_size=96)                       # the background alone

``generate(split, n, seed=0, image_size=96, start=0)`` returns samples ``start .. start+n-1``
of a split's stream (``generate(s, n)[:k] == generate(s, k)``). Images are RGB, ``image_size``
pixels square (96 by default: 12x12 patches of 8 pixels); a scene is laid out in units of a
96-pixel image and scaled. Bad arguments raise ``ValueError``. Imports only numpy, PIL and the
standard library.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("presence", "count", "colour_at", "shape_at", "relative", "smallest")
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COUNTS = ("0", "1", "2", "3")
RELATIONS = ("left of", "right of", "above", "below")
GRID = 3
ROWS = ("top", "middle", "bottom")
COLS = ("left", "middle", "right")
#: grid cell (row, col) -> its name in questions
POSITIONS = {(r, c): ("center" if (r, c) == (1, 1) else f"{ROWS[r]} {COLS[c]}")
             for r in range(GRID) for c in range(GRID)}
#: each kind's answer set
KIND_ANSWERS = {"presence": ("yes", "no"), "count": COUNTS, "colour_at": COLOURS, "shape_at": SHAPES,
                "relative": ("yes", "no"), "smallest": COLOURS}
#: the answer vocabulary (every answer is one word)
ANSWERS = tuple(dict.fromkeys(a for k in KINDS for a in KIND_ANSWERS[k]))
SPLITS = ("train", "test")
BACKGROUND = (28, 28, 32)
RGB = {"red": (225, 45, 45), "green": (45, 185, 70), "blue": (60, 100, 240), "yellow": (235, 215, 50)}
REF = 96           # scenes are laid out in pixels of a REF x REF image
CELL = REF / GRID  # 32 reference pixels
SIZES = (10, 22)            # diameter range of an ordinary shape (reference pixels)
SMALLEST = (6, 8)           # the smallest shape of a 'smallest' question
OTHERS_OF_SMALLEST = (14, 22)
OBJECTS = (3, 6)            # shapes per scene
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Obj:
    """One shape of a scene: grid cell, diameter and offset from the cell centre in reference pixels."""

    shape: str
    colour: str
    row: int
    col: int
    size: int
    dx: int = 0
    dy: int = 0

    @property
    def position(self) -> str:
        return POSITIONS[(self.row, self.col)]


@dataclass
class Sample:
    id: str
    image: Image.Image
    question: str
    answer: str
    kind: str
    objects: tuple[Obj, ...] = field(default=(), repr=False)


# ---------------------------------------------------------------------- rendering


def _check_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 48 <= image_size <= 1024:
        raise ValueError(f"image_size = {image_size!r} is out of range; allowed: integers 48..1024")
    return int(image_size)


def blank(image_size: int = 96) -> Image.Image:
    """An image with no shapes (the background colour only)."""
    s = _check_size(image_size)
    return Image.new("RGB", (s, s), BACKGROUND)


def render(objects, image_size: int = 96) -> Image.Image:
    """Draw ``objects`` (a sequence of :class:`Obj`) into an RGB image, antialiased."""
    s = _check_size(image_size)
    k = s * SUPERSAMPLE / REF
    im = Image.new("RGB", (s * SUPERSAMPLE, s * SUPERSAMPLE), BACKGROUND)
    draw = ImageDraw.Draw(im)
    for o in objects:
        if o.shape not in SHAPES or o.colour not in RGB:
            raise ValueError(f"object {o!r} is not allowed; shapes: {', '.join(SHAPES)}; colours: {', '.join(COLOURS)}")
        cx, cy = ((o.col + 0.5) * CELL + o.dx) * k, ((o.row + 0.5) * CELL + o.dy) * k
        r = o.size / 2 * k
        fill = RGB[o.colour]
        if o.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif o.shape == "square":
            h = r * 0.85  # about the area of the circle
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
        else:  # cross
            t = r / 2.6
            draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
            draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    return im.resize((s, s), Image.BOX)


# ---------------------------------------------------------------------- answers read off a scene

_Q = {
    "presence": re.compile(r"is there a (\w+) (\w+)\?"),
    "count_shape": re.compile(r"how many (\w+) are there\?"),
    "count_colour": re.compile(r"how many (\w+) shapes are there\?"),
    "colour_at": re.compile(r"what colour is the shape in the ([\w ]+)\?"),
    "shape_at": re.compile(r"what shape is in the ([\w ]+)\?"),
    "relative": re.compile(r"is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?"),
    "smallest": re.compile(r"what colour is the smallest shape\?"),
}
_SINGULAR = {p: s for s, p in PLURALS.items()}
_CELL_OF = {name: rc for rc, name in POSITIONS.items()}


def _find(objects, colour, shape) -> Obj:
    hits = [o for o in objects if o.colour == colour and o.shape == shape]
    if len(hits) != 1:
        raise ValueError(f"the scene has {len(hits)} {colour} {shape}s; a question must name exactly one")
    return hits[0]


def answer(question: str, objects) -> str:
    """The answer to one of this module's questions about a scene, read off the objects."""
    q = question.strip()
    if m := _Q["presence"].fullmatch(q):
        return "yes" if any(o.colour == m[1] and o.shape == m[2] for o in objects) else "no"
    if (m := _Q["count_colour"].fullmatch(q)) and m[1] in COLOURS:
        return str(sum(o.colour == m[1] for o in objects))
    if (m := _Q["count_shape"].fullmatch(q)) and m[1] in _SINGULAR:
        return str(sum(o.shape == _SINGULAR[m[1]] for o in objects))
    for kind, attr in (("colour_at", "colour"), ("shape_at", "shape")):
        if (m := _Q[kind].fullmatch(q)) and m[1] in _CELL_OF:
            hits = [o for o in objects if (o.row, o.col) == _CELL_OF[m[1]]]
            if len(hits) != 1:
                raise ValueError(f"the scene has {len(hits)} shapes in the {m[1]}; expected one")
            return getattr(hits[0], attr)
    if m := _Q["relative"].fullmatch(q):
        a, b = _find(objects, m[1], m[2]), _find(objects, m[4], m[5])
        rel = m[3]
        axis_a, axis_b = (a.col, b.col) if rel in ("left of", "right of") else (a.row, b.row)
        if axis_a == axis_b:
            raise ValueError(f"{question!r}: both shapes are in the same {'column' if 'of' in rel else 'row'}")
        before = axis_a < axis_b
        return "yes" if before == (rel in ("left of", "above")) else "no"
    if _Q["smallest"].fullmatch(q):
        sizes = sorted(o.size for o in objects)
        if len(sizes) < 2 or sizes[0] == sizes[1]:
            raise ValueError("the scene has no single smallest shape")
        return min(objects, key=lambda o: o.size).colour
    raise ValueError(f"question {question!r} is not one of this module's question forms")


# ---------------------------------------------------------------------- scene construction


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _obj(rng, shape, colour, cell, size) -> Obj:
    slack = max(0, int((CELL - size) / 2) - 2)  # the shape stays inside its cell
    dx, dy = (int(v) for v in rng.integers(-slack, slack + 1, size=2))
    return Obj(shape, colour, cell[0], cell[1], int(size), dx, dy)


def _size(rng, lo_hi=SIZES) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _fill(rng, objs: list[Obj], total: int, allowed=lambda colour, shape: True, sizes=SIZES) -> list[Obj]:
    """Add random shapes in free cells, with unused (colour, shape) pairs that ``allowed`` accepts."""
    used_cells = {(o.row, o.col) for o in objs}
    used_pairs = {(o.colour, o.shape) for o in objs}
    cells = [rc for rc in POSITIONS if rc not in used_cells]
    pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in used_pairs and allowed(c, s)]
    cell_order = rng.permutation(len(cells))
    pair_order = rng.permutation(len(pairs))
    for i in range(max(0, min(total - len(objs), len(cells), len(pairs)))):
        c, s = pairs[pair_order[i]]
        objs.append(_obj(rng, s, c, cells[cell_order[i]], _size(rng, sizes)))
    return objs


def _cells(rng, n) -> list[tuple[int, int]]:
    cells = list(POSITIONS)
    return [cells[i] for i in rng.permutation(len(cells))[:n]]


def _presence(rng, target: str, total: int):
    colour, shape = _pick(rng, COLOURS), _pick(rng, SHAPES)
    objs: list[Obj] = []
    if target == "yes":
        objs.append(_obj(rng, shape, colour, _cells(rng, 1)[0], _size(rng)))
    elif rng.random() < 0.75:  # a hard no: the colour and the shape are there, not together
        c1, c2 = _cells(rng, 2)
        objs += [_obj(rng, shape, _pick(rng, [c for c in COLOURS if c != colour]), c1, _size(rng)),
                 _obj(rng, _pick(rng, [s for s in SHAPES if s != shape]), colour, c2, _size(rng))]
    return f"is there a {colour} {shape}?", _fill(rng, objs, total, lambda c, s: (c, s) != (colour, shape))


def _count(rng, target: str, total: int):
    k = int(target)
    by_colour = rng.random() < 0.5
    if by_colour:
        attr = _pick(rng, COLOURS)
        q = f"how many {attr} shapes are there?"
        shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:k]]
        made = [(s, attr) for s in shapes]
    else:
        attr = _pick(rng, SHAPES)
        q = f"how many {PLURALS[attr]} are there?"
        colours = [COLOURS[i] for i in rng.permutation(len(COLOURS))[:k]]
        made = [(attr, c) for c in colours]
    total = max(total, k + 1)
    objs = [_obj(rng, s, c, cell, _size(rng)) for (s, c), cell in zip(made, _cells(rng, k))]
    other = (lambda c, s: c != attr) if by_colour else (lambda c, s: s != attr)
    return q, _fill(rng, objs, total, other)


def _attribute_at(kind: str):
    def scene(rng, target: str, total: int):
        cell = _pick(rng, list(POSITIONS))
        if kind == "colour_at":
            colour, shape = target, _pick(rng, SHAPES)
            q = f"what colour is the shape in the {POSITIONS[cell]}?"
        else:
            colour, shape = _pick(rng, COLOURS), target
            q = f"what shape is in the {POSITIONS[cell]}?"
        return q, _fill(rng, [_obj(rng, shape, colour, cell, _size(rng))], total)
    return scene


def _relative(rng, target: str, total: int):
    rel = _pick(rng, RELATIONS)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    i, j = rng.permutation(len(pairs))[:2]
    (ca, sa), (cb, sb) = pairs[i], pairs[j]
    first = rel in ("left of", "above")  # is the first named shape earlier on the axis?
    before = first if target == "yes" else not first
    # two different coordinates on the axis, the other coordinate free
    lo, hi = sorted(int(v) for v in rng.permutation(GRID)[:2])
    a_axis, b_axis = (lo, hi) if before else (hi, lo)
    a_other, b_other = (int(v) for v in rng.integers(GRID, size=2))
    if rel in ("left of", "right of"):
        cell_a, cell_b = (a_other, a_axis), (b_other, b_axis)
    else:
        cell_a, cell_b = (a_axis, a_other), (b_axis, b_other)
    q = f"is the {ca} {sa} {rel} the {cb} {sb}?"
    objs = [_obj(rng, sa, ca, cell_a, _size(rng)), _obj(rng, sb, cb, cell_b, _size(rng))]
    return q, _fill(rng, objs, total)


def _smallest(rng, target: str, total: int):
    objs = [_obj(rng, _pick(rng, SHAPES), target, _cells(rng, 1)[0], _size(rng, SMALLEST))]
    return "what colour is the smallest shape?", _fill(rng, objs, total, sizes=OTHERS_OF_SMALLEST)


_SCENES = {"presence": _presence, "count": _count, "colour_at": _attribute_at("colour_at"),
           "shape_at": _attribute_at("shape_at"), "relative": _relative, "smallest": _smallest}


def _scene(rng, kind: str, target: str) -> tuple[str, list[Obj]]:
    """A question of ``kind`` and a scene whose answer to it is ``target``."""
    total = int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))
    return _SCENES[kind](rng, target, total)


def _split_of(question: str, objs) -> str:
    """The split a (question, scene) belongs to, by a hash of its content."""
    key = repr((question, sorted((o.row, o.col, o.shape, o.colour, o.size, o.dx, o.dy) for o in objs)))
    return SPLITS[hashlib.blake2b(key.encode(), digest_size=8).digest()[0] & 1]


def _target(seed: int, split: str, i: int) -> tuple[str, str]:
    """Sample ``i``'s kind (by turns) and answer (dealt in shuffled rounds of the kind's answers)."""
    kind = KINDS[i % len(KINDS)]
    j = i // len(KINDS)
    answers = KIND_ANSWERS[kind]
    rnd = j // len(answers)
    deal = np.random.default_rng([seed, SPLITS.index(split), KINDS.index(kind), rnd, 7]).permutation(len(answers))
    return kind, answers[deal[j % len(answers)]]


def _check_args(split, n, seed, start) -> None:
    if split not in SPLITS:
        raise ValueError(f"split = {split!r} is not allowed; allowed: {', '.join(SPLITS)}")
    for name, v in (("n", n), ("seed", seed), ("start", start)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} = {v!r} is out of range; allowed: integers >= 0")


def generate(split: str, n: int, seed: int = 0, image_size: int = 96, *, start: int = 0) -> list[Sample]:
    """Samples ``start .. start+n-1`` of the ``split`` stream for ``seed`` (deterministic)."""
    _check_args(split, n, seed, start)
    image_size = _check_size(image_size)
    out = []
    for i in range(start, start + n):
        kind, target = _target(seed, split, i)
        rng = np.random.default_rng([seed, SPLITS.index(split), i])
        while True:  # a scene of the other split is redrawn (about every other one)
            q, objs = _scene(rng, kind, target)
            if _split_of(q, objs) == split:
                break
        out.append(Sample(id=f"shapes-{split}-{seed}-{i}", image=render(objs, image_size), question=q,
                          answer=target, kind=kind, objects=tuple(objs)))
    return out


def majority_rate(samples) -> dict[str, float]:
    """Per kind (in ``KINDS`` order, kinds present only): the share of its most common answer."""
    by_kind: dict[str, Counter] = {}
    for s in samples:
        by_kind.setdefault(s.kind, Counter())[s.answer] += 1
    return {k: by_kind[k].most_common(1)[0][1] / sum(by_kind[k].values()) for k in KINDS if k in by_kind}
