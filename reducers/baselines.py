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


import torch

from . import costs as C
from .base import Reducer, Reduction, select
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
