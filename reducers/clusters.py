"""Helpers of the cluster-based methods (``reducers.saliency``): cluster sizes, ranks inside
clusters, proportional quotas, a mask made into a padded selection; each with its cost beside
it (:mod:`reducers.costs`)."""

from __future__ import annotations

import torch

from . import costs as C
from .base import select


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


# ---------------------------------------------------------------------- their costs


def cluster_sizes_work(b, n, k) -> C.Work:
    return C.kernels(3, b * n, e=8)


def proportional_quota_work(b, k) -> C.Work:
    """17 kernels on [b, k] (``cluster_sizes`` not included)."""
    return C.kernels(15, b * k, e=8) + C.sort(b, k) * 2


def rank_within_clusters_work(b, n, k) -> C.Work:
    """14 kernels (``cluster_sizes`` included)."""
    return C.sort(b, n) * 2 + C.kernels(9, b * n, e=8) + cluster_sizes_work(b, n, k)


def select_mask_work(b, n, width, d, e: float = 4) -> C.Work:
    """``_select_mask``: 18 kernels."""
    return C.kernels(4, b * n, e=8) + C.sort(b, n, e=1) + C.select(b, n, width, d, e) + C.kernels(6, b * width, e=8)
