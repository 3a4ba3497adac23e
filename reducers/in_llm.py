"""Reducers that act inside the LLM: FastV, DART and SparseVLM, as pure torch on a decoder
layer's queries, keys and hidden states.

The forward path (``vlm``) runs the decoder layer by layer; before each layer ``l`` in
``stages(keep, n_visual, n_layers)`` it computes that layer's rotated q/k of the current
sequence and calls ``select(q, k, hidden, vis, count)``, which names the rows of the visual
block ``vis`` to keep (and may add recycled rows). These methods know no model.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
import torch.nn.functional as F

from . import costs as C
from .base import BaseReducer, ReducerError, merge
from .kmeans import kmeans_labels, kmeans_work
from .params import Interval, IntSequence


class InLLMReducer(BaseReducer):
    """A method that drops visual tokens inside the LLM, at one or more layers.

    ``stages(keep, n_visual, n_layers)`` -> [(layer, visual tokens left from that layer on)];
    ``select(q, k, hidden, vis, count)`` with q [B, H, T, d], k [B, H, T, d] (rotated, KV heads
    repeated), hidden [B, T, D], ``vis`` the visual block's slice of T -> (indices into the
    block [B, count], recycled hidden states [B, r, D] or None, their block-relative mean
    indices [B, r] or None). A stage whose count is not below the block's size is skipped: at
    ``keep`` = N the method is the identity.
    """

    hook = "in-llm"
    _parameter_constraints = {"layer": [Interval("int", 1, None)]}

    def __init__(self, layer: int = 2):
        self.layer = layer

    def stages(self, keep: int, n_visual: int, n_layers: int) -> list[tuple[int, int]]:
        self._check(keep, n_visual)
        if self.layer >= n_layers:
            raise ReducerError(f"reducer {self.name!r}: layer {self.layer} is out of range for a {n_layers}-layer "
                               f"LLM; allowed: 1..{n_layers - 1}")
        return [(self.layer, keep)]

    @staticmethod
    def _check(keep: int, n_visual: int) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n_visual:
            raise ReducerError(f"keep = {keep!r} is out of range; allowed: 1..{n_visual} (the number of visual tokens)")

    @abstractmethod
    def select(self, q, k, hidden, vis: slice, count: int):
        """The rows of the visual block to keep; see the class docstring."""

    def recycled(self, before: int, count: int) -> int:
        """Rows ``select`` adds back (recycled tokens) when it keeps ``count`` of ``before``."""
        return 0

    def schedule(self, keep: int, n_visual: int, n_layers: int) -> list[tuple[int, int, int, int]]:
        """The stages the forward path runs, as it runs them (``vlm.layerwise``: before layer l,
        ``select`` on that layer's q/k; a stage whose count is not below the current visual count
        is skipped): [(layer, visual tokens before, count, visual tokens after incl. recycled)]."""
        stages, current, out = dict(self.stages(keep, n_visual, n_layers)), n_visual, []
        for layer in range(n_layers):
            if layer in stages and stages[layer] < current:
                after = stages[layer] + self.recycled(current, stages[layer])
                out.append((layer, current, stages[layer], after))
                current = after
        return out

    def layer_tokens(self, keep: int, n_visual: int, n_layers: int) -> list[int]:
        """Visual tokens each decoder layer runs on (what the cost model reads): a stage at layer
        l prunes before layer l runs, so layers l, l+1, ... run on its count (recycled tokens
        included) and the layers before it on the previous one (FastV at K: layers 0..K-1 see
        all N)."""
        after = {layer: a for layer, _, _, a in self.schedule(keep, n_visual, n_layers)}
        counts, current = [], n_visual
        for layer in range(n_layers):
            current = after.get(layer, current)
            counts.append(current)
        return counts

    def cost(self, n: int, d: int, keep: int, batch: int = 1, **context) -> dict:
        """What the method costs one request (:mod:`reducers.costs`): per stage it runs, the
        forward path's work that exists for it (:func:`forward_work`) and :meth:`select_cost` at
        that stage's sizes. ``n``: visual tokens; ``d``: the LLM's width; ``context``: ``text_tokens``
        (the prompt around the image), ``image_start`` (tokens before it, default 35), ``heads``,
        ``kv_heads``, ``layers``, ``element_bytes`` (of the model's activations)."""
        text, e = context.get("text_tokens") or 64, context.get("element_bytes", 4)
        heads = context.get("heads") or d // 128
        kv_heads = context.get("kv_heads") or heads
        after = text - min(context.get("image_start", 35), text - 1)  # text after the image
        work = C.Work()
        for _, before, count, kept in self.schedule(keep, n, context.get("layers") or 32):
            work = work + forward_work(batch, before + text, kept + text, d, heads, kv_heads, kept > count, e) + \
                self.select_cost(batch, before + text, before, after, count, d, heads, e)
        return work.result("model", capturable=False)  # the forward path runs it eager, layer by layer

    def select_cost(self, b: int, seq: int, vis: int, after: int, count: int, d: int, heads: int,
                    e: float = 4) -> C.Work:
        """One ``select`` call: q, k [b, heads, seq, d / heads], hidden [b, seq, d], a visual block
        of ``vis`` rows followed by ``after`` rows, ``count`` kept."""
        raise ReducerError(f"reducer {self.name!r} has no cost model")


def forward_work(b, seq, seq_after, d, heads, kv_heads, recycled: bool, e: float = 4) -> C.Work:
    """The forward path's work for one stage (``vlm.layerwise._prune``): the layer's input norm,
    q/k projections and rotary on ``seq`` tokens (the layer computes them again: these are extra),
    the gathers of the ``seq_after`` kept rows, the recycled rows' placement, the new rotary
    tables. In the model's dtype."""
    hd = d // heads
    norm = C.kernels(6, b * seq * d) + C.cast(b * seq * d, e, 2)
    qk = C.matmul(1, b * seq, d, heads * hd, e) + C.matmul(1, b * seq, d, kv_heads * hd, e)
    rope = C.kernels(10, b * heads * seq * hd, e=e) + C.kernels(int(heads != kv_heads), b * heads * seq * hd, e=e)
    rows = C.kernels(5, b * seq_after, e=8) + C.kernels(1, b * seq_after * d, e=e) + C.kernels(5 * recycled, b * d)
    return norm + qk + rope + rows + C.kernels(9, b * seq_after * hd)


class ScoredInLLMReducer(InLLMReducer):
    """An in-LLM method that keeps the visual tokens with the highest ``scores``."""

    @abstractmethod
    def scores(self, q, k, visual: slice, hidden) -> torch.Tensor:
        """A score per visual token [B, N]; higher is kept."""

    def select(self, q, k, hidden, vis, count):
        s = self.scores(q, k, vis, hidden)
        return torch.topk(s, count, dim=1).indices.sort(dim=1).values, None, None


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


def last_token_attention(q, k, visual: slice) -> torch.Tensor:
    """The last position's attention to the visual tokens, heads averaged [B, N] (FastV's score)."""
    d = q.shape[-1]
    last = q[:, :, -1:]  # [B, H, 1, d]; causal: the last position sees every key
    att = (torch.matmul(last.float(), k.float().transpose(-1, -2)) / math.sqrt(d)).softmax(-1)
    return att[:, :, 0, visual].mean(1)


class FastV(ScoredInLLMReducer):
    """FastV: at layer K (default 2), keep the visual tokens the last token attends to most
    (attention computed from the given q/k, heads averaged); R = 1 - keep / N. The rule is
    :func:`fastv_select` (the official one); which layer's q/k feed it is the forward path's."""

    name = "fastv"

    def scores(self, q, k, visual, hidden):
        return last_token_attention(q, k, visual)

    def select(self, q, k, hidden, vis, count):
        return fastv_select(last_row_attention(q, k), vis.start, vis.stop - vis.start, count), None, None

    def select_cost(self, b, seq, vis, after, count, d, heads, e=4):  # 6 kernels (+2 casts of 16-bit q, k)
        scores = b * heads * seq
        return C.cast(scores * d // heads, e, 2) + C.matmul(b * heads, 1, d // heads, seq) + \
            C.kernels(2, scores, flops=3) + C.kernels(1, scores) + C.sort(b, vis) + C.sort(b, count)


class DART(ScoredInLLMReducer):
    """DART (duplicate-aware): at layer K, pick ``pivots`` visual tokens with the largest key
    norm, then keep the tokens least similar (cosine of hidden states) to any pivot; the
    pivots themselves are kept first."""

    name = "dart"
    _parameter_constraints = {"layer": [Interval("int", 1, None)], "pivots": [Interval("int", 1, None)]}

    def __init__(self, layer: int = 2, pivots: int = 8):
        super().__init__(layer)
        self.pivots = pivots

    def scores(self, q, k, visual, hidden):
        h = F.normalize(hidden[:, visual].float(), dim=-1)  # [B, N, D]
        knorm = k[:, :, visual].float().norm(dim=-1).mean(1)  # [B, N]
        p = min(self.pivots, h.shape[1])
        piv = torch.topk(knorm, p, dim=1).indices
        sim = torch.bmm(h, torch.gather(h, 1, piv.unsqueeze(-1).expand(-1, -1, h.shape[-1])).transpose(1, 2))
        score = -sim.max(-1).values  # least duplicated first
        return score.scatter(1, piv, float("inf"))  # pivots always kept

    def select_cost(self, b, seq, vis, after, count, d, heads, e=4):  # 13 kernels (+2 casts)
        p = min(self.pivots, vis)
        knorm = C.Work(flops=2.0 * b * vis * d, bytes=4.0 * b * vis * d, launches=1) + C.kernels(1, b * vis)
        return C.cast(2 * b * vis * d, e, 2) + C.kernels(3, b * vis * d, flops=2) + knorm + C.sort(b, vis) + \
            C.kernels(1, b * p * d) + C.matmul(b, vis, d, p) + C.kernels(3, b * vis * p) + C.sort(b, vis) + \
            C.sort(b, count)


class SparseVLM(InLLMReducer):
    """SparseVLM: text-guided visual sparsification at several layers, with token recycling.

    At each pruning layer (LLaVA-1.5: 2, 6, 15), the text tokens whose attention to the visual
    tokens is above the text tokens' mean are the raters; visual tokens are ranked by the
    raters' mean attention (heads averaged, from that layer's q/k) and the top ones kept, per the
    published schedule (64: 66/30/17, 128: 303/110/36, 192: 300/200/110 visual tokens after
    layers 2/6/15; other budgets scale the nearest schedule). Recycling: the best ``recycle``
    fraction of the pruned tokens is clustered (K-means++) into groups of about
    ``recycle_group`` tokens and each group's mean hidden state is kept as one token.
    ``layers``: the pruning layers (default 2, 6, 15; ones beyond the model are dropped).
    """

    name = "sparsevlm"
    SCHEDULE = {64: (66, 30, 17), 128: (303, 110, 36), 192: (300, 200, 110)}
    _parameter_constraints = {"layers": [IntSequence(minimum=1, increasing=True)],
                              "recycle": [Interval("real", 0, 1)], "recycle_group": [Interval("int", 1, None)]}

    def __init__(self, layers: tuple[int, ...] = (2, 6, 15), recycle: float = 0.3, recycle_group: int = 8):
        self.layers = tuple(layers)
        self.recycle = float(recycle)
        self.recycle_group = recycle_group

    def params(self) -> dict:
        return {"layers": list(self.layers), "recycle": self.recycle, "recycle_group": self.recycle_group}

    def stages(self, keep, n_visual, n_layers):
        self._check(keep, n_visual)
        nearest = min(self.SCHEDULE, key=lambda k: abs(k - keep))
        counts = [max(1, min(n_visual, round(c * keep / nearest))) for c in self.SCHEDULE[nearest]]
        out = [(layer, c) for layer, c in zip(self.layers, counts) if layer < n_layers]
        if not out:
            raise ReducerError(f"reducer 'sparsevlm': no pruning layer of {self.layers} fits a {n_layers}-layer LLM")
        return out

    def _recycle(self, before: int, count: int) -> tuple[int, int]:
        """(pruned tokens recycled, groups they merge into): the best ``recycle`` fraction of the
        ``before - count`` pruned, in groups of about ``recycle_group``."""
        n_rec = int(self.recycle * (before - count))
        return (n_rec, max(1, math.ceil(n_rec / self.recycle_group))) if n_rec >= 1 else (0, 0)

    def recycled(self, before, count):
        return self._recycle(before, count)[1]

    def select_cost(self, b, seq, vis, after, count, d, heads, e=4):  # 21 kernels; recycling: 47 + K-means
        hd, logits = d // heads, b * heads * after * seq
        relevance = C.cast(b * heads * (after + seq) * hd, e, 2) + C.matmul(b * heads, after, hd, seq) + \
            C.kernels(5, logits, flops=3) + C.kernels(2, b * after * vis) + C.kernels(11, b * after * vis)
        work = relevance + C.sort(b, vis) + C.sort(b, count)
        n_rec, groups = self._recycle(vis, count)
        if n_rec:
            work = work + C.kernels(1, b * n_rec * d, e=e) + C.cast(b * n_rec * d, e) + \
                kmeans_work(b, n_rec, d, groups) + C.merge(b, n_rec, groups, d) + C.kernels(5, b * groups * n_rec) + C.matmul(b, groups, n_rec, 1) + \
                C.kernels(2, b * groups)
        return work

    def relevance(self, q, k, vis):
        """The raters' mean attention to each visual token [B, N] (higher is kept)."""
        d = q.shape[-1]
        text_q = q[:, :, vis.stop:].float()  # [B, H, T, d]; text after the image sees every visual token
        t = text_q.shape[2]
        logits = torch.matmul(text_q, k.float().transpose(-1, -2)) / math.sqrt(d)  # [B, H, T, L]
        qpos = torch.arange(vis.stop, vis.stop + t, device=q.device)[:, None]
        logits = logits.masked_fill(torch.arange(k.shape[2], device=q.device)[None, :] > qpos, float("-inf"))
        rel = logits.softmax(-1)[..., vis].mean(1)  # [B, T, N]
        per_text = rel.mean(-1)  # [B, T]
        raters = (per_text > per_text.mean(-1, keepdim=True)) | (per_text == per_text.amax(-1, keepdim=True))
        w = raters.float()
        return (rel * w[..., None]).sum(1) / w.sum(1, keepdim=True)  # [B, N]

    def select(self, q, k, hidden, vis, count):
        score = self.relevance(q, k, vis)
        order = torch.argsort(score, dim=1, descending=True, stable=True)
        kept = order[:, :count].sort(dim=1).values
        n_rec, groups = self._recycle(score.shape[1], count)
        if n_rec < 1:
            return kept, None, None
        cand = order[:, count:count + n_rec]  # the best of the pruned
        h = torch.gather(hidden[:, vis], 1, cand.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        # hidden states are the model's: no finiteness check (it would be a host sync)
        labels = kmeans_labels(h.float(), groups, generator=torch.Generator(device=h.device).manual_seed(0))
        merged = merge(h, labels, groups)
        # one-hot [B, groups, n_rec] by comparison (F.one_hot reads its input's range on the host)
        onehot = (labels.unsqueeze(1) == torch.arange(groups, device=h.device).view(1, groups, 1)).float()
        mean_idx = torch.bmm(onehot, cand.unsqueeze(-1).float()).squeeze(-1)
        mean_idx = mean_idx / onehot.sum(-1).clamp(min=1)
        return kept, merged.features, mean_idx
