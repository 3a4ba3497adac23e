"""Shapes VQA (generated offline, :mod:`evaluation.shapes`): six question kinds whose answers need
the image and its detail; exact match, accuracy per question kind."""

from __future__ import annotations

from .base import Sample, Task, register_task

#: test samples generated (``--limit`` takes the first ones); seed 0, the test split
N_TEST = 2000


def load_shapes(n: int = N_TEST, seed: int = 0) -> list[Sample]:
    from .. import shapes

    return [Sample(s.id, s.image, s.question, [s.answer], "exact", {"kind": s.kind})
            for s in shapes.generate("test", n, seed=seed)]


@register_task
class ShapesTask(Task):
    name = "shapes"
    aliases = ("shapes-vqa", "shapes_vqa")
    layout = "none: generated on the fly (evaluation/shapes.py), the test split with seed 0"
    needs_data = False

    def load(self, data):
        return load_shapes()
