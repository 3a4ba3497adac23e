"""Reducers that act inside the LLM: FastV, DART and SparseVLM, as pure torch on a decoder
layer's queries, keys and hidden states, each following its official code by default.

The protocol (driven by ``vlm.layerwise``, which runs the decoder layer by layer):

* ``stages(keep, n_visual, n_layers)`` -> ``[(l, count), ...]``: layer ``l``'s attention scores
  the visual tokens and the pruning applies to layer ``l``'s OUTPUT (the input of layer
  ``l + 1``); layers ``0..l`` keep every token in their KV cache. A stage whose count is not
  below the visual block's current size is skipped: at ``keep`` = N every method is the identity.
* ``prepare(embeds, vis)``, once, on the LLM's input embeddings [B, T, D] before layer 0; what it
  returns is handed to every ``select`` as ``prepared`` (SparseVLM chooses its raters there).
* ``select(q, k, hidden, vis, count, *, hidden_out=None, final_norm=None, prepared=None)``, per
  stage: q, k [B, H, T, d] are layer ``l``'s rotated queries and keys of the current sequence,
  computed from its input exactly as the layer does (KV heads repeated); ``hidden`` [B, T, D]
  is layer ``l``'s input, ``hidden_out`` its output, ``final_norm`` the model's final RMSNorm
  (a callable), ``vis`` the visual block's slice of T. Returns (kept rows of the block [B, c]
  long, ascending; recycled rows [B, r, D] or None, placed after the kept rows; their mean
  block-relative indices [B, r] or None). The forward path gathers ``hidden_out``'s rows.
* ``renumber_positions``: the rows left after a prune take position ids ``0..L'-1``
  (SparseVLM's ``position_ids[:, :L']``) instead of keeping their own (FastV, DART).

These methods know no model: batched (B > 1 with equal prompt lengths; the official code runs
batch 1), deterministic, no generator.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

from . import costs as C
from .base import BaseReducer, ReducerError
from .baselines import follows
from .in_llm_costs import StagedCost
from .params import Interval, IntSequence, Options


class InLLMReducer(StagedCost, BaseReducer):
    """A method that drops visual tokens inside the LLM, at one or more layers (protocol: the
    module docstring). ``layer`` = K: layer K-1 scores and its output (layer K's input) is pruned."""

    hook = "in-llm"
    renumber_positions: ClassVar[bool] = False
    _parameter_constraints = {"layer": [Interval("int", 1, None)]}

    def __init__(self, layer: int = 2):
        self.layer = layer

    def stages(self, keep: int, n_visual: int, n_layers: int) -> list[tuple[int, int]]:
        self._check(keep, n_visual)
        if self.layer >= n_layers:
            raise ReducerError(f"reducer {self.name!r}: layer {self.layer} is out of range for a {n_layers}-layer "
                               f"LLM; allowed: 1..{n_layers - 1}")
        return [(self.layer - 1, n_visual if keep >= n_visual else min(n_visual, self.count(keep)))]

    def count(self, keep: int) -> int:
        """The visual tokens left after the stage for a budget ``keep`` (< N)."""
        return keep

    def prepare(self, embeds: torch.Tensor, vis: slice):
        """Called once on the LLM's input embeddings; the result comes back as ``prepared``."""
        return None

    @staticmethod
    def _check(keep: int, n_visual: int) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n_visual:
            raise ReducerError(f"keep = {keep!r} is out of range; allowed: 1..{n_visual} (the number of visual tokens)")

    @abstractmethod
    def select(self, q, k, hidden, vis: slice, count: int, *, hidden_out=None, final_norm=None, prepared=None):
        """The rows of the visual block to keep; see the module docstring."""


def fastv_select(attn_last_row: torch.Tensor, image_start: int, image_len: int, keep: int) -> torch.Tensor:
    """FastV's selection rule: the kept image-relative indices, ascending [B, keep].

    Official: pkunlp-icler/FastV @ d165972, ``src/transformers/src/transformers/models/llama/
    modeling_llama.py``, ``LlamaModel.forward``, the ``USE_FAST_V and FASTV_INPLACE`` branch at
    ``idx == AGG_LAYER`` (the LLaVA path of the paper): layer K-1's attention probabilities
    averaged over heads, the last query row, the image span ``[SYS_LENGTH, SYS_LENGTH +
    IMAGE_TOKEN_LENGTH)``, ``topk(ATTENTION_RANK)``, sorted (with the prefix and the text after
    the image, ``keep_indexs``; the hidden states keep their original position ids). The mask
    and llava-hf variants keep the same tokens; their counts are ``round(576 (1 - r))``
    (llava-hf ``fastv_r``) and ``int(576 r)`` (lmms-eval ``ratio``). Batched (official: batch 0).

    ``attn_last_row`` [B, H, L]: the last row of layer K-1's attention probabilities (causal, so
    it sees all L positions), every head.
    """
    if attn_last_row.dim() != 3:
        raise ReducerError(f"attn_last_row must be [B, H, L], got shape {tuple(attn_last_row.shape)}")
    length = attn_last_row.shape[-1]
    if not (0 <= image_start and image_len >= 1 and image_start + image_len <= length):
        raise ReducerError(f"image span {image_start}..{image_start + image_len} does not fit the {length} positions")
    InLLMReducer._check(keep, image_len)
    image = attn_last_row.mean(1)[:, image_start:image_start + image_len]
    return image.topk(keep, dim=1).indices.sort(dim=1).values


def last_row_attention(q, k) -> torch.Tensor:
    """The last position's attention probabilities over every position, per head [B, H, L]
    (causal: the last row sees every key), in float32."""
    d = q.shape[-1]
    return (torch.matmul(q[:, :, -1:].float(), k.float().transpose(-1, -2)) / math.sqrt(d)).softmax(-1)[:, :, 0]


class FastV(InLLMReducer):
    """FastV (official, inplace variant): layer K-1's attention (K = ``layer``, default 2, so
    layer 1's), last query row, heads averaged over the image span, keeps the top ``keep``
    (ATTENTION_RANK; R = 1 - keep / N) and drops the rest from layer K-1's output, before layer
    K; kept rows keep their position ids. The rule is :func:`fastv_select`. Batched per sample
    (official: batch 0). Official: pkunlp-icler/FastV, ``src/transformers/src/transformers/
    models/llama/modeling_llama.py``, ``LlamaModel.forward``, ``USE_FAST_V``/``FASTV_INPLACE``."""

    name = "fastv"

    def select(self, q, k, hidden, vis, count, *, hidden_out=None, final_norm=None, prepared=None):
        return fastv_select(last_row_attention(q, k), vis.start, vis.stop - vis.start, count), None, None

    def select_cost(self, b, seq, vis, after, count, d, heads, e=4):  # 6 kernels (+2 casts of 16-bit q, k)
        scores = b * heads * seq
        return C.cast(scores * d // heads, e, 2) + C.matmul(b * heads, 1, d // heads, seq) + \
            C.kernels(2, scores, flops=3) + C.kernels(1, scores) + C.sort(b, vis) + C.sort(b, count)


class DART(InLLMReducer):
    """DART (duplication-aware), official by default: ZichenWen1/DART's LLaVA code
    (``llava/model/language_model/modeling_llama_self.py``, ``get_retained_image_token`` and
    ``DART_K_norm.forward``; public copy xqy1111111/DART).

    At layer K = ``layer`` (default 2): ``pivot_image`` (4) image and ``pivot_text`` (4) text
    pivots are the tokens whose layer K-1 key (every head concatenated) has the largest L1
    norm; each pivot in turn (in the order the official loop iterates its Python set of
    absolute positions, reproduced by building the same set) takes the ``keep // (pivot_image +
    pivot_text)`` (TOKEN_TOPK) image tokens least cosine-similar to it, among the non-pivot image
    tokens no pivot took yet, similarity measured on layer K-1's output after the model's final
    norm. Kept: image pivots + every pick, dropped from layer K-1's output before layer K, kept
    rows keeping their position ids.

    ``keep`` is the official ``max_num_trunction``: with ``budget="official"`` the output count is
    ``pivot_image + (pivot_image + pivot_text) * (keep // (pivot_image + pivot_text))`` (68 at 64,
    132 at 128, 196 at 192; ``fixed_count`` False). ``budget="exact"`` keeps ``keep`` tokens: the
    first ``r`` pivots in loop order take one more token, ``r`` the remainder; below
    ``pivot_image`` the top-``keep`` image tokens by key norm.

    Departures: the keys are the rotated keys as the attention computes them (the official
    reads ``layer_outputs[-2]`` from a patched decoder layer that is not in the repository; the
    llmc port hooks the rotated keys, as here); batched per sample (official: batch 0); fewer
    text pivots when the prompt has fewer text tokens (official: an error).
    """

    name = "dart"
    fixed_count = follows("budget", {"official": False, "exact": True}, "official")
    _parameter_constraints = {"layer": [Interval("int", 1, None)], "pivot_image": [Interval("int", 1, None)],
                              "pivot_text": [Interval("int", 0, None)], "budget": [Options(("official", "exact"))]}

    def __init__(self, layer: int = 2, pivot_image: int = 4, pivot_text: int = 4, budget: str = "official"):
        super().__init__(layer)
        self.pivot_image = pivot_image
        self.pivot_text = pivot_text
        self.budget = budget

    def count(self, keep):
        if self.budget == "exact":
            return keep
        per = self.pivot_image + self.pivot_text
        return self.pivot_image + per * (keep // per)

    def select(self, q, k, hidden, vis, count, *, hidden_out=None, final_norm=None, prepared=None):
        if hidden_out is None or final_norm is None:
            raise ReducerError("reducer 'dart' needs hidden_out (layer K-1's output) and final_norm (the final norm)")
        l1 = k.float().abs().sum(dim=(1, 3))  # [B, T]: the key's L1 norm over every head's dims
        normed = final_norm(hidden_out).float()
        kept = [self._one(l1[b], normed[b], vis, count) for b in range(k.shape[0])]
        return torch.stack(kept).to(k.device), None, None

    def select_cost(self, b, seq, vis, after, count, d, heads, e=4):  # per sample: 4 + 14 per pivot (host loop)
        pivots = self.pivot_image + min(self.pivot_text, after)
        if count < min(self.pivot_image, vis):
            per = C.sort(1, vis) * 2
        else:
            base, extra = divmod(count - min(self.pivot_image, vis), pivots)
            used = pivots if base else extra
            per = C.sort(1, vis) + C.sort(1, after) + C.kernels(3, 16) + used * (
                C.kernels(1, vis * d) + C.Work(flops=3.0 * vis * d, bytes=4.0 * vis * d, launches=11) +
                C.sort(1, vis) + C.sync())
        return C.cast(b * seq * d, e, 2) + C.kernels(2, b * seq * d) + C.kernels(6, b * seq * d) + b * per + \
            C.kernels(1, b * count, e=8)

    def _one(self, l1, x, vis, count) -> torch.Tensor:
        start, stop = vis.start, vis.stop
        if count < min(self.pivot_image, stop - start):
            return l1[start:stop].topk(count).indices.sort().values
        img = (l1[start:stop].topk(min(self.pivot_image, stop - start)).indices + start).tolist()
        txt = (l1[stop:].topk(min(self.pivot_text, l1.shape[0] - stop)).indices + stop).tolist()
        order = list(set(img + txt))  # the official loop's order (it iterates a copy of this set)
        base, extra = divmod(count - len(img), len(order))
        valid = set(range(start, stop))
        valid.difference_update(img)
        chosen = set(img)
        for j, item in enumerate(order):
            take = base + (j < extra)
            if take == 0:
                continue
            cand = list(valid)
            sim = -F.cosine_similarity(x[item], x[cand], dim=-1)
            picked = [cand[i] for i in sim.topk(take).indices.tolist()]
            chosen.update(picked)
            valid.difference_update(picked)
        return torch.tensor(sorted(chosen), dtype=torch.long) - start


def dpc_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """SparseVLM's clustering (DPC-kNN, ``cluster_and_merge``): labels [B, n] in 0..k-1, cluster
    j being the j-th centre by score. Distances ``||x_i - x_j|| / sqrt(C)``; density ``exp(-mean
    of the squared distances to the k nearest, self included)``; delta = distance to the nearest
    denser point (the largest distance of the sample for the densest); centres = top-k of
    density x delta; every point joins its nearest centre, a centre itself. Departure: the
    official adds ``rand * 1e-6`` to the densities to break ties; here a tie goes to the lower
    index (deterministic)."""
    b, n, c = x.shape
    x = x.float()
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(c)
    density = (-(dist.topk(k, dim=-1, largest=False).values ** 2).mean(-1)).exp()  # [B, n]
    idx = torch.arange(n, device=x.device)
    dj, di = density[:, None, :], density[:, :, None]  # [b, i, j]: is j denser than i
    denser = (dj > di) | ((dj == di) & (idx[None, None, :] < idx[None, :, None]))
    dmax = dist.flatten(1).max(-1).values[:, None, None]
    delta = torch.where(denser, dist, dmax).min(-1).values
    centres = (delta * density).topk(k, dim=-1).indices  # [B, k]
    labels = torch.gather(dist, 1, centres[..., None].expand(-1, -1, n)).argmin(1)  # [B, n]
    return labels.scatter(1, centres, torch.arange(k, device=x.device).expand(b, -1))


def rater_attention(q, k, vis: slice, raters: torch.Tensor) -> torch.Tensor:
    """Each visual token's score [B, N]: the raters' attention probabilities to it (causal
    softmax over the whole row, float32), averaged over heads and over the raters."""
    t = raters.shape[1]
    if vis.stop + t != q.shape[2]:
        raise ReducerError(f"{t} raters' flags for {q.shape[2] - vis.stop} text tokens after the image")
    logits = torch.matmul(q[:, :, vis.stop:].float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    future = torch.arange(k.shape[2], device=q.device)[None, :] > torch.arange(vis.stop, vis.stop + t,
                                                                                device=q.device)[:, None]
    rel = logits.masked_fill(future, float("-inf")).softmax(-1)[..., vis].mean(1)  # [B, T, N]
    w = raters.float()
    return (rel * w[..., None]).sum(1) / w.sum(1, keepdim=True)


class SparseVLM(InLLMReducer):
    """SparseVLM (v1, the LLaVA-1.5 code), official by default: Gumpest/SparseVLMs
    (``llava/model/language_model/modelling_sparse_llama.py``, ``LlamaDynamicvitModel.forward``;
    ``score.py``, ``attn_postprocess_topk``; ``utils.py``, ``cluster_and_merge``).

    Raters, chosen once from the LLM's input embeddings: the text tokens after the image whose
    ``softmax over text of (v . t)``, averaged over the visual tokens, is above the mean. At each
    pruning layer l of ``layers`` (2, 6, 15): layer l's attention probabilities (its causal
    softmax), heads averaged, the raters' rows averaged, score the current visual block; the top
    ``count`` stay. Recycling: the best ``int(recycle * pruned) + 1`` of the pruned (``recycle``
    0.3) are clustered by DPC-kNN (:func:`dpc_knn`) into ``int(that / recycle_group) + 1``
    groups (``recycle_group`` 10) and each group's mean (over ``count + 1e-6``) is appended to
    the kept visual rows. Everything is taken from layer l's output, which is pruned (before
    layer l+1); the position ids become ``0..L'-1`` (official ``position_ids[:, :L']``).

    ``keep`` names the published LLaVA-1.5 schedule (visual tokens kept at layers 2/6/15, before
    recycling): 64: 66/30/17, 128: 303/110/36, 192: 300/200/110; 576 tokens leave 82/32/18 at
    "64". ``fixed_count`` False: ``keep`` is the paper's average budget, not an output count.

    Departures: other ``keep`` values scale the nearest schedule (official: only 64/128/192);
    raters per sample (official: the batch-wide mean, batch 1); all text rates where none is
    above the mean; ``recycle=0`` disables recycling and the groups are at most the candidates
    (official: always at least one); a stage whose count is not below the block is skipped
    (official keeps at most block - 1); :func:`dpc_knn`'s tie-break. In decoding each layer's new
    token takes the next position after its own cache, as officially
    (:func:`vlm.layerwise.per_layer_positions`).
    SparseVLM+ (the ``V2_0`` switch) is not implemented.
    """

    name = "sparsevlm"
    fixed_count = False
    renumber_positions = True
    SCHEDULE = {64: (66, 30, 17), 128: (303, 110, 36), 192: (300, 200, 110)}
    _parameter_constraints = {"layers": [IntSequence(minimum=0, increasing=True)],
                              "recycle": [Interval("real", 0, 1)], "recycle_group": [Interval("int", 1, None)]}

    def __init__(self, layers: tuple[int, ...] = (2, 6, 15), recycle: float = 0.3, recycle_group: int = 10):
        self.layers = tuple(layers)
        self.recycle = float(recycle)
        self.recycle_group = recycle_group

    def params(self) -> dict:
        return {"layers": list(self.layers), "recycle": self.recycle, "recycle_group": self.recycle_group}

    def stages(self, keep, n_visual, n_layers):
        self._check(keep, n_visual)
        if keep >= n_visual:
            counts = (n_visual,) * len(self.layers)
        elif keep in self.SCHEDULE:
            counts = self.SCHEDULE[keep]
        else:
            nearest = min(self.SCHEDULE, key=lambda s: abs(s - keep))
            counts = [max(1, min(n_visual, round(c * keep / nearest))) for c in self.SCHEDULE[nearest]]
        out = [(layer, c) for layer, c in zip(self.layers, counts) if layer < n_layers]
        if not out:
            raise ReducerError(f"reducer 'sparsevlm': no pruning layer of {self.layers} fits a {n_layers}-layer LLM")
        return out

    def _recycle(self, before: int, count: int) -> tuple[int, int]:
        """(candidates, groups): the best ``int(recycle * pruned) + 1`` pruned tokens, clustered into
        ``int(candidates / recycle_group) + 1`` groups (none when nothing is pruned)."""
        if self.recycle == 0 or count >= before:
            return 0, 0
        n_cand = min(before - count, int((before - count) * self.recycle) + 1)
        return n_cand, min(n_cand, int(n_cand / self.recycle_group) + 1)

    def recycled(self, before, count):
        return self._recycle(before, count)[1]

    def prepare_cost(self, b, vis, after, d, e=4):  # 8 kernels: the raters from the input embeddings
        return C.cast(b * (vis + after) * d, e, 2) + C.matmul(b, vis, d, after) + C.kernels(7, b * vis * after)

    def select_cost(self, b, seq, vis, after, count, d, heads, e=4):  # 15 kernels; recycling: 55
        hd, logits = d // heads, b * heads * after * seq
        work = C.cast(b * heads * (after + seq) * hd, e, 2) + C.matmul(b * heads, after, hd, seq) + \
            C.kernels(6, logits, flops=3) + C.kernels(6, b * after * vis) + C.sort(b, vis) + C.sort(b, count)
        n_cand, groups = self._recycle(vis, count)
        if n_cand:
            cdist = C.Work(flops=3.0 * b * n_cand * n_cand * d, bytes=4.0 * b * n_cand * (d + n_cand), launches=1)
            work = work + C.kernels(4, b * vis) + C.sort(b, vis) + C.kernels(3, b * vis) + \
                C.kernels(1, b * n_cand * d) + C.cast(b * n_cand * d, e) + cdist + C.kernels(20, b * n_cand * n_cand) + \
                C.kernels(4, b * groups * n_cand) + C.matmul(b, groups, n_cand, d) + C.matmul(b, groups, n_cand, 1) + \
                C.kernels(4, b * groups * d)
        return work

    def prepare(self, embeds, vis):
        """The raters [B, T] bool (T: the text tokens after the image)."""
        if embeds.shape[1] <= vis.stop:
            raise ReducerError("reducer 'sparsevlm' needs text tokens after the image (its raters)")
        v, t = embeds[:, vis].float(), embeds[:, vis.stop:].float()
        m = torch.bmm(v, t.transpose(1, 2)).softmax(2).mean(1)  # [B, T]
        raters = m > m.mean(1, keepdim=True)
        return raters | ~raters.any(1, keepdim=True)

    def select(self, q, k, hidden, vis, count, *, hidden_out=None, final_norm=None, prepared=None):
        if prepared is None or hidden_out is None:
            raise ReducerError("reducer 'sparsevlm' needs prepared (its raters, from prepare) and hidden_out")
        score = rater_attention(q, k, vis, prepared)  # [B, N]
        n = score.shape[1]
        kept = score.topk(count, dim=1).indices.sort(dim=1).values
        if self.recycle == 0 or count >= n:
            return kept, None, None
        dropped = torch.ones_like(score, dtype=torch.bool).scatter(1, kept, False)
        pruned = torch.argsort(dropped.to(torch.int8), dim=1, descending=True, stable=True)[:, :n - count]
        n_cand = min(n - count, int((n - count) * self.recycle) + 1)
        cand = torch.gather(pruned, 1, torch.gather(score, 1, pruned).topk(n_cand, dim=1).indices)
        h = torch.gather(hidden_out[:, vis], 1, cand[..., None].expand(-1, -1, hidden_out.shape[-1])).float()
        groups = min(n_cand, int(n_cand / self.recycle_group) + 1)
        labels = dpc_knn(h, groups)
        # one-hot [B, groups, n_cand] by comparison (F.one_hot reads its input's range on the host)
        onehot = (labels.unsqueeze(1) == torch.arange(groups, device=h.device).view(1, groups, 1)).float()
        size = onehot.sum(-1, keepdim=True)
        merged = torch.bmm(onehot, h) / (size + 1e-6)
        mean_idx = torch.bmm(onehot, cand[..., None].float()).squeeze(-1) / size.squeeze(-1)
        return kept, merged.to(hidden_out.dtype), mean_idx
