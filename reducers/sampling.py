"""Importance-agnostic selection: Random Sampling and Spatial Sampling (paper, Sec. 3.2)."""

from __future__ import annotations

import math

import torch

from .base import Reducer, ReducerError, select
from .params import IntSequence, NoneValue


class RandomSampling(Reducer):
    """Random Sampling: ``keep`` tokens drawn uniformly without replacement, kept in order."""

    name = "random"

    def _reduce(self, features, keep, *, generator=None):
        b, n, _ = features.shape
        scores = torch.rand(b, n, device=features.device, generator=generator)
        idx = torch.topk(scores, keep, dim=1).indices.sort(dim=1).values
        return select(features, idx)


def grid_shape(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is not None:
        rows, cols = grid
        if rows * cols != n:
            raise ReducerError(f"grid {rows}x{cols} = {rows * cols} does not match the {n} visual tokens")
        return rows, cols
    side = math.isqrt(n)
    if side * side != n:
        raise ReducerError(f"{n} visual tokens are not a square grid; give grid=(rows, cols)")
    return side, side


def spatial_indices(rows: int, cols: int, keep: int) -> list[int]:
    """Exactly ``keep`` row-major indices spread uniformly over a rows x cols grid.

    Picks a sub-grid with the grid's aspect ratio and at least ``keep`` points, places its rows
    and columns at the centres of equal strips, then drops the surplus points at evenly spaced
    places so the count is exact.
    """
    r = max(1, min(rows, round(math.sqrt(keep * rows / cols))))
    c = min(cols, math.ceil(keep / r))
    while r * c < keep:  # the column cap can leave us short: add rows
        r += 1
        c = min(cols, math.ceil(keep / r))
    ys = [min(rows - 1, int((i + 0.5) * rows / r)) for i in range(r)]
    xs = [min(cols - 1, int((j + 0.5) * cols / c)) for j in range(c)]
    points = [y * cols + x for y in ys for x in xs]
    surplus = len(points) - keep
    if surplus:
        drop = {int((i + 0.5) * len(points) / surplus) for i in range(surplus)}
        points = [p for i, p in enumerate(points) if i not in drop]
    return sorted(points)


class SpatialSampling(Reducer):
    """Spatial Sampling: a uniform 2-D stride over the token grid (24x24 for LLaVA-1.5), exact count.

    ``grid``: (rows, cols) of the visual tokens; default: the square grid N = side^2.
    """

    name = "spatial"
    _parameter_constraints = {"grid": [NoneValue(), IntSequence(length=2, minimum=1)]}

    def __init__(self, grid: tuple[int, int] | None = None):
        self.grid = tuple(grid) if grid is not None else None

    def _reduce(self, features, keep, *, generator=None):
        b, n, _ = features.shape
        rows, cols = grid_shape(n, self.grid)
        idx = torch.tensor(spatial_indices(rows, cols, keep), device=features.device, dtype=torch.long)
        return select(features, idx.expand(b, keep).contiguous())
