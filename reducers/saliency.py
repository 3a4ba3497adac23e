"""Cross-modal saliency (the paper's Algorithm 1) and the methods built on it (Sec. 3.1).

The saliency of visual token v is computed from the LLM's first layer: its key k_v against
the queries Q_text of the text tokens, softmax over the text dimension, max over heads, mean
over text tokens (:mod:`reducers.saliency_score`, the one function ``vtc saliency`` shares).
"""

from __future__ import annotations

import torch

from . import costs as C
from .base import Reducer, ReducerError, merge, reorder, select, sorted_by_position
from .params import Boolean, Interval, NoneValue, Options
from .kmeans import kmeans_labels, kmeans_work
from .saliency_score import TEXT_CHOICES, cross_modal_saliency


class _SaliencyMixin:
    """Shared signal handling: a precomputed ``saliency`` [B, N], or ``text_embeds`` + ``layer0``
    scored by :func:`cross_modal_saliency` with this reducer's ``rope`` and ``text``."""

    optional_signals = ("saliency", "text_embeds", "layer0", "text_mask", "text_positions", "visual_start")
    signal_doc = "saliency | text_embeds + layer0 (text_mask, text_positions, visual_start optional)"

    def _saliency(self, features, saliency=None, text_embeds=None, layer0=None, text_mask=None,
                  text_positions=None, visual_start=None):
        if saliency is not None:
            return saliency.to(torch.float32)
        if text_embeds is None or layer0 is None:
            raise ReducerError(f"reducer {self.name!r} needs signal 'saliency', or both 'text_embeds' and 'layer0'")
        return cross_modal_saliency(features, text_embeds, layer0, text_mask, rope=self.rope,
                                    text=getattr(self, "text", "all"), text_positions=text_positions,
                                    visual_start=visual_start)


class BasicSaliency(_SaliencyMixin, Reducer):
    """Basic Saliency: the ``keep`` visual tokens with the highest Algorithm-1 score, in order.

    The score is :func:`cross_modal_saliency` (the same one ``vtc saliency`` maps). ``rope``:
    rotate the first layer's q/k to the tokens' real positions before scoring; ``text``: the
    query tokens, ``"all"`` non-image tokens (the paper's Q_text) or ``"after_image"`` only.
    """

    name = "saliency"
    _parameter_constraints = {"rope": [Boolean()], "text": [Options(TEXT_CHOICES)]}

    def __init__(self, rope: bool = False, text: str = "all"):
        self.rope = rope
        self.text = text

    def _reduce(self, features, keep, *, generator=None, **signals):
        s = self._saliency(features, **signals)
        return select(features, torch.topk(s, keep, dim=1).indices.sort(dim=1).values)

    def _cost(self, n, d, keep, b, e, ctx):
        return C.saliency_from(b, n, d, e, ctx, self.rope) + C.sort(b, n) + C.sort(b, keep) + C.select(b, n, keep, d, e)


# ---------------------------------------------------------------------- cluster helpers


def cluster_sizes(labels: torch.Tensor, k: int) -> torch.Tensor:
    sizes = torch.zeros(labels.shape[0], k, device=labels.device, dtype=torch.long)
    return sizes.scatter_add_(1, labels, torch.ones_like(labels))


