"""PruMerge+ and PruMerge (42Shawn/LLaVA-PruMerge), reproducing the official code by default; see
:mod:`reducers.baselines` for the pre-projector contract."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import costs as C
from .base import Reducer, ReducerError
from .baselines import STAGES, by_stage, combined, combined_work, follows, work_dtype
from .params import Options


def iqr_outliers(a: torch.Tensor, desc_values: torch.Tensor) -> torch.Tensor:
    """How many entries of each row of ``a`` [B, N] lie above Q3 + 1.5 IQR (numpy's default
    linear percentiles, as PruMerge's ``outlier_dectection``); ``desc_values``: ``a`` sorted
    descending."""
    n = a.shape[1]

    def percentile(p):  # numpy's _lerp on the ascending order; entry i ascending = n - 1 - i descending
        pos = (n - 1) * p / 100
        lo = math.floor(pos)
        hi, t = min(lo + 1, n - 1), pos - lo
        x, y = desc_values[:, n - 1 - lo], desc_values[:, n - 1 - hi]
        return x + (y - x) * t if t < 0.5 else y - (y - x) * (1 - t)

    q1, q3 = percentile(25), percentile(75)
    return (a > (q3 + 1.5 * (q3 - q1)).unsqueeze(1)).sum(1)


def prumerge(x, a, keys, *, plus: bool = True, keep: int | None = None, neighbours: int = 32):
    """PruMerge (``plus=False``) and PruMerge+ (``plus=True``) on patch tokens.

    ``x`` [B, N, D] the patch features, ``a`` [B, N] the CLS attention to the patches (softmax
    over CLS + patches), ``keys`` [B, N, Dk] the patches' keys. ``keep`` None: the official
    adaptive count (one host synchronisation); an int: exactly ``keep`` output rows (see
    :class:`PruMergePlus`). Returns (combination [B, M, N] in the work dtype, the kept patches in
    row order [B, M - 1] (-1 on padding), assignment [B, N], lengths [B]); row ``lengths - 1`` is
    the extra token.
    """
    b, n, _ = x.shape
    dev = x.device
    wd = work_dtype(x)
    a = a.to(wd)
    vals, desc = a.sort(dim=1, descending=True)  # topk(sorted=True) order
    count = iqr_outliers(a, vals).clamp(min=1)  # no outlier: the official code divides by zero
    ratio = count.to(torch.float64) / n  # reduction_ratio (per image; official: over the batch)
    n_top = (n * ratio).floor().long()  # int(N * ratio)
    t = torch.arange(n, device=dev)
    rank = torch.empty_like(desc).scatter_(1, desc, t.expand(b, n))
    if keep is not None:
        kept, count_kept, m, valid = _kept_fixed(desc, rank, n_top, keep, n)
    else:
        kept, count_kept, m, valid = _kept_adaptive(desc, rank, n_top, ratio, n, plus)
    kn = F.normalize(keys.to(wd), p=2, dim=-1)
    sim = torch.bmm(torch.gather(kn, 1, kept.unsqueeze(-1).expand(b, m, kn.shape[-1])), kn.transpose(1, 2))
    sim.scatter_(2, kept.unsqueeze(-1), float("-inf"))  # the others: every patch but itself
    nb = sim.topk(min(neighbours, n - 1), dim=2).indices  # [B, M, 32]
    comb = torch.zeros(b, m + 1, n, device=dev, dtype=wd)
    rows = comb[:, :m]
    rows.scatter_(2, nb, torch.gather(a.unsqueeze(1).expand(b, m, n), 2, nb))  # + sum a_j x_j (unnormalised)
    rows.scatter_(2, kept.unsqueeze(-1), 1.0)  # x_i
    if valid is not None:
        rows.mul_(valid.unsqueeze(-1))
        row_of_kept = torch.where(valid, torch.arange(m, device=dev), count_kept.unsqueeze(1))
    else:
        row_of_kept = torch.arange(m, device=dev).expand(b, m)
    assignment = count_kept.unsqueeze(1).expand(b, n).clone().scatter_(1, kept, row_of_kept)
    non_kept = assignment == count_kept.unsqueeze(1)
    comb.scatter_(1, count_kept.view(b, 1, 1).expand(b, 1, n), (a * non_kept).unsqueeze(1))  # the extra token
    kept_rows = kept if valid is None else torch.where(valid, kept, -1)
    return comb, kept_rows, assignment, count_kept + 1


def _kept_fixed(desc, rank, n_top, keep: int, n: int):
    """Exactly ``keep - 1`` kept patches: the top outliers, then a uniform 1-D stride over the others."""
    b, dev = desc.shape[0], desc.device
    t = torch.arange(n, device=dev)
    n_top = n_top.clamp(max=keep - 1)
    spatial = keep - 1 - n_top  # [B]
    comp = torch.argsort(torch.where(rank < n_top.unsqueeze(1), n + t, t), dim=1)
    j = torch.arange(keep - 1, device=dev)
    pick = ((j - n_top.unsqueeze(1)).clamp(min=0) * (n - n_top).unsqueeze(1)) // spatial.clamp(min=1).unsqueeze(1)
    kept = torch.where(j < n_top.unsqueeze(1), desc[:, : keep - 1], comp.gather(1, pick.clamp(max=n - 1)))
    return kept, torch.full((b,), keep - 1, dtype=torch.long, device=dev), keep - 1, None


def _kept_adaptive(desc, rank, n_top, ratio, n: int, plus: bool):
    """The official count: the outliers (+ PruMerge+'s spatial samples), with one host sync."""
    t = torch.arange(n, device=desc.device)
    is_top = rank < n_top.unsqueeze(1)
    if plus:  # torch.arange(0, 575, int(int(1 / ratio) / 3)), minus the top ones, ascending
        stride = ((1 / ratio).floor() / 3).floor().long()
        is_sp = (t % stride.unsqueeze(1) == 0) & (t < n - 1) & ~is_top
        count_kept = n_top + is_sp.sum(1)
        order = torch.where(is_top, rank, torch.where(is_sp, n + t, 2 * n + t)).argsort(dim=1)
    else:
        count_kept, order = n_top, desc
    m = int(count_kept.max())  # the one host synchronisation: the official count is data-dependent
    valid = torch.arange(m, device=desc.device) < count_kept.unsqueeze(1)
    return order[:, :m], count_kept, m, valid


class PruMergePlus(Reducer):
    """PruMerge+: IQR outliers of the CLS attention plus spatial samples, each merged with its
    32 nearest neighbours, and one extra token for the pruned ones.

    Official: 42Shawn/LLaVA-PruMerge @ 097c041, ``llava/model/multimodal_encoder/clip_encoder.py``,
    ``CLIPVisionTower.token_prune_merge_advanced_plus(images, if_adaptive=True,
    reduction_ratio=1/8)`` with ``outlier_dectection`` and ``complement_idx``:

    * signal: the last layer's (layers[23]) q_proj / k_proj outputs (hooked, full width, CLS
      included); CLS attention = softmax(q k^T * C^-0.5) over 1+P keys, row 0 without column 0
      (a single head over the full width, C the feature width);
    * count: ratio = the fraction of patches above Q3 + 1.5 IQR; the top ``int(P * ratio)``
      patches by attention (descending), then, in index order, the patches of
      ``range(0, 575, int(int(1 / ratio) / 3))`` not among them (PruMerge+'s spatial fill);
    * merge: kept patch i (cosine of the normalised last-layer keys) takes its 32 most similar
      other patches j (kept or not): x_i + sum_j a_j x_j, with the raw attention a_j as weights;
    * output: the kept patches in that order, then one extra token sum_{j not kept} a_j x_j;
      no CLS. ``keep`` is ignored (the count is the method's own: ``lengths`` per sample).

    Signals (pre-projector, default): ``tower_last_k`` and ``tower_last_q`` (or
    ``tower_last_cls_attention`` instead of q). Departures, all outside the official code's
    reach: the outlier ratio is taken per image (official: over the flattened batch, and its
    spatial fill runs for batch 1 only); with no outlier at all (official: ZeroDivisionError)
    the single most attended patch counts as one; the output needs one host synchronisation
    (its count).

    ``budget="fixed"`` (for equal-budget comparisons): exactly ``keep`` output tokens: the top
    ``min(outliers, keep - 1)`` patches, then ``keep - 1 - top`` patches at a uniform 1-D
    stride over the other patches in index order (the p-th of R picks is the
    floor(p (P - top) / R)-th), merged as above, then the extra token; no host sync. Departure:
    official has no fixed budget (its stride and count follow from the IQR ratio).
    ``stage="post-projector"`` runs it on the projected tokens [B, P, D] with ``cls_attention``
    [B, P] as the attention and ``vision_keys`` [B, P, Dk] as the keys; departure: the signals
    are whatever the caller gives (official: the last layer's single-head attention and full
    keys), and the merge happens after the projector (official: before).
    """

    name = "prumerge-plus"
    hook = by_stage("pre-projector", "post-projector")
    signals = by_stage(("tower_last_k",), ("cls_attention", "vision_keys"))
    optional_signals = by_stage(("tower_last_q", "tower_last_cls_attention"), ())
    _parameter_constraints = {"budget": [Options(("adaptive", "fixed"))], "stage": [Options(STAGES)]}

    def __init__(self, budget: str = "adaptive", stage: str = "pre-projector"):
        self.budget = budget
        self.stage = stage

    fixed_count = follows("budget", {"adaptive": False, "fixed": True}, "adaptive")

    def count_from_keep(self) -> bool:
        return self.budget == "fixed"

    def _reduce(self, features, keep, *, generator=None, tower_last_k=None, tower_last_q=None,
                tower_last_cls_attention=None, cls_attention=None, vision_keys=None):
        budget = keep if self.budget == "fixed" else None
        if self.stage == "post-projector":
            comb, kept, assignment, lengths = prumerge(features, cls_attention, vision_keys, keep=budget)
            return combined(features, comb, assignment, torch.full_like(comb[..., 0], -1, dtype=torch.long), lengths)
        if tower_last_cls_attention is not None:
            a = tower_last_cls_attention[:, 1:]
        elif tower_last_q is not None:
            wd = work_dtype(features)
            logits = torch.bmm(tower_last_q[:, :1].to(wd), tower_last_k.to(wd).transpose(1, 2))
            a = (logits * features.shape[-1] ** -0.5).softmax(-1)[:, 0, 1:]
        else:
            raise ReducerError("reducer 'prumerge-plus' needs signal tower_last_q (or tower_last_cls_attention) "
                               "besides tower_last_k")
        comb, kept, assignment, lengths = prumerge(features[:, 1:], a, tower_last_k[:, 1:], keep=budget)
        comb = F.pad(comb, (1, 0))  # the CLS column: CLS is dropped
        assignment = F.pad(assignment, (1, 0), value=-1)
        return combined(features, comb, assignment, torch.full_like(comb[..., 0], -1, dtype=torch.long), lengths)

    def _cost(self, n, d, keep, b, e, ctx):  # prumerge: 55 kernels fixed, 65 + one sync adaptive; pre: +5
        pre = self.stage == "pre-projector"
        p, dk = n - pre, ctx.get("vision_hidden") or 1024
        m = keep - 1  # kept patches (adaptive: keep = the count the method chose)
        count = C.kernels(42, b * p, e=8) if self.budget == "fixed" else C.kernels(51, b * p, e=8) + C.sync()
        merge = C.cast(b * p * dk, e) + C.kernels(3, b * p * dk) + C.kernels(1, b * m * dk) + C.matmul(b, m, dk, p) + \
            C.sort(b, p) + C.kernels(4, b * m * p) + C.kernels(3, b * (m + 1) * p)
        tower = C.matmul(b, 1, dk, n) + C.kernels(2, b * n) + C.kernels(2, b * (m + 1) * n) if pre else C.Work()
        return C.sort(b, p) + count + merge + tower + C.kernels(1, b * (m + 1), e=8) + combined_work(b, m + 1, n, d, e)


# ---------------------------------------------------------------------------------- ToMe
