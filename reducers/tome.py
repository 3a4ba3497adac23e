"""ToMe (facebookresearch/ToMe): bipartite soft matching over CLIP's layers, reproducing the
official code by default; see :mod:`reducers.baselines` for the pre-projector contract."""

from __future__ import annotations


import torch

from . import costs as C
from .base import Reducer, ReducerError
from .baselines import STAGES, by_stage, combined, combined_work
from .params import Interval, Options


def tome_merge(metric: torch.Tensor, r: list[int], *, class_token: bool = False,
               size: torch.Tensor | None = None):
    """ToMe's bipartite soft matching applied once per entry of ``r`` (a ``parse_r`` list),
    the metric carried by the same size-weighted merge (merged metric = size-weighted mean).

    Official: facebookresearch/ToMe, ``tome/merge.py``: ``bipartite_soft_matching(metric, r,
    class_token)`` then ``merge_wavg`` (tokens and metric) and ``merge_source``, as
    ``tome/patch/timm.py::ToMeBlock.forward`` chains them. Reproduces its arithmetic in order
    (bit for bit on CPU): each step normalises the merged metric, scores even (A) against odd
    (B) tokens, ``argsort(descending=True)`` of each A token's best score, merges the top r
    (capped at half the unprotected tokens) into their B partners by a sequential sum, and
    orders the result [unmerged A (by score; by index with ``class_token``), then B]. The
    merge's sum is ``index_put_(accumulate=True)`` (deterministic on CUDA too).

    ``metric`` [B, T, C], float32 or float64 (the work dtype); ``size`` [B, T, 1] or None
    (ones). Returns (source [B, M, T] bool, size [B, M, 1], metric [B, M, C]).
    """
    b, t, c = metric.shape
    dev, dt = metric.device, metric.dtype
    s = torch.ones(b, t, 1, dtype=dt, device=dev) if size is None else size.to(dt)
    # carried: [metric | 1 | source / size] in mean form; each step multiplies by size, merges by sum,
    # divides by the merged size, as merge_wavg does (the source block comes back as 0/1 * size / size)
    w = torch.cat([metric, torch.ones(b, t, 1, dtype=dt, device=dev),
                   torch.eye(t, dtype=dt, device=dev).expand(b, t, t) / s], -1)
    bidx = torch.arange(b, device=dev).unsqueeze(1)
    zero = torch.zeros(1, dtype=torch.long, device=dev)
    protected = int(class_token)
    for step_r in r:
        step_r = min(step_r, (t - protected) // 2)
        if step_r <= 0:
            continue
        mv = w[..., :c]
        mn = mv / mv.norm(dim=-1, keepdim=True)
        node_max, node_idx = torch.bmm(mn[:, ::2], mn[:, 1::2].transpose(1, 2)).max(-1)
        if class_token:
            node_max.index_fill_(1, zero, float("-inf"))
        edge = node_max.argsort(dim=-1, descending=True)
        src, unm = edge.split([step_r, edge.shape[1] - step_r], 1)
        if class_token:
            edge = torch.cat([src, unm.sort(dim=1).values], 1)
        y = w * s
        ya_src, ya_unm = y[bidx, edge * 2].split([step_r, edge.shape[1] - step_r], 1)
        yb = y[:, 1::2]
        yb.index_put_((bidx, node_idx[bidx, src]), ya_src, accumulate=True)
        y = torch.cat([ya_unm, yb], 1)
        s = y[..., c:c + 1]
        w = y / s
        t -= step_r
    return w[..., c + 1:] * s > 0.5, s, w[..., :c]


def tome_schedule(t: int, total: int, steps: int, protected: int = 0) -> list[int]:
    """The per-step r list: ``total`` merges spread evenly over ``steps``, the larger steps first.
    A step merges at most half of the unprotected tokens, i.e. no more than the tokens it leaves
    (the official cap); where the even split exceeds that near the end (``keep`` below ~24 of
    576) the excess moves to the earlier steps. The reference schedules never meet the cap."""
    base, extra = divmod(total, steps)
    plan = [base + (i < extra) for i in range(steps)]
    out, carry, after = [], 0, t - total
    for want in reversed(plan):
        want += carry
        got = min(want, after - protected)
        out.append(got)
        carry, after = want - got, after + got
    if carry:
        raise ReducerError(f"ToMe cannot merge {total} tokens in {steps} step(s): each step merges at most half "
                           f"of them; raise keep or steps")
    return out[::-1]


class ToMe(Reducer):
    """ToMe: bipartite soft matching, r tokens per CLIP layer.

    Official: facebookresearch/ToMe @ af95e4b, ``tome/merge.py`` (``bipartite_soft_matching``,
    ``merge_wavg``, ``merge_source``) and ``tome/utils.py`` (``parse_r``), chained per layer as
    in ``tome/patch/timm.py::ToMeBlock.forward``; see :func:`tome_merge`. The ``steps`` = 23
    layers feeding LLaVA's layer -2 each merge r tokens: the r list sums to the tokens to remove
    (576 - ``keep``), spread evenly with the larger r first ([23] * 6 + [22] * 17 at 64), as
    ``parse_r(23, r_list)`` takes it. Size-weighted averages; the metric is the head-mean keys,
    carried by the same size-weighted merge. Output order is ToMe's: after each step [unmerged
    A tokens (by score), then B tokens], recursively.

    Pre-projector (default): ``features`` [B, 1+P, Dv] and ``tower_keys`` [B, 1+P, 64]; CLS is
    protected (``class_token=True``: never merged, unmerged A re-sorted by index) and dropped
    from the output as LLaVA's ``select_feature="patch"`` does, so ``keep`` patch tokens come
    out. Departure: the official ToMe merges inside each CLIP layer, so later layers run on
    merged tokens (with proportional attention) and recompute the metric from them; here the 23
    merges are applied to layer -2's output and keys at once, the metric carried by size-weighted
    means (what the reference harness runs). ``stage="post-projector"`` merges the projected
    tokens [B, P, D] with ``vision_keys`` [B, P, Dk] as the metric, no CLS (the same rule).
    A step's cap (half the tokens) matters only below ``keep`` ~ 24; there the excess moves to
    the earlier steps (:func:`tome_schedule`; official ``parse_r`` would leave more tokens).
    """

    name = "tome"
    hook = by_stage("pre-projector", "post-projector")
    signals = by_stage(("tower_keys",), ("vision_keys",))
    _parameter_constraints = {"steps": [Interval("int", 1, None)], "stage": [Options(STAGES)]}

    def __init__(self, steps: int = 23, stage: str = "pre-projector"):
        self.steps = steps
        self.stage = stage

    def _reduce(self, features, keep, *, generator=None, tower_keys=None, vision_keys=None):
        b, n, _ = features.shape
        dev = features.device
        cls = self.stage == "pre-projector"
        metric = tower_keys if cls else vision_keys
        wd = torch.float64 if torch.float64 in (features.dtype, metric.dtype) else torch.float32
        r = tome_schedule(n, n - int(cls) - keep, self.steps, int(cls))
        source, size, _ = tome_merge(metric.to(wd), r, class_token=cls)
        if cls:  # CLS stays row 0 (protected, unmerged A tokens sorted by index)
            source, size = source[:, 1:], size[:, 1:]
        comb = source.to(wd) / size
        assignment = comb.argmax(1)
        if cls:
            assignment[:, 0] = -1
        kept = torch.where(size.squeeze(-1) == 1, comb.argmax(-1), -1)
        red = combined(features, comb, assignment, kept, torch.full((b,), keep, dtype=torch.long, device=dev))
        red.combination = None  # rows are the (size-weighted) means of their groups
        return red

    def _cost(self, n, d, keep, b, e, ctx):  # 24 kernels (23 post) + 15 per merging step (12 post: no CLS)
        cls = self.stage == "pre-projector"
        c, width, t = 64 if cls else ctx.get("vision_hidden") or 1024, (64 if cls else 1024) + 1 + n, n
        work = C.cast(b * n * c, e) + C.kernels(2, n * n) + C.kernels(12 + cls, b * n * width) + \
            C.kernels(3, b * keep * n) + combined_work(b, keep, n, d, e)
        for r in tome_schedule(n, n - int(cls) - keep, self.steps, int(cls)):
            if min(r, (t - cls) // 2) > 0:  # a step: scores of half the tokens against the other half, a merge
                work = work + C.kernels(2, b * t * c) + C.matmul(b, (t + 1) // 2, c, t // 2) + \
                    C.kernels(1, b * t * t / 2) + C.sort(b, (t + 1) // 2) * (1 + cls) + C.kernels(7 + 2 * cls, b * t * width)
                t -= min(r, (t - cls) // 2)
        return work


# ---------------------------------------------------------------------------------- DivPrune
