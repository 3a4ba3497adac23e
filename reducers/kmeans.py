"""Batched K-means++ in torch: any device, seeded, and no host synchronisation at all.

Lloyd's algorithm with greedy k-means++ seeding (``2 + 2 ln k`` candidates per step, twice
scikit-learn's ``2 + ln k``). When there are fewer points than dimensions (LLaVA: 576 tokens of width
4096) every distance is read off the Gram matrix ``X X^T``: one [N, N] product replaces a
[N, D] x [D, k] product per iteration, and the algorithm is otherwise unchanged. Cluster sums
are one-hot matrix products, deterministic on a GPU (scatter_add is not).

No step reads a value back to the host, so the whole function can be captured in a CUDA graph:
Lloyd runs a fixed ``max_iter`` iterations, a sample that has converged keeps its result (the
same labels as stopping there), and empty clusters are re-seeded with tensor operations. The
op count is fixed by the shapes (on the Gram path about 9 per seeding step, k - 1 steps, and 24
per Lloyd iteration), and the labels are bit-identical to those of the earlier version, which
stopped early and re-seeded in a host loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import costs as C
from .base import ReducerError, check_features


@dataclass
class KMeansResult:
    labels: torch.Tensor     # [B, N] long, cluster of each point
    centroids: torch.Tensor  # [B, k, D] float32
    inertia: torch.Tensor    # [B] float32, sum of squared distances to the assigned centroid
    n_iter: torch.Tensor     # [B] long, Lloyd iterations until the sample converged (max_iter if it did not)


def kmeans(x: torch.Tensor, k: int, *, generator: torch.Generator | None = None, max_iter: int = 20,
           tol: float = 1e-4, n_local_trials: int | None = None, validate: bool = True) -> KMeansResult:
    """Cluster each sample of ``x`` [B, N, D] into ``k`` clusters.

    ``max_iter`` Lloyd iterations; a sample has converged, and keeps its labels from then on,
    once no label changes or its centroids move less than ``tol`` times the mean per-feature
    variance (scikit-learn's criterion). Samples converge independently. Empty clusters are
    re-seeded with the point farthest from its centroid. ``validate``: check ``x`` for NaN and
    inf (one host sync; reducers check their input once and pass False).
    """
    if validate:
        check_features(x)
    _check_args(x, k, max_iter, tol)
    labels, n_iter, gram, sq, xf = _kmeans(x, k, generator, max_iter, tol, n_local_trials, track=True)
    b, n, d = x.shape
    onehot = torch.zeros(b, k, n, device=x.device)
    onehot.scatter_(1, labels.unsqueeze(1), 1.0)
    sizes = onehot.sum(-1, keepdim=True)
    m = onehot / sizes
    centroids = torch.bmm(m, xf)
    if gram is not None:  # sum |x|^2 - sum_j n_j |c_j|^2, without another pass over [N, D]
        c_sq = (torch.bmm(m, gram) * m).sum(-1)
        inertia = (sq.sum(-1) - (sizes.squeeze(-1) * c_sq).sum(-1)).clamp(min=0)
    else:
        inertia = ((xf - torch.gather(centroids, 1, labels.unsqueeze(-1).expand(b, n, d))) ** 2).sum((1, 2))
    return KMeansResult(labels=labels, centroids=centroids, inertia=inertia, n_iter=n_iter)


def kmeans_labels(x: torch.Tensor, k: int, *, generator: torch.Generator | None = None, max_iter: int = 20,
                  tol: float = 1e-4, n_local_trials: int | None = None) -> torch.Tensor:
    """The labels [B, N] of :func:`kmeans` (the same), without validating ``x`` and without
    the centroids, inertia and iteration counts the reducers do not use."""
    _check_args(x, k, max_iter, tol)
    return _kmeans(x, k, generator, max_iter, tol, n_local_trials, track=False)[0]


def _check_args(x, k, max_iter, tol) -> None:
    n = x.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ReducerError(f"k = {k!r} clusters is out of range; allowed: 1..{n} (the number of tokens)")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ReducerError(f"max_iter = {max_iter!r} is out of range; allowed: integers >= 1")
    if not tol >= 0:
        raise ReducerError(f"tol = {tol!r} is out of range; allowed: >= 0")


def _kmeans(x, k, generator, max_iter, tol, n_local_trials, track):
    """(labels, n_iter or None, gram or None, |x|^2, x as float32). ``track``: count iterations
    (the direct path tracks convergence anyway, to mask converged samples)."""
    xf = x.to(torch.float32)
    # twice scikit-learn's 2 + ln(k) candidates per seeding step: in the benchmark this avoided an
    # occasional worse local minimum (inertia +2.8% on one seed of five) for a few ms
    trials = n_local_trials or 2 + 2 * int(math.log(k))
    gram, sq, sq3, columns = _distances(xf)
    center_idx = _seed(columns, xf.shape, k, trials, generator, xf.device)
    labels, n_iter = _lloyd(xf, gram, sq3, columns, center_idx, k, max_iter, tol, track)
    return labels, n_iter, gram, sq, xf


def _distances(xf):
    """(gram or None, |x|^2 [B, N], its [B, N, 1] view, columns(idx, idx3) -> squared distances of
    all points to points idx [B, t] as [B, N, t]). With N <= D every distance comes from the Gram
    matrix."""
    b, n, d = xf.shape
    if n <= d:
        gram = torch.bmm(xf, xf.transpose(1, 2))  # [B, N, N]
        sq = gram.diagonal(dim1=1, dim2=2)  # [B, N]
        sq3 = sq.unsqueeze(-1)
        # every squared distance, each as (|x_i|^2 - 2 x_i.x_j) + |x_j|^2 clamped at 0: the
        # values a column gather plus that formula gave, read off one [B, N, N] tensor
        dist = torch.add(sq3, gram, alpha=-2).add_(sq.unsqueeze(1)).clamp_(min=0)

        def columns(idx, idx3):
            return torch.gather(dist, 2, idx3)
        return gram, sq, sq3, columns
    sq = (xf * xf).sum(-1)  # [B, N]
    sq3 = sq.unsqueeze(-1)
    bidx = torch.arange(b, device=xf.device)

    def columns(idx, idx3):
        cross = torch.bmm(xf, xf[bidx[:, None], idx].transpose(1, 2))
        return (sq3 - 2 * cross + torch.gather(sq, 1, idx).unsqueeze(1)).clamp_(min=0)
    return None, sq, sq3, columns


def _seed(columns, shape, k, trials, generator, dev):
    """Greedy k-means++ seeding: center indices [B, k]. Written into buffers whose views are made
    once (a view is a dispatched op too): cand [B, t] and best [B, 1] with their [B, N, .] index
    views, closest [B, N, 1], the distance of each point to its nearest chosen center."""
    b, n, _ = shape
    first = torch.randint(n, (b, 1), device=dev, generator=generator)
    closest3 = columns(first, first.unsqueeze(1).expand(b, n, 1))
    closest = closest3.squeeze(-1)
    centers = [first]
    if k > 1:
        cand = torch.empty(b, trials, dtype=torch.long, device=dev)
        cand3 = cand.unsqueeze(1).expand(b, n, trials)
        best = torch.empty(b, 1, dtype=torch.long, device=dev)
        best3 = best.unsqueeze(1).expand(b, n, 1)
        potential = torch.empty(b, 1, device=dev)
        weights = closest + 1e-12 * (closest.sum(-1, keepdim=True) == 0)  # all-equal points: uniform
    for step in range(1, k):
        if step > 1:  # the best candidate's potential is the sum of closest: zero iff all are
            weights = torch.add(closest, potential == 0, alpha=1e-12)
        torch.multinomial(weights, trials, replacement=True, generator=generator, out=cand)
        dcand = torch.minimum(columns(cand, cand3), closest3)  # [B, N, t]
        torch.min(dcand.sum(1), 1, keepdim=True, out=(potential, best))
        centers.append(torch.gather(cand, 1, best))
        torch.gather(dcand, 2, best3, out=closest3)
    return torch.cat(centers, 1) if k > 1 else first  # [B, k]


def _lloyd(xf, gram, sq3, columns, center_idx, k, max_iter, tol, track):
    """Lloyd iterations at a fixed count, converged samples masked; centroids as normalised
    one-hot rows M [B, k, N] (c = M X). Returns (labels, n_iter or None)."""
    b, n, _ = xf.shape
    dev = xf.device
    own, labels = columns(center_idx, center_idx.unsqueeze(1).expand(b, n, k)).min(-1)  # [B, N] each
    fill = _EmptyClusterFill(b, n, k, dev)
    clusters = torch.arange(k, device=dev).view(1, k, 1)
    filled = torch.empty(b, n, dtype=torch.long, device=dev)
    filled_row = filled.unsqueeze(1)  # [B, 1, N]
    m = torch.empty(b, k, n, device=dev)
    m_t = m.transpose(1, 2)
    c_sq = torch.empty(b, k, device=dev)
    c_sq_row = c_sq.unsqueeze(1)  # [B, 1, k]
    converged = []
    if gram is None:  # the Gram path converges on labels alone and needs no variance
        threshold = tol * xf.var(dim=1, unbiased=False).mean(-1)  # [B]
        prev_centroids = xf[torch.arange(b, device=dev)[:, None], center_idx]
        done = torch.zeros(b, dtype=torch.bool, device=dev)
    for _ in range(max_iter):
        fill(labels, own, out=filled)
        onehot = clusters == filled_row  # [B, k, N]
        torch.div(onehot, onehot.sum(-1, keepdim=True), out=m)
        if gram is not None:
            # after convergence an iteration maps the labels to themselves: no mask needed
            cross = torch.bmm(gram, m_t)  # x_i . c_j  [B, N, k]
            torch.sum(torch.bmm(m, gram) * m, -1, out=c_sq)  # |c_j|^2  [B, k]
            own, labels = torch.add(sq3, cross, alpha=-2).add_(c_sq_row).clamp_(min=0).min(-1)
            if track:
                converged.append((labels == filled).all(-1))
        else:
            centroids = torch.bmm(m, xf)
            new_own, new_labels = torch.cdist(xf, centroids).pow_(2).min(-1)
            shift = ((centroids - prev_centroids) ** 2).sum((1, 2))
            prev_centroids = centroids
            conv = (shift <= threshold) | (new_labels == filled).all(-1)
            converged.append(conv)
            # a converged sample keeps its labels (filled: the same labels once re-filled below)
            labels = torch.where(done[:, None], filled, new_labels)
            own = torch.where(done[:, None], own, new_own)
            done = done | conv
    labels = fill(labels, own)
    if not track:
        return labels, None
    not_yet = torch.stack(converged, 1).cumsum(1) == 0  # [B, max_iter]: the first converged iteration
    return labels, (not_yet.sum(1) + 1).clamp_(max=max_iter)


class _EmptyClusterFill:
    """Give each empty cluster the point farthest from its own centroid, in 13 tensor ops and no
    host sync; the same labels as the sequential rule:

        visit the points by descending distance to their centroid (ties: lower index first); a
        point whose cluster still has more than one member moves to the next empty cluster (in
        ascending order), until every empty cluster has one.

    Vectorised: a visited point can move unless it is the last visited member of its cluster;
    the j-th such point moves to the j-th empty cluster, for j up to the number of empty ones.
    """

    def __init__(self, b, n, k, dev):
        self.positions = torch.arange(n, device=dev).expand(b, n)
        self.unseen = torch.full((b, k), -1, dtype=torch.long, device=dev)
        # [B, N + 1]: per cluster its last visit position (-1: empty), a sentinel -2 that sorts
        # first, then padding N; sorted ascending, entry j (1-based) is the j-th empty cluster
        self.table = torch.full((b, n + 1), n, dtype=torch.long, device=dev)
        self.table[:, k].fill_(-2)
        self.last = self.table[:, :k]
        self.k = k

    def __call__(self, labels, own, out=None):
        order = torch.sort(own, dim=1, descending=True, stable=True).indices  # visit order
        visited = torch.gather(labels, 1, order)  # their labels
        torch.scatter_reduce(self.unseen, 1, visited, self.positions, "amax", out=self.last)
        movable = self.positions != torch.gather(self.table, 1, visited)  # not its cluster's last visit
        nth = torch.cumsum(movable, 1)  # 1-based rank among the movable points
        keys, clusters = torch.sort(self.table, dim=1, stable=True)
        moves = movable & (torch.gather(keys, 1, nth) == -1)
        moved = torch.where(moves, torch.gather(clusters, 1, nth), visited)
        if out is None:
            return torch.scatter(labels, 1, order, moved)
        return torch.scatter(labels, 1, order, moved, out=out)



def kmeans_work(b: int, n: int, d: int, k: int, max_iter: int = 20, n_local_trials: int | None = None,
                e: float = 4) -> C.Work:
    """What :func:`kmeans_labels` costs; the op count is fixed by the shapes. Gram path (n <= d):
    26 kernels (the [n, d] x [d, n] product, the distance table, the empty-cluster fill's set-up
    and final pass) + 9 per seeding step (3 more to set up the first) + 24 per Lloyd iteration
    (two [n, n] x [n, k] products). Direct path: 42 + 15 per seeding step (+3) + 30 per
    iteration (an [k, n] x [n, d] product and a cdist)."""
    trials = n_local_trials or 2 + 2 * int(math.log(k))
    rows = b * n
    first = C.kernels(3, rows) if k > 1 else C.Work()
    if n <= d:
        setup = C.matmul(b, n, d, n) + C.kernels(3, b * n * n, inputs=2) + C.kernels(22, rows)
        step = C.kernels(9, rows * trials, inputs=2)
        lloyd = C.matmul(b, n, n, k) + C.matmul(b, k, n, n) + C.kernels(22, rows * k, inputs=2)
    else:
        setup = C.matmul(b, n, d, 1) + C.matmul(b, n, d, k) + C.kernels(4, rows * d) + C.kernels(36, rows * k)
        step = C.matmul(b, n, d, trials) + C.kernels(14, rows * trials, inputs=2)
        cdist = C.Work(flops=3.0 * b * n * k * d, bytes=4.0 * b * (n + k) * d, launches=1)
        lloyd = C.matmul(b, k, n, d) + cdist + C.kernels(28, rows * k, inputs=2)
    return C.cast(rows * d, e) + setup + first + (k - 1) * step + max_iter * lloyd
