"""THE forward path of a LLaVA with a reducer: vision tower -> projector -> reducer -> LLM
prefill (-> decode), one phase at a time so the profiler can time each.

The image features are computed here (vision tower hidden state at the feature layer, CLS
dropped, projector), reduced from N to M, and put into a sequence whose run of image
placeholders has been shrunk to M; the LLM is then prefilled with ``inputs_embeds``.
``pixel_values`` are never passed with a reduced count (some transformers versions would
silently take a legacy path). In-LLM reducers run the decoder layer by layer
(:mod:`vlm.layerwise`). :meth:`Runner.forward` is the only place the phases are chained;
``vtc profile`` times it with a timer, ``vtc eval`` runs it untimed.
"""

from __future__ import annotations

import contextlib

import torch

import reducers
from reducers import Reduction

from .layerwise import layerwise_prefill, per_layer_positions
from .loading import LoadedModel
from .prompts import Prefill, Request, RunnerError
from .signals import (LAST_LAYER_SIGNALS, TEXT_SIGNALS, VISION_SIGNALS, hook_feature_layer, needed_signals,
                      text_signals, vision_signals)


class _NoTimer:
    @contextlib.contextmanager
    def phase(self, name, host=False, nested_in=None):
        yield


NO_TIMER = _NoTimer()


def is_in_llm(reducer) -> bool:
    return getattr(reducer, "hook", None) == "in-llm"


def identity_reduction(feats: torch.Tensor) -> Reduction:
    """Every token, in order, built directly (the baseline pays for no reducer)."""
    return reducers.identity(feats)


