"""Importance-agnostic selection: Random Sampling and Spatial Sampling (paper, Sec. 3.2)."""

from __future__ import annotations

import math

import torch

from . import costs as C
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

    def _cost(self, n, d, keep, b, e, ctx):
        return C.kernels(1, b * n) + C.sort(b, n) + C.sort(b, keep) + C.select(b, n, keep, d, e)


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


def _subgrid(rows: int, cols: int, keep: int) -> tuple[int, int]:
    """The sub-grid (r, c): the grid's aspect ratio and at least ``keep`` points."""
    r = max(1, min(rows, round(math.sqrt(keep * rows / cols))))
    c = min(cols, math.ceil(keep / r))
    while r * c < keep:  # the column cap can leave us short: add rows
        r += 1
        c = min(cols, math.ceil(keep / r))
    return r, c


def spatial_indices(rows: int, cols: int, keep: int) -> list[int]:
    """Exactly ``keep`` row-major indices spread uniformly over a rows x cols grid.

    Picks a sub-grid with the grid's aspect ratio and at least ``keep`` points, places its rows
    and columns at the centres of equal strips, then drops the surplus points at evenly spaced
    places so the count is exact.
    """
    r, c = _subgrid(rows, cols, keep)
    ys = [min(rows - 1, int((i + 0.5) * rows / r)) for i in range(r)]
    xs = [min(cols - 1, int((j + 0.5) * cols / c)) for j in range(c)]
    points = [y * cols + x for y in ys for x in xs]
    surplus = len(points) - keep
    if surplus:
        drop = {int((i + 0.5) * len(points) / surplus) for i in range(surplus)}
        points = [p for i, p in enumerate(points) if i not in drop]
    return sorted(points)


def spatial_index_tensor(rows: int, cols: int, keep: int, device=None) -> torch.Tensor:
    """:func:`spatial_indices` as a long tensor [keep] computed on ``device``: no copy from host
    memory, so it can be captured in a CUDA graph. Integer arithmetic: floor((i + 1/2) a / b) is
    ((2 i + 1) a) // (2 b), exactly what the float formula gives at these sizes."""
    r, c = _subgrid(rows, cols, keep)
    ys = (torch.arange(1, 2 * r, 2, device=device) * rows).div_(2 * r, rounding_mode="floor")  # [r]
    xs = (torch.arange(1, 2 * c, 2, device=device) * cols).div_(2 * c, rounding_mode="floor")  # [c]
    points = torch.add(xs, ys.unsqueeze(1), alpha=cols).view(-1)  # row-major, ascending: strips are >= 1 apart
    surplus = r * c - keep
    if not surplus:
        return points
    drop = (torch.arange(1, 2 * surplus, 2, device=device) * (r * c)).div_(2 * surplus, rounding_mode="floor")
    # the kept points first, in order: sort by (dropped, index) and take keep
    key = torch.arange(r * c, device=device).index_fill_(0, drop, r * c)
    return torch.gather(points, 0, torch.sort(key).indices[:keep])


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
        idx = spatial_index_tensor(rows, cols, keep, features.device)
        return select(features, idx.expand(b, keep))

    def _cost(self, n, d, keep, b, e, ctx):
        r, c = _subgrid(*grid_shape(n, self.grid), keep)  # 7 index kernels, 7 more to drop a surplus
        return C.kernels(7 if r * c == keep else 14, r * c, e=8) + C.select(b, n, keep, d, e)