def rank_within_clusters(labels: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Rank of each token inside its cluster by descending score (0 = best). [B, N] long."""
    b, n = labels.shape
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)
    by_cluster = torch.argsort(torch.gather(labels, 1, by_score), dim=1, stable=True)
    order = torch.gather(by_score, 1, by_cluster)  # grouped by cluster, best first
    sizes = cluster_sizes(labels, k)
    starts = torch.cumsum(sizes, 1) - sizes  # [B, k]
    sorted_labels = torch.gather(labels, 1, order)
    rank_sorted = torch.arange(n, device=labels.device).expand(b, n) - torch.gather(starts, 1, sorted_labels)
    rank = torch.empty_like(rank_sorted)
    return rank.scatter_(1, order, rank_sorted)


def proportional_quota(sizes: torch.Tensor, total: torch.Tensor | int) -> torch.Tensor:
    """Split ``total`` tokens over clusters in proportion to their sizes, exactly (largest
    remainder). sizes [B, k] -> quota [B, k] with quota <= sizes and sum == total."""
    sizes_f = sizes.to(torch.float64)
    n = sizes_f.sum(1, keepdim=True)
    if isinstance(total, torch.Tensor):
        total_t = total.to(device=sizes.device, dtype=torch.float64).reshape(-1, 1).expand(sizes.shape[0], 1)
    else:  # filled on the device: no copy from host memory
        total_t = torch.full((sizes.shape[0], 1), total, device=sizes.device, dtype=torch.float64)
    share = sizes_f * total_t / n
    quota = share.floor()
    short = (total_t - quota.sum(1, keepdim=True)).squeeze(1).to(torch.long)  # [B]
    remainder_rank = torch.argsort(torch.argsort(share - quota, dim=1, descending=True, stable=True), dim=1)
    quota = quota + (remainder_rank < short[:, None]).to(torch.float64)
    return torch.minimum(quota, sizes_f).to(torch.long)


def _select_mask(features, mask: torch.Tensor, width: int):
    """Kept-token reduction from a boolean mask [B, N] that keeps at most ``width`` tokens per
    sample (the method's bound, so the shape does not depend on the data); counts may differ
    per sample: rows past ``lengths`` are padding."""
    b, n, _ = features.shape
    lengths = mask.sum(1)
    # valid indices first in original order, then the rest; take width and mark padding
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    red = select(features, order)
    pad = torch.arange(width, device=features.device)[None, :] >= lengths[:, None]
    red.features = red.features.masked_fill(pad.unsqueeze(-1), 0)
    red.positions = red.positions.masked_fill(pad, float("nan"))
    red.kept_indices = red.kept_indices.masked_fill(pad, -1)
    red.assignment = torch.where(mask, red.assignment, -1)
    red.lengths = lengths
    return red


def cluster_sizes_work(b, n, k) -> C.Work:  # the costs of the helpers above (reducers.costs)
    return C.kernels(3, b * n, e=8)


def proportional_quota_work(b, k) -> C.Work:  # 17 kernels on [b, k] (cluster_sizes not included)
    return C.kernels(15, b * k, e=8) + C.sort(b, k) * 2


def rank_within_clusters_work(b, n, k) -> C.Work:  # 14 kernels, cluster_sizes included
    return C.sort(b, n) * 2 + C.kernels(9, b * n, e=8) + cluster_sizes_work(b, n, k)


def select_mask_work(b, n, width, d, e: float = 4) -> C.Work:  # 18 kernels
    return C.kernels(4, b * n, e=8) + C.sort(b, n, e=1) + C.select(b, n, width, d, e) + C.kernels(6, b * width, e=8)


KMEANS_CONSTRAINTS = {"max_iter": [Interval("int", 1, None)], "tol": [Interval("real", 0, None)]}


class _ClusterSaliency(_SaliencyMixin, Reducer):
    _parameter_constraints = {"k": [Interval("int", 1, None)], "rope": [Boolean()],
                              "text": [Options(TEXT_CHOICES)], **KMEANS_CONSTRAINTS}

    def __init__(self, k: int = 20, rope: bool = False, max_iter: int = 20, tol: float = 1e-4, text: str = "all"):
        self.k = k
        self.rope = rope
        self.text = text
        self.max_iter = max_iter
        self.tol = float(tol)

    def _clusters(self, features, generator, basis=None):
        x = features if basis is None else basis
        k = self.k
        if k > x.shape[1]:
            raise ReducerError(f"k = {k} clusters is more than the {x.shape[1]} tokens; allowed: 1..{x.shape[1]}")
        return kmeans_labels(x, k, generator=generator, max_iter=self.max_iter, tol=self.tol)

    def _cluster_cost(self, n, d, b, e, ctx, k=None, basis=None):  # K-means, saliency, ranks, cluster sizes
        k = k or self.k
        return kmeans_work(b, n, basis or d, k, self.max_iter, e=e) + C.saliency_from(b, n, d, e, ctx, self.rope) + \
            rank_within_clusters_work(b, n, k) + cluster_sizes_work(b, n, k)


class ClusterSaliencyStatic(_ClusterSaliency):
    """Cluster & Saliency, Variant 1 (static): K-means++ into ``k`` clusters of the embeddings,
    then the top x% of each cluster by saliency, x = keep / N, allotted exactly (largest
    remainder) so the total is ``keep``. Output in original order."""

    name = "cluster-saliency-static"

    def _basis(self, features, signals):
        return None

    def _reduce(self, features, keep, *, generator=None, **signals):
        basis = self._basis(features, signals)
        labels = self._clusters(features, generator, basis)
        s = self._saliency(features, **{k: v for k, v in signals.items() if k != "vision_keys"})
        quota = proportional_quota(cluster_sizes(labels, self.k), keep)
        rank = rank_within_clusters(labels, s, self.k)
        mask = rank < torch.gather(quota, 1, labels)
        return _select_mask(features, mask, keep)  # exactly keep per sample

    def _cost(self, n, d, keep, b, e, ctx):  # Keys: K-means on the vision tower's keys
        basis = None if type(self)._basis is ClusterSaliencyStatic._basis else ctx.get("vision_hidden") or 1024
        return self._cluster_cost(n, d, b, e, ctx, basis=basis) + proportional_quota_work(b, self.k) + \
            C.kernels(2, b * n, e=8) + select_mask_work(b, n, keep, d, e)


class ClusterSaliencyKeys(ClusterSaliencyStatic):
    """Variant 1 clustered on keys instead of embeddings (the paper's key-clustering trial):
    K-means++ on ``vision_keys`` [B, N, Dk], the vision tower's keys of the patches, as
    PruMerge uses them."""

    name = "cluster-saliency-keys"
    signals = ("vision_keys",)
    signal_doc = "vision_keys + (saliency | text_embeds + layer0)"

    def _basis(self, features, signals):
        return signals["vision_keys"]


class ClusterSaliencyDynamic(_ClusterSaliency):
    """Cluster & Saliency, Variant 2 (dynamic): cluster weights w_i = softmax over clusters of
    their mean saliency; cluster i keeps its top ceil(lambda * w_i * |c_i|) tokens.

    ``lambda_``: the scale. Given, the method sets its own count and ``keep`` is ignored; left
    None (default), lambda is solved per sample for the largest count that does not exceed
    ``keep`` (lambda <= k N). Counts differ per sample: see ``Reduction.lengths``; the output is
    padded to ``keep`` rows (to N when ``lambda_`` is given), the bound on the count, so its
    shape does not depend on the data.

    Solving for lambda: token r (0-based, by saliency) of cluster i is kept once
    lambda > (r + 1e-6) / (w_i |c_i|), so the tokens kept are those whose threshold is below the
    (keep + 1)-th smallest one, computed exactly with one k-th value instead of a bisection
    (which gave the same tokens, up to thresholds within float32 rounding of each other). When
    ties leave no token below it (more than ``keep`` tokens at the smallest threshold), the best
    token of each of the ``keep`` heaviest clusters is kept.
    """

    name = "cluster-saliency-dynamic"
    fixed_count = False
    _parameter_constraints = {**_ClusterSaliency._parameter_constraints,
                              "lambda_": [NoneValue(), Interval("real", 0, None, "neither")]}

    def __init__(self, k: int = 20, lambda_: float | None = None, rope: bool = False, max_iter: int = 20,
                 tol: float = 1e-4, text: str = "all"):
        super().__init__(k=k, rope=rope, max_iter=max_iter, tol=tol, text=text)
        self.lambda_ = None if lambda_ is None else float(lambda_)

    def count_from_keep(self) -> bool:
        return self.lambda_ is None

    def _reduce(self, features, keep, *, generator=None, **signals):
        n = features.shape[1]
        labels = self._clusters(features, generator)
        s = self._saliency(features, **signals)
        k = self.k
        sizes = cluster_sizes(labels, k).to(torch.float32)
        mean_sal = torch.zeros_like(sizes).scatter_add_(1, labels, s) / sizes.clamp(min=1)
        mean_sal = mean_sal.masked_fill(sizes == 0, float("-inf"))
        w = mean_sal.softmax(-1)  # [B, k]
        rank = rank_within_clusters(labels, s, k)
        if self.lambda_ is not None:
            quota = torch.minimum(torch.ceil(self.lambda_ * w * sizes - 1e-6), sizes)
            return _select_mask(features, rank < torch.gather(quota.to(torch.long), 1, labels), n)
        # the lambda from which each token is kept (inf in a cluster of weight 0)
        threshold = (rank + 1e-6) / torch.gather(w * sizes, 1, labels)  # [B, N]
        bound = float(k) * n  # the largest lambda considered
        if keep < n:
            bound = torch.kthvalue(threshold, keep + 1, dim=1, keepdim=True).values.clamp_(max=bound)
        mask = threshold < bound
        # keep below the cluster count: one token from each of the `keep` heaviest clusters
        cluster_rank = torch.argsort(torch.argsort(w, dim=1, descending=True, stable=True), dim=1)
        fallback = (rank == 0) & (torch.gather(cluster_rank, 1, labels) < keep)
        mask = torch.where(mask.any(1, keepdim=True), mask, fallback)
        return _select_mask(features, mask, keep)

    def _cost(self, n, d, keep, b, e, ctx):  # cluster weights: 8 kernels; the quota: 8 given lambda, else 15
        given = self.lambda_ is not None
        solve = C.kernels(8, b * n) if given else C.kernels(12, b * n) + C.sort(b, n) + 2 * C.sort(b, self.k)
        return self._cluster_cost(n, d, b, e, ctx) + C.kernels(8, b * n) + solve + \
            select_mask_work(b, n, n if given else keep, d, e)


class ClusterSaliencyAggregate(_ClusterSaliency):
    """Cluster & Saliency, Variant 3 (coarse aggregation): the top x% of each cluster by
    saliency are kept, and each cluster's remaining tokens become one mean token (embedding
    and position averaged).

    ``x``: fraction of tokens kept as is; given, the count is x*N + (clusters with leftovers)
    and ``keep`` is ignored. None (default): keep - k tokens are selected, so the output has
    ``keep`` tokens when every cluster has leftovers (k is capped at ``keep``). Output in
    position order, padded to the bound on the count (``keep``; round(x N) + k, at most N, when
    ``x`` is given), so its shape does not depend on the data: a sample with a cluster without
    leftovers has fewer rows than that (``Reduction.lengths``), padding last.
    """

    name = "cluster-saliency-aggregate"
    fixed_count = False
    _parameter_constraints = {**_ClusterSaliency._parameter_constraints,
                              "x": [NoneValue(), Interval("real", 0, 1, "left")]}

    def __init__(self, k: int = 20, x: float | None = None, rope: bool = False, max_iter: int = 20,
                 tol: float = 1e-4, text: str = "all"):
        super().__init__(k=k, rope=rope, max_iter=max_iter, tol=tol, text=text)
        self.x = x

    def count_from_keep(self) -> bool:
        return self.x is None

    def _reduce(self, features, keep, *, generator=None, **signals):
        b, n, _ = features.shape
        k = self.k if self.x is not None else min(self.k, keep)
        if k > n:
            raise ReducerError(f"k = {k} clusters is more than the {n} tokens; allowed: 1..{n}")
        labels = kmeans_labels(features, k, generator=generator, max_iter=self.max_iter, tol=self.tol)
        s = self._saliency(features, **signals)
        selected = round(self.x * n) if self.x is not None else keep - k
        quota = proportional_quota(cluster_sizes(labels, k), selected)
        rank = rank_within_clusters(labels, s, k)
        kept = rank < torch.gather(quota, 1, labels)
        # output rows: kept tokens get their own row, leftovers of cluster c share row n + c
        slot = torch.where(kept, torch.arange(n, device=features.device).expand(b, n), n + labels)
        used = torch.zeros(b, n + k, dtype=torch.bool, device=features.device).scatter_(1, slot, True)
        compact = torch.cumsum(used.to(torch.long), 1) - 1  # row index among used slots
        assignment = torch.gather(compact, 1, slot)
        m = min(n, selected + k)  # rows: the selected tokens plus at most one per cluster
        red = merge(features, assignment, m)
        # a kept token is the only original of its row; the other originals write to a sink column
        arange = torch.arange(n, device=features.device).expand(b, n)
        orig = torch.full((b, m + 1), -1, dtype=torch.long, device=features.device)
        orig.scatter_(1, torch.where(kept, assignment, torch.full_like(assignment, m)),
                      torch.where(kept, arange, torch.full_like(arange, -1)))
        red.kept_indices = orig[:, :m]
        return sorted_by_position(red)

    def _cost(self, n, d, keep, b, e, ctx):
        k = self.k if self.x is not None else min(self.k, keep)
        m = min(n, (round(self.x * n) if self.x is not None else keep - k) + k)
        return self._cluster_cost(n, d, b, e, ctx, k) + proportional_quota_work(b, k) + C.kernels(18, b * n, e=8) + \
            C.merge(b, n, m, d, e) + C.sorted_by_position(b, m, n, d, e)


class ClusterAggregate(Reducer):
    """Cluster & Aggregate (paper, Sec. 3.2): K-means++ on the projected embeddings into
    ``keep`` clusters, one mean token per cluster.

    ``order``: ``random`` (the paper's default; a seeded permutation) or ``position`` (by the
    clusters' mean token index).
    """

    name = "cluster-aggregate"

    _parameter_constraints = {"order": [Options(("random", "position"))], **KMEANS_CONSTRAINTS}

    def __init__(self, order: str = "random", max_iter: int = 20, tol: float = 1e-4):
        self.order = order
        self.max_iter = max_iter
        self.tol = float(tol)

    def _reduce(self, features, keep, *, generator=None):
        labels = kmeans_labels(features, keep, generator=generator, max_iter=self.max_iter, tol=self.tol)
        red = merge(features, labels, keep)
        if self.order == "position":
            return sorted_by_position(red)
        b = features.shape[0]
        perm = torch.argsort(torch.rand(b, keep, device=features.device, generator=generator), dim=1)
        return reorder(red, perm)

    def _cost(self, n, d, keep, b, e, ctx):  # either order: one [B, keep] pass, an argsort, a reorder
        return kmeans_work(b, n, d, keep, self.max_iter, e=e) + C.merge(b, n, keep, d, e) + \
            C.sorted_by_position(b, keep, n, d, e)
