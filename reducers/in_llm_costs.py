"""The schedule and cost side of the in-LLM protocol (:mod:`reducers.in_llm`), one place for
every in-LLM method: which stages the forward path runs, how many visual tokens each decoder
layer sees (what the cost model reads), and what a request costs (the forward path's work per
stage and each method's ``select_cost``, beside its ``select``)."""

from __future__ import annotations

from . import costs as C
from .params import ReducerError


class StagedCost:
    """Mixed into :class:`reducers.in_llm.InLLMReducer`; reads its ``stages``."""

    #: what a stage (l, count) prunes, by the protocol of :mod:`reducers.in_llm`: layer l's
    #: ``"output"`` (layers 0..l run on the tokens before it), or its ``"input"`` (layers l, ...
    #: run on count). The cost model reads this (and :meth:`layer_tokens`) from the reducer.
    stage_prunes = "output"

    def recycled(self, before: int, count: int) -> int:
        """Rows ``select`` appends (recycled tokens) when it keeps ``count`` of ``before``."""
        return 0

    def schedule(self, keep: int, n_visual: int, n_layers: int) -> list[tuple[int, int, int, int]]:
        """The stages the forward path runs, as it runs them (``vlm.layerwise``: layer by layer, a
        stage whose count is not below the current visual count skipped): [(layer, visual tokens
        before, count, visual tokens after, recycled included)]."""
        stages, current, out = dict(self.stages(keep, n_visual, n_layers)), n_visual, []
        for layer in range(n_layers):
            if layer in stages and stages[layer] < current:
                after = stages[layer] + self.recycled(current, stages[layer])
                out.append((layer, current, stages[layer], after))
                current = after
        return out

    def layer_tokens(self, keep: int, n_visual: int, n_layers: int) -> list[int]:
        """Visual tokens each decoder layer runs on (what the cost model reads), by the protocol:
        a stage (l, count) prunes layer l's OUTPUT, so layers 0..l run on the tokens before it and
        layers l + 1, ... on its count, recycled tokens included (FastV at K: layers 0..K-1 see all N)."""
        shift = 1 if self.stage_prunes == "output" else 0
        after = {layer + shift: a for layer, _, _, a in self.schedule(keep, n_visual, n_layers)}
        counts, current = [], n_visual
        for layer in range(n_layers):
            current = after.get(layer, current)
            counts.append(current)
        return counts

    def cost(self, n: int, d: int, keep: int, batch: int = 1, **context) -> dict:
        """What the method costs one request (:mod:`reducers.costs`): per stage it runs, the
        forward path's work that exists for it (:func:`forward_work`) and :meth:`select_cost` at
        that stage's sizes, and :meth:`prepare_cost` once. ``n``: visual tokens; ``d``: the LLM's
        width; ``context``: ``text_tokens`` (the prompt around the image), ``image_start`` (the
        tokens before it, default 35), ``heads``, ``kv_heads``, ``layers``, ``element_bytes``."""
        text, e = context.get("text_tokens") or 64, context.get("element_bytes", 4)
        heads = context.get("heads") or d // 128
        kv_heads = context.get("kv_heads") or heads
        after = text - min(context.get("image_start", 35), text - 1)  # the prompt after the image
        stages = self.schedule(keep, n, context.get("layers") or 32)
        work = self.prepare_cost(batch, n, after, d, e) if stages else C.Work()
        for _, before, count, kept in stages:
            work = work + forward_work(batch, before + text, kept + text, d, heads, kv_heads, kept > count, e) + \
                self.select_cost(batch, before + text, before, after, count, d, heads, e)
        return work.result("model", capturable=False)  # the forward path runs it eager, layer by layer

    def prepare_cost(self, b: int, vis: int, after: int, d: int, e: float = 4) -> C.Work:
        return C.Work()

    def select_cost(self, b: int, seq: int, vis: int, after: int, count: int, d: int, heads: int,
                    e: float = 4) -> C.Work:
        """One ``select`` call: q, k [b, heads, seq, d / heads], hidden [b, seq, d], a visual block
        of ``vis`` rows followed by ``after`` rows, ``count`` kept."""
        raise ReducerError(f"reducer {self.name!r} has no cost model")


def forward_work(b, seq, seq_after, d, heads, kv_heads, recycled: bool, e: float = 4) -> C.Work:
    """The forward path's work for one stage (``vlm.layerwise``): the layer's input norm, q/k
    projections and rotary on ``seq`` tokens (the layer computes them again: these are extra),
    the gathers of the ``seq_after`` kept rows, the recycled rows' placement, the new rotary
    tables. In the model's dtype."""
    hd = d // heads
    norm = C.kernels(6, b * seq * d) + C.cast(b * seq * d, e, 2)
    qk = C.matmul(1, b * seq, d, heads * hd, e) + C.matmul(1, b * seq, d, kv_heads * hd, e)
    rope = C.kernels(10, b * heads * seq * hd, e=e) + C.kernels(int(heads != kv_heads), b * heads * seq * hd, e=e)
    rows = C.kernels(5, b * seq_after, e=8) + C.kernels(1, b * seq_after * d, e=e) + C.kernels(5 * recycled, b * d)
    return norm + qk + rope + rows + C.kernels(9, b * seq_after * hd)
