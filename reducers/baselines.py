"""Reference methods the paper compares against, re-implemented as post-projector reducers.

They use vision-tower signals (``cls_attention`` [B, N]: the CLS token's attention to each
patch at the feature layer, heads averaged; ``vision_keys`` [B, N, Dk]: the patches' keys
there) and act on the projected tokens, so they share one timing and one call with the
paper's own methods. Where a method merges, an output token is the (weighted) mean of its
group, the contract of every merging reducer here; deviations from the published code are in
each docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Reducer, ReducerError, concat, merge, select, sorted_by_position
from .params import Interval, IntSequence, NoneValue, Options
from .sampling import grid_shape, spatial_indices


class FasterVLM(Reducer):
    """FasterVLM: the ``keep`` patches the vision tower's CLS token attends to most, in order."""

    name = "fastervlm"
    signals = ("cls_attention",)

    def _reduce(self, features, keep, *, generator=None, cls_attention):
        return select(features, torch.topk(cls_attention.float(), keep, dim=1).indices.sort(dim=1).values)


class VisionZip(Reducer):
    """VisionZip (training-free): dominant tokens by CLS attention, plus contextual tokens.

    ``keep`` = dominant + contextual, split as published for 64 (54 + 10) and scaled:
    dominant = round(keep * ``dominant_ratio``). The remaining patches are thinned to
    ``contextual`` targets at a uniform stride; every other remaining patch joins the target
    whose key (cosine) is most similar. A contextual token is the mean of its group; VisionZip's
    code adds the target to the group's mean instead, which is not a mean of the group.
    Output: dominant tokens in order, then contextual tokens in target order.
    """

    name = "visionzip"
    signals = ("cls_attention", "vision_keys")
    _parameter_constraints = {"dominant_ratio": [Interval("real", 0, 1, "right")]}

    def __init__(self, dominant_ratio: float = 54 / 64):
        self.dominant_ratio = float(dominant_ratio)

    def _reduce(self, features, keep, *, generator=None, cls_attention, vision_keys):
        b, n, _ = features.shape
        dev = features.device
        dominant = min(keep, max(1, round(keep * self.dominant_ratio)))
        contextual = min(keep - dominant, n - dominant)
        dom = torch.topk(cls_attention.float(), dominant, dim=1).indices.sort(dim=1).values
        part_dom = select(features, dom)
        if contextual == 0:
            return part_dom
        is_dom = torch.zeros(b, n, dtype=torch.bool, device=dev).scatter_(1, dom, True)
        rest = torch.argsort(is_dom.to(torch.int8), dim=1, stable=True)[:, : n - dominant]  # [B, R] in order
        r = n - dominant
        step = max(1, r // contextual)
        target_pos = torch.arange(0, r, step, device=dev)[:contextual]
        keys = F.normalize(torch.gather(vision_keys.float(), 1, rest.unsqueeze(-1).expand(-1, -1, vision_keys.shape[-1])), dim=-1)
        sim = torch.bmm(keys, keys[:, target_pos].transpose(1, 2))  # [B, R, C]
        group = sim.argmax(-1)
        group[:, target_pos] = torch.arange(contextual, device=dev)  # a target is in its own group
        assignment = torch.full((b, n), -1, dtype=torch.long, device=dev).scatter_(1, rest, group)
        part_ctx = merge(features, assignment, contextual)
        return concat([part_dom, part_ctx], n)


class PruMergePlus(Reducer):
    """PruMerge+ with a fixed budget: IQR outliers of the CLS attention (attention above
    Q3 + 1.5 IQR), most attended first, then spatially uniform patches until ``keep`` are
    chosen; every other patch merges into the chosen patch with the most similar key (cosine),
    and each output is the CLS-attention-weighted mean of its group (PruMerge's weighting).
    PruMerge+ picks its own count (about 25% of the tokens); here ``keep`` fixes it so it can
    be compared at equal budgets. Output in position order.
    """

    name = "prumerge-plus"
    signals = ("cls_attention", "vision_keys")
    _parameter_constraints = {"grid": [NoneValue(), IntSequence(length=2, minimum=1)]}

    def __init__(self, grid: tuple[int, int] | None = None):
        self.grid = tuple(grid) if grid is not None else None

    def _reduce(self, features, keep, *, generator=None, cls_attention, vision_keys):
        b, n, _ = features.shape
        dev = features.device
        a = cls_attention.float()
        q1, q3 = torch.quantile(a, 0.25, dim=1, keepdim=True), torch.quantile(a, 0.75, dim=1, keepdim=True)
        outlier = a > q3 + 1.5 * (q3 - q1)
        # spatial priority: the coarsest uniform grid (keep, 2 keep, 4 keep, ... N) a patch belongs to
        rows, cols = grid_shape(n, self.grid)
        level = torch.full((n,), float("inf"))
        size, lvl = keep, 0
        while True:
            idx = torch.tensor(spatial_indices(rows, cols, min(size, n)))
            level[idx] = torch.minimum(level[idx], torch.full((len(idx),), float(lvl)))
            if size >= n:
                break
            size, lvl = size * 2, lvl + 1
        level = level.to(dev)
        a_rank = a / a.amax(1, keepdim=True).clamp(min=1e-30)  # in [0, 1]
        tie = torch.arange(n, device=dev, dtype=torch.float32) / (n * 1e3)
        priority = torch.where(outlier, 10.0 + a_rank, 1.0 / (2.0 + level) - tie)
        chosen = torch.topk(priority, keep, dim=1).indices.sort(dim=1).values
        keys = F.normalize(vision_keys.float(), dim=-1)
        sim = torch.bmm(keys, torch.gather(keys, 1, chosen.unsqueeze(-1).expand(-1, -1, keys.shape[-1])).transpose(1, 2))
        assignment = sim.argmax(-1)  # [B, N] -> row of the chosen patch
        assignment.scatter_(1, chosen, torch.arange(keep, device=dev).expand(b, keep))
        weights = a.clamp(min=torch.finfo(torch.float32).tiny)
        red = merge(features, assignment, keep, weights=weights)
        return sorted_by_position(red)


class ToMe(Reducer):
    """ToMe: bipartite soft matching, repeated until ``keep`` tokens remain.

    Each round splits the tokens alternately into sets A and B, matches every A token to its
    most similar B token (cosine of ``metric``: the vision tower's ``keys`` or the projected
    ``features``), and merges the r best-matched A tokens into their partners, r = min(half,
    surplus). Merges are size-weighted, so every output is the mean of the originals it holds;
    group metrics are size-weighted means too. Output in position order.
    """

    name = "tome"
    optional_signals = ("vision_keys",)
    signal_doc = "vision_keys (metric='keys', default) | none (metric='features')"

    _parameter_constraints = {"metric": [Options(("keys", "features"))]}

    def __init__(self, metric: str = "keys"):
        self.metric = metric

    def _reduce(self, features, keep, *, generator=None, vision_keys=None):
        if self.metric == "keys" and vision_keys is None:
            raise ReducerError("reducer 'tome' with metric='keys' needs signal vision_keys; "
                               "or create it with metric='features'")
        b, n, _ = features.shape
        dev = features.device
        base_metric = (vision_keys if self.metric == "keys" else features).float()
        slot = torch.arange(n, device=dev).expand(b, n).clone()  # current row of each original
        cur = n
        while cur > keep:
            metric = merge(base_metric, slot, cur).features  # group means of the metric
            metric = F.normalize(metric, dim=-1)
            a_m, b_m = metric[:, ::2], metric[:, 1::2]
            na, nb = a_m.shape[1], b_m.shape[1]
            r = min(cur - keep, na)
            node_max, node_idx = torch.bmm(a_m, b_m.transpose(1, 2)).max(-1)  # [B, na]
            edge = torch.argsort(node_max, dim=1, descending=True, stable=True)
            src, unm = edge[:, :r], edge[:, r:]
            dst = torch.gather(node_idx, 1, src)
            map_a = torch.empty(b, na, dtype=torch.long, device=dev)
            map_a.scatter_(1, unm, torch.arange(na - r, device=dev).expand(b, na - r))
            map_a.scatter_(1, src, na - r + dst)
            new_of_old = torch.empty(b, cur, dtype=torch.long, device=dev)
            new_of_old[:, ::2] = map_a
            new_of_old[:, 1::2] = na - r + torch.arange(nb, device=dev)
            slot = torch.gather(new_of_old, 1, slot)
            cur -= r
        return sorted_by_position(merge(features, slot, keep))


class DivPrune(Reducer):
    """DivPrune: max-min diversity selection. Starting from the token farthest (cosine) from the
    mean token, repeatedly add the token whose nearest selected token is farthest away.
    Output in original order."""

    name = "divprune"

    def _reduce(self, features, keep, *, generator=None):
        b, n, _ = features.shape
        x = F.normalize(features.float(), dim=-1)
        dist = 1 - torch.bmm(x, x.transpose(1, 2))  # [B, N, N]
        mean = F.normalize(x.mean(1, keepdim=True), dim=-1)
        first = (1 - torch.bmm(x, mean.transpose(1, 2))).squeeze(-1).argmax(1)  # [B]
        chosen = [first]
        nearest = torch.gather(dist, 2, first.view(b, 1, 1).expand(b, n, 1)).squeeze(-1)
        taken = torch.zeros(b, n, dtype=torch.bool, device=features.device)
        taken[torch.arange(b), first] = True
        for _ in range(1, keep):
            nxt = nearest.masked_fill(taken, float("-inf")).argmax(1)
            chosen.append(nxt)
            taken[torch.arange(b), nxt] = True
            nearest = torch.minimum(nearest, torch.gather(dist, 2, nxt.view(b, 1, 1).expand(b, n, 1)).squeeze(-1))
        idx = torch.stack(chosen, 1).sort(dim=1).values
        return select(features, idx)
