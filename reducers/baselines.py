"""The methods the paper compares against, each reproducing its official code by default.

VisionZip, PruMerge+, ToMe and FasterVLM officially act on the vision tower's features before
the projector: their ``stage`` parameter (default ``"pre-projector"``) sets ``hook`` per
instance. A pre-projector call takes the feature-layer hidden state [B, 1+P, Dv] with the CLS
token at index 0 (LLaVA's ``hidden_states[-2]``) and the tower signals of
``reducers.base.SIGNAL_SHAPES`` (``tower_*``); ``keep`` counts the output tokens, CLS included
where the method keeps it, and every index of the result counts the input rows (CLS = 0).
``stage="post-projector"`` applies the same rule to the projected tokens [B, P, D] (no CLS)
with the post-projector signals ``cls_attention`` / ``vision_keys``, the paper's setting; each
docstring names what that changes. DivPrune officially works on the projected tokens.

The conformance tests (``tests/reducers/test_official.py``) run every case of the official
reference outputs (``tests/data/reference/reducers/README.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import costs as C
from .base import Reducer, ReducerError, Reduction, select
from .params import Interval, Options

STAGES = ("pre-projector", "post-projector")


class follows:
    """A class attribute that follows an instance parameter: ``values[getattr(obj, param)]``;
    read on the class it is the default's value (what the registry, ``available`` and
    listings see)."""

    def __init__(self, param: str, values: dict, default):
        self.param, self.values, self.default = param, values, default

    def __get__(self, obj, owner=None):
        return self.values[self.default if obj is None else getattr(obj, self.param)]


def by_stage(pre, post) -> follows:
    """An attribute (``hook``, ``signals``) that depends on ``stage``; default pre-projector."""
    return follows("stage", {"pre-projector": pre, "post-projector": post}, "pre-projector")


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 input (the conformance tests' twin runs), float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def combined(features, comb, assignment, kept_indices, lengths) -> Reduction:
    """A reduction whose rows are ``comb @ features`` (``comb`` [B, M, N] in the work dtype)."""
    b, n, _ = features.shape
    out = torch.bmm(comb, features.to(comb.dtype))
    positions = (comb * torch.arange(n, device=comb.device, dtype=comb.dtype)).sum(-1) / comb.sum(-1)
    return Reduction(features=out.to(features.dtype), positions=positions.float(), kept_indices=kept_indices,
                     assignment=assignment, lengths=lengths, combination=comb)


def combined_work(b, m, n, d, e: float = 4) -> C.Work:  # the product, then 5 kernels for the positions
    return C.matmul(b, m, n, d) + C.kernels(5, b * m * n) + C.cast(b * n * d, e)


# ---------------------------------------------------------------------------------- FasterVLM


class FasterVLM(Reducer):
    """FasterVLM: the ``keep`` patches the CLS token attends to most, in their original order.

    Official: Theia-4869/FasterVLM @ 29ed074, ``llava/model/llava_arch.py``,
    ``LlavaMetaForCausalLM.encode_images``: the tower's CLS attention (its CLIP encoder returns
    ``attentions[select_layer = -2][:, :, 0, 1:]``, per head) averaged over heads, top-``keep``,
    kept as an index mask (so in original order); CLS is dropped (LLaVA's
    ``select_feature="patch"``). The official code projects all tokens and then masks; selecting
    first gives the same tokens, so the default hook is ``pre-projector`` (signal
    ``tower_cls_attention``; the CLS column is ignored). ``stage="post-projector"`` selects the
    projected tokens with ``cls_attention`` [B, P] instead: the same rule.
    """

    name = "fastervlm"
    hook = by_stage("pre-projector", "post-projector")
    signals = by_stage(("tower_cls_attention",), ("cls_attention",))
    _parameter_constraints = {"stage": [Options(STAGES)]}

    def __init__(self, stage: str = "pre-projector"):
        self.stage = stage

    def _reduce(self, features, keep, *, generator=None, tower_cls_attention=None, cls_attention=None):
        if self.stage == "pre-projector":  # keep < 1 + P here (keep = 1 + P is the identity)
            idx = torch.topk(tower_cls_attention[:, 1:].float(), keep, dim=1).indices.sort(dim=1).values + 1
        else:
            idx = torch.topk(cls_attention.float(), keep, dim=1).indices.sort(dim=1).values
        return select(features, idx)

    def _cost(self, n, d, keep, b, e, ctx):  # top-k, sort (pre: + 1 for CLS), select
        pre = self.stage == "pre-projector"
        return C.cast(b * n, e) + C.sort(b, n) + C.sort(b, keep) + C.kernels(pre, b * keep, e=8) + \
            C.select(b, n, keep, d, e)


# ---------------------------------------------------------------------------------- VisionZip


class VisionZip(Reducer):
    """VisionZip (training-free): dominant tokens by CLS attention, plus contextual tokens.

    Official: dvlab-research/VisionZip @ 3151f6d, ``visionzip/clip_encoder.py``,
    ``CLIPVisionTower_VisionZip.forward`` (the batch path LLaVA-1.5 uses), with ``main.py``'s
    ``visionzip(model, dominant, contextual)`` passing ``dominant - 1`` (CLS counts as dominant):

    * dominant = ``round(keep * dominant_ratio)`` tokens, CLS included (54 + 10 at 64, 108 + 20
      at 128, 162 + 30 at 192, the published splits): CLS plus the top ``dominant - 1`` patches
      by the layer -2 CLS attention summed (here: averaged, the same ranking) over heads;
    * the other tokens, in index order, are L2-normalised by their head-mean layer -2 keys; the
      ones at positions 0, step, 2 step, ... (step = remaining // contextual, the first
      ``contextual``) are targets; every other one joins its arg-max cosine target;
    * contextual token j = hidden[target j] + the mean of the tokens that joined it (count
      clamped to 1): not a mean of its group, so the result carries ``combination``;
    * output: dominant tokens in index order (CLS first), then contextual tokens in target
      order; CLS is kept and goes through the projector (VisionZip@64 = CLS + 53 + 10).

    Signals (pre-projector, default): ``tower_cls_attention``, ``tower_keys``.
    ``stage="post-projector"`` (the paper's setting) runs the same rule on the projected tokens
    [B, P, D] with ``cls_attention`` [B, P] and ``vision_keys`` [B, P, Dk]; departures: there is
    no CLS token, so the dominant part is ``round(keep * dominant_ratio)`` patches (one more
    patch instead of CLS), and the tokens are merged after the projector (official: before).
    """

    name = "visionzip"
    hook = by_stage("pre-projector", "post-projector")
    signals = by_stage(("tower_cls_attention", "tower_keys"), ("cls_attention", "vision_keys"))
    _parameter_constraints = {"dominant_ratio": [Interval("real", 0, 1, "right")], "stage": [Options(STAGES)]}

    def __init__(self, dominant_ratio: float = 54 / 64, stage: str = "pre-projector"):
        self.dominant_ratio = float(dominant_ratio)
        self.stage = stage

    def _reduce(self, features, keep, *, generator=None, tower_cls_attention=None, tower_keys=None,
                cls_attention=None, vision_keys=None):
        pre = self.stage == "pre-projector"
        attention, keys = (tower_cls_attention, tower_keys) if pre else (cls_attention, vision_keys)
        b, n, _ = features.shape
        dev = features.device
        wd = work_dtype(features)
        dominant = min(keep, max(1, round(keep * self.dominant_ratio)))
        contextual = keep - dominant
        a = attention.to(wd)
        if pre:  # official all_indices: CLS, then the top dominant - 1 patches
            top = torch.topk(a[:, 1:], dominant - 1, dim=1).indices + 1
            dom = torch.cat([top.new_zeros(b, 1), top], 1)
        else:
            dom = torch.topk(a, dominant, dim=1).indices
        dom = dom.sort(dim=1).values
        if contextual == 0:
            return select(features, dom)
        r = n - dominant
        is_dom = torch.zeros(b, n, dtype=torch.bool, device=dev).scatter_(1, dom, True)
        rest = torch.argsort(is_dom.to(torch.int8), dim=1, stable=True)[:, :r]  # the others, in index order
        step = max(1, r // contextual)
        pos = torch.arange(r, device=dev)
        is_target = (pos % step == 0) & (pos < step * contextual)
        m = torch.gather(keys.to(wd), 1, rest.unsqueeze(-1).expand(b, r, keys.shape[-1]))
        m = m / m.norm(dim=-1, keepdim=True)
        targets = m[:, ::step][:, :contextual]
        group = torch.where(is_target, pos // step, torch.bmm(m, targets.transpose(1, 2)).argmax(-1))  # [B, R]
        merged = (~is_target).to(wd).expand(b, r)
        counts = torch.zeros(b, contextual, device=dev, dtype=wd).scatter_add_(1, group, merged)  # exact integers
        w = torch.where(is_target, 1.0, 1.0 / counts.clamp(min=1).gather(1, group))
        assignment = torch.empty(b, n, dtype=torch.long, device=dev)
        assignment.scatter_(1, dom, torch.arange(dominant, device=dev).expand(b, dominant))
        assignment.scatter_(1, rest, dominant + group)
        weight = torch.ones(b, n, device=dev, dtype=wd).scatter_(1, rest, w)
        comb = torch.zeros(b, keep, n, device=dev, dtype=wd).scatter_(1, assignment.unsqueeze(1), weight.unsqueeze(1))
        kept = torch.cat([dom, dom.new_full((b, contextual), -1)], 1)
        return combined(features, comb, assignment, kept, torch.full((b,), keep, dtype=torch.long, device=dev))

    def _cost(self, n, d, keep, b, e, ctx):  # dominant: 5 kernels pre, 2 post; contextual: 43 more
        pre = self.stage == "pre-projector"
        dominant = min(keep, max(1, round(keep * self.dominant_ratio)))
        contextual, r = keep - dominant, n - dominant
        top = C.cast(b * n, e) + C.sort(b, n) + C.kernels(3 * pre, b * dominant, e=8) + C.sort(b, dominant)
        if contextual == 0:
            return top + C.select(b, n, keep, d, e)
        dk = 64 if pre else ctx.get("vision_hidden") or 1024  # tower_keys: head-mean; vision_keys: full width
        return top + C.cast(b * n * dk, e) + C.kernels(3, b * n, e=8) + C.sort(b, n, e=1) + C.kernels(6, r, e=8) + \
            C.kernels(3, b * r * dk) + C.matmul(b, r, dk, contextual) + C.kernels(12, b * r) + C.kernels(6, b * n) + \
            C.kernels(2, b * keep * n) + C.kernels(3, b * keep, e=8) + combined_work(b, keep, n, d, e)


# ---------------------------------------------------------------------------------- PruMerge+


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
        n_top = n_top.clamp(max=keep - 1)
        spatial = keep - 1 - n_top  # [B], filled at a uniform 1-D stride over the other patches
        comp = torch.argsort(torch.where(rank < n_top.unsqueeze(1), n + t, t), dim=1)
        j = torch.arange(keep - 1, device=dev)
        pick = ((j - n_top.unsqueeze(1)).clamp(min=0) * (n - n_top).unsqueeze(1)) // spatial.clamp(min=1).unsqueeze(1)
        kept = torch.where(j < n_top.unsqueeze(1), desc[:, : keep - 1], comp.gather(1, pick.clamp(max=n - 1)))
        count_kept = torch.full((b,), keep - 1, dtype=torch.long, device=dev)
        m = keep - 1
        valid = None
    else:
        is_top = rank < n_top.unsqueeze(1)
        if plus:  # torch.arange(0, 575, int(int(1 / ratio) / 3)), minus the top ones, ascending
            stride = ((1 / ratio).floor() / 3).floor().long()
            is_sp = (t % stride.unsqueeze(1) == 0) & (t < n - 1) & ~is_top
            count_kept = n_top + is_sp.sum(1)
            key = torch.where(is_top, rank, torch.where(is_sp, n + t, 2 * n + t))
            order = key.argsort(dim=1)
        else:
            count_kept, order = n_top, desc
        m = int(count_kept.max())  # the one host synchronisation: the official count is data-dependent
        kept = order[:, :m]
        valid = torch.arange(m, device=dev) < count_kept.unsqueeze(1)
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


def divprune_select(features: torch.Tensor, keep: int) -> torch.Tensor:
    """DivPrune's max-min diversity selection, batched: the picks [B, keep] in pick order.

    Official: vbdi/divprune @ 799e2d9, ``LLaVA/llava/model/llava_arch.py``,
    ``LlavaMetaForCausalLM.DivPrune`` with ``pairwise_cosine_similarity``: D = 1 - cos(V, V); the
    first pick maximises each token's nearest-neighbour distance (the second-smallest entry of
    its column); each later pick maximises the minimum distance to the picks so far (picked
    tokens are not masked, as officially). Three ops per pick.
    """
    b = features.shape[0]
    x = features.to(work_dtype(features))
    xn = x / x.norm(dim=-1, keepdim=True)
    dist = 1.0 - torch.bmm(xn, xn.transpose(1, 2))
    bidx = torch.arange(b, device=x.device)
    nxt = torch.topk(dist, 2, dim=1, largest=False).values[:, 1].argmax(1)
    picks = [nxt]
    nearest = dist[bidx, nxt]
    for _ in range(1, keep):
        nxt = nearest.argmax(1)
        picks.append(nxt)
        nearest = torch.minimum(nearest, dist[bidx, nxt])
    return torch.stack(picks, 1)


class DivPrune(Reducer):
    """DivPrune: max-min diversity selection on the projected tokens, kept in original order.

    Official: vbdi/divprune @ 799e2d9, ``LLaVA/llava/model/llava_arch.py``:
    ``LlavaMetaForCausalLM.DivPrune`` and the ``LAYER_INDEX == '0'`` block of
    ``prepare_inputs_labels_for_multimodal`` (the picks sorted, the rest of the sequence kept);
    see :func:`divprune_select`. ``keep`` replaces ``round(SUBSET_RATIO * 576)``. The official
    block takes batch element 0 only; this is batched.
    """

    name = "divprune"

    def _reduce(self, features, keep, *, generator=None):
        return select(features, divprune_select(features, keep).sort(dim=1).values)

    def _cost(self, n, d, keep, b, e, ctx):  # 17 kernels + 3 per pick after the first
        return C.cast(b * n * d, e) + C.kernels(2, b * n * d) + C.matmul(b, n, d, n) + C.kernels(2, b * n * n) + \
            C.sort(b, n) + C.kernels(2, b * n) + (keep - 1) * C.kernels(3, b * n) + C.kernels(1, b * keep, e=8) + \
            C.sort(b, keep) + C.select(b, n, keep, d, e)