class Runner:
    """The phases of one request, callable one by one, and chained by :meth:`forward`."""

    def __init__(self, lm: LoadedModel, cuda_graphs: bool = False):
        """``cuda_graphs``: replay each post-/pre-projector reducer from a CUDA graph captured
        once per (shape, keep) (:mod:`vlm.graphs`); ``extra["reducer_execution"]`` says which ran."""
        from .graphs import GraphedReducers

        self.graphed = GraphedReducers() if cuda_graphs else None
        self.lm = lm
        self.model = lm.model
        self.language_model = lm.model.model.language_model
        cfg = self.model.config
        self.feature_layer = cfg.vision_feature_layer
        if not isinstance(self.feature_layer, int):
            raise RunnerError("only a single vision_feature_layer is supported")
        self.select_strategy = cfg.vision_feature_select_strategy

    # ------------------------------------------------------------------ vision + projector

    def vision(self, pixel_values: torch.Tensor, signals: tuple[str, ...] = (), keep_cls: bool = False):
        """Vision tower -> hidden state at the feature layer [B, N, Dv] (CLS dropped, as LLaVA
        does; kept at index 0 with ``keep_cls``, for pre-projector reducers); and the raw q/k of
        that layer's attention (and the last layer's) when signals need them."""
        captured: dict = {}
        last = any(s in LAST_LAYER_SIGNALS for s in signals)
        hooks = hook_feature_layer(self.model, self.feature_layer, captured, last_layer=last) \
            if last or any(s in VISION_SIGNALS for s in signals) else []
        try:
            out = self.model.model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        finally:
            for h in hooks:
                h.remove()
        hidden = out.hidden_states[self.feature_layer]
        if self.select_strategy == "default" and not keep_cls:
            hidden = hidden[:, 1:]
        return hidden, captured

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.model.multi_modal_projector(hidden)

    def vision_signals(self, captured: dict) -> dict:
        return vision_signals(captured)

    def text_signals(self, request: Request) -> dict:
        return text_signals(self.language_model, request)

    def features(self, request: Request, signals: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict]:
        hidden, captured = self.vision(request.pixel_values, signals)
        feats = self.project(hidden)
        return feats, self.signals(request, captured, signals)

    def signals(self, request: Request, captured: dict, wanted: tuple[str, ...]) -> dict:
        sig = self.vision_signals(captured)
        if any(s in TEXT_SIGNALS for s in wanted):
            sig.update(self.text_signals(request))
        return {k: v for k, v in sig.items() if k in wanted}

    # ------------------------------------------------------------------ sequence assembly

    def assemble(self, request: Request, red: Reduction, positions: str = "contiguous"):
        """The reduced sequence: each sample's image run shrunk to its ``red.lengths[b]`` rows.

        Returns (inputs_embeds [B, L', D], attention_mask [B, L'], position_ids [B, L']).
        ``positions``: ``contiguous`` (0, 1, 2, ... over the kept sequence), or ``reduced``
        (image rows at prefix + the reducer's position, text at its original position).
        """
        if positions not in ("contiguous", "reduced"):
            raise RunnerError(f"positions = {positions!r} is not allowed; use 'contiguous' or 'reduced'")
        dev = request.input_ids.device
        n = self.lm.visual_tokens
        seqs, poss = [], []
        for b in range(request.input_ids.shape[0]):
            keep_b = int(red.lengths[b])
            ids = request.input_ids[b][request.attention_mask[b] > 0]
            img = (ids == request.image_token_id).nonzero().flatten()
            start = int(img[0])
            new_ids = torch.cat([ids[:start], ids.new_full((keep_b,), request.image_token_id), ids[start + n:]])
            seqs.append(new_ids)
            if positions == "contiguous":
                poss.append(torch.arange(len(new_ids), device=dev))
            else:
                p_img = start + torch.round(red.positions[b, :keep_b].float()).to(torch.long)
                poss.append(torch.cat([torch.arange(start, device=dev), p_img,
                                       torch.arange(start + n, start + n + len(ids) - start - n, device=dev)]))
        length = max(len(s) for s in seqs)
        bsz = len(seqs)
        ids = torch.zeros(bsz, length, dtype=torch.long, device=dev)
        mask = torch.zeros(bsz, length, dtype=torch.long, device=dev)
        pos = torch.zeros(bsz, length, dtype=torch.long, device=dev)
        for b, (s, p) in enumerate(zip(seqs, poss)):
            ids[b, length - len(s):] = s
            mask[b, length - len(s):] = 1
            pos[b, length - len(s):] = p
        embeds = self.language_model.embed_tokens(torch.where(ids == request.image_token_id, 0, ids))
        image_rows = torch.arange(red.count, device=dev)[None, :] < red.lengths[:, None]
        feats = red.features[image_rows].to(embeds.dtype)
        embeds = embeds.masked_scatter((ids == request.image_token_id).unsqueeze(-1).expand_as(embeds), feats)
        return embeds, mask, pos

    # ------------------------------------------------------------------ prefill and decode

    def prefill(self, embeds, mask, pos, *, all_logits: bool = False) -> Prefill:
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True,
                         logits_to_keep=0 if all_logits else 1, return_dict=True)
        cache = getattr(out, "past_key_values", None)
        logits = out.logits if all_logits else out.logits[:, -1]
        return Prefill(logits=logits, cache=cache, next_position=pos.max(1).values + 1, attention_mask=mask,
                       llm_tokens=embeds.shape[1])

    def decode(self, pre: Prefill, steps: int, eos_token_id: int | None = None) -> torch.Tensor:
        """Greedy decode ``steps`` tokens after a prefill (fewer if every sequence has emitted
        ``eos_token_id``). Returns the ids [B, <= steps]."""
        tok = pre.logits.argmax(-1, keepdim=True)
        out = [tok]
        cache, mask, pos = pre.cache, pre.attention_mask, pre.next_position[:, None]
        finished = tok.squeeze(-1) == eos_token_id if eos_token_id is not None else None
        with per_layer_positions(self.language_model, pre.extra.get("layer_next_position")) as at:
            for k in range(steps - 1):
                if finished is not None and bool(finished.all()):
                    break
                # in-LLM methods leave layers with caches of different lengths and no padding: no mask
                mask = None if mask is None else torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
                at(k)
                res = self.model(input_ids=tok, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                 use_cache=True, return_dict=True)
                cache = res.past_key_values
                tok = res.logits[:, -1].argmax(-1, keepdim=True)
                out.append(tok)
                pos = pos + 1
                if finished is not None:
                    finished = finished | (tok.squeeze(-1) == eos_token_id)
        return torch.cat(out, 1)

    def reference_logits(self, request: Request) -> torch.Tensor:
        """The model's own forward on input_ids + pixel_values, all positions (for checks)."""
        out = self.model(input_ids=request.input_ids, pixel_values=request.pixel_values,
                         attention_mask=request.attention_mask, use_cache=False, return_dict=True)
        return out.logits

    # ------------------------------------------------------------------ the whole request

    @torch.inference_mode()
    def forward(self, request: Request, reducer=None, keep: int | None = None, *, generator=None,
                positions: str = "contiguous", all_logits: bool = False, timer=None, decode_steps: int = 0) -> Prefill:
        """One request end to end: vision, projector, reducer, prefill (and ``decode_steps``
        greedy tokens), each phase under ``timer.phase(name)`` when a timer is given. The returned
        prefill's ``extra`` holds ``kept_tokens`` (visual tokens the LLM received, mean over the
        batch) and, after decoding, ``decoded`` ids."""
        t = timer or NO_TIMER
        signals = needed_signals(reducer)
        pre_projector = getattr(reducer, "hook", None) == "pre-projector"
        with t.phase("vision"):
            hidden, captured = self.vision(request.pixel_values, signals, keep_cls=pre_projector)
        if pre_projector:
            red = self._reduce_tower(request, reducer, keep, hidden, captured, signals, generator, t)
        else:
            with t.phase("projector"):
                feats = self.project(hidden)
            if reducer is None or is_in_llm(reducer):
                red = identity_reduction(feats)
            else:
                with t.phase("reducer"):
                    sig = self.signals(request, captured, signals)
                    red = self._reduce(reducer, feats, keep, generator, sig)
        with t.phase("prefill"):
            embeds, mask, pos = self.assemble(request, red, positions)
            if is_in_llm(reducer):
                pre = layerwise_prefill(self, reducer, embeds, mask, pos, request, keep, timer=timer)
            else:
                pre = self.prefill(embeds, mask, pos, all_logits=all_logits)
        # in-LLM: the visual tokens left after the last stage (DART's official count, SparseVLM's recycled)
        pre.extra["kept_tokens"] = float(pre.extra["visual_tokens_at_end"]) if is_in_llm(reducer) \
            else float(red.lengths.float().mean())
        if reducer is not None:
            pre.extra["reducer_execution"], pre.extra["reducer_execution_reason"] = self._execution(reducer)
        if decode_steps:
            with t.phase("decode"):
                pre.extra["decoded"] = self.decode(pre, decode_steps)
        return pre

    run = forward  # the name callers used before the forward path was unified

    def _reduce(self, reducer, features, keep, generator, sig):
        if self.graphed is not None:
            return self.graphed.reduce(reducer, features, keep, generator=generator, **sig)
        return reducer.reduce(features, keep, generator=generator, **sig)

    def _execution(self, reducer) -> tuple[str, str | None]:
        if self.graphed is None:
            return "eager", None
        if is_in_llm(reducer):
            return "eager", "an in-LLM selection runs inside the layer-by-layer prefill; it is not captured"
        return self.graphed.execution, self.graphed.reason

    def _reduce_tower(self, request, reducer, keep, hidden, captured, signals, generator, t) -> Reduction:
        """A pre-projector reducer on the tower's features [B, 1+N, Dv] (CLS at 0), then the
        projector on the kept rows only; positions move to patch indices (CLS at 0 stays 0)."""
        with t.phase("reducer"):
            sig = self.signals(request, captured, signals)
            red = self._reduce(reducer, hidden, keep, generator, sig)
        with t.phase("projector"):
            red.features = self.project(red.features)
        red.positions = (red.positions - 1).clamp(min=0)
        return red
