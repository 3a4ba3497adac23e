"""The decoder layer by layer, for reducers that act inside the LLM (``hook == "in-llm"``).

The protocol is :mod:`reducers.in_llm`'s: for a stage ``(l, count)`` whose count is below the
visual block's current size, layer ``l``'s rotated q/k of the current sequence are computed
(from its input norm and projections, exactly as the layer will), the layer runs on every token
(its KV cache keeps them all), and the reducer's ``select`` names the visual rows of layer
``l``'s OUTPUT to keep; the hidden states and position ids are gathered to those rows (recycled
rows appended to the visual block; ``renumber_positions`` reducers take ids ``0..L'-1``) and
layers from ``l + 1`` on see only them. ``prepare`` runs once on the input embeddings. The layers
run on the model's attention implementation; ``--attn eager`` gives the eager variant the
published latencies used. ``prepare``, each q/k computation and each ``select`` are timed as
the ``reducer`` phase, nested in ``prefill``.
"""

from __future__ import annotations

import contextlib

import torch

from .prompts import Prefill, Request, RunnerError


def layerwise_prefill(runner, reducer, embeds, mask, pos, request: Request, keep: int, timer=None) -> Prefill:
    """The decoder layer by layer, dropping visual tokens where an in-LLM reducer's stages say.
    ``timer`` (a :class:`profiler.timing.PhaseTimer`-like object, optional) times the reducer's
    work as the ``reducer`` phase nested in ``prefill``. ``extra["visual_tokens_per_stage"]``:
    [(layer, visual tokens after its output was pruned)]."""
    if bool((mask == 0).any()):
        raise RunnerError(f"{reducer.name} runs the decoder layer by layer and needs an unpadded batch "
                          "(equal prompt lengths)")
    lm = runner.model.model.language_model
    n = runner.lm.visual_tokens
    stages = dict(reducer.stages(keep, n, len(lm.layers)))
    img = (request.input_ids[0][request.attention_mask[0] > 0] == request.image_token_id).nonzero().flatten()
    state = {"hidden": embeds, "pos": pos, "start": int(img[0]), "n_vis": n, "prepared": None}
    if any(c < n for c in stages.values()):
        with _phase(timer):
            state["prepared"] = reducer.prepare(embeds, slice(state["start"], state["start"] + n))
    cache = _new_cache(lm.config)
    cos_sin = lm.rotary_emb(embeds, pos)
    eager = runner.lm.attn_implementation == "eager"
    done, nexts, which = [], [pos.max(1).values + 1], []  # the next ids after the caches; layer -> its row
    for i, layer in enumerate(lm.layers):
        hidden = state["hidden"]
        which.append(len(nexts) - 1)
        prune = i in stages and stages[i] < state["n_vis"]
        if prune:
            with _phase(timer):
                qk = rotated_qk(layer.self_attn, layer.input_layernorm(hidden), cos_sin, lm.config)
        out = layer(hidden, attention_mask=causal_mask(hidden) if eager else None, position_ids=state["pos"],
                    past_key_values=cache, use_cache=True, position_embeddings=cos_sin)
        state["hidden"] = out[0] if isinstance(out, tuple) else out
        if prune:
            _prune(reducer, qk, hidden, lm.norm, state, stages[i], timer)
            cos_sin = lm.rotary_emb(state["hidden"], state["pos"])
            done.append((i, state["n_vis"]))
            nexts.append(state["pos"].max(1).values + 1)
    hidden = lm.norm(state["hidden"])
    logits = runner.model.lm_head(hidden[:, -1])
    extra = {"tokens_after_layer": hidden.shape[1], "visual_tokens_at_end": state["n_vis"],
             "visual_tokens_per_stage": done}
    if done and getattr(reducer, "renumber_positions", False):  # the layers' caches end at different ids
        extra["layer_next_position"] = (torch.stack(nexts), which)
    return Prefill(logits=logits, cache=cache, next_position=nexts[-1], attention_mask=None,
                   llm_tokens=embeds.shape[1], extra=extra)


@contextlib.contextmanager
def per_layer_positions(lm, layer_next, offset: int = 0):
    """While decoding after a layerwise prefill whose layers cached different position ranges
    (``renumber_positions`` reducers: layers up to the first prune hold ids ``0..L-1``, later ones
    ``0..L'-1``): layer ``i``'s new tokens take ids ``rows[which[i]] + offset + 0..q-1``, the next
    after its own cache, as SparseVLM's official decoding does (each layer its own cache length;
    officially only for one-token steps, and the suite feeds in-LLM decoding one token at a time).
    ``layer_next`` is the prefill's ``extra["layer_next_position"]``: ``(rows [stages + 1, B],
    which: layer -> row)``; None changes nothing. Yields ``at(offset)``, which moves the ids on for
    the next step; the rotary tables are computed once per row and step, with no host read."""
    if layer_next is None:
        yield lambda offset: None
        return
    rows, which = layer_next
    state = {"offset": offset, "tables": {}}

    def at(offset: int) -> None:
        state["offset"], state["tables"] = offset, {}

    def hook_for(i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            j, tables = which[i], state["tables"]
            if j not in tables:
                pos = rows[j].to(hidden.device)[:, None] + state["offset"] \
                    + torch.arange(hidden.shape[1], device=hidden.device)
                tables[j] = (pos, lm.rotary_emb(hidden, pos))
            kwargs["position_ids"], kwargs["position_embeddings"] = tables[j]
            return args, kwargs
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(lm.layers)]
    try:
        yield at
    finally:
        for h in handles:
            h.remove()


def _new_cache(config):
    from transformers import DynamicCache
    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


def _prune(reducer, qk, hidden_in, final_norm, state: dict, count: int, timer) -> None:
    """Keep ``count`` visual rows (plus recycled ones) of the layer's output, in place; ``qk``
    and ``hidden_in`` are the layer's rotated q/k and its input."""
    hidden, pos, start, n_vis = state["hidden"], state["pos"], state["start"], state["n_vis"]
    b, dev = hidden.shape[0], hidden.device
    vis = slice(start, start + n_vis)
    with _phase(timer):
        kept, rec_h, rec_idx = reducer.select(*qk, hidden_in, vis, count, hidden_out=hidden, final_norm=final_norm,
                                              prepared=state["prepared"])
    rows = torch.cat([torch.arange(start, device=dev).expand(b, -1), kept + start,
                      torch.arange(start + n_vis, hidden.shape[1], device=dev).expand(b, -1)], 1)
    new_hidden = torch.gather(hidden, 1, rows.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    new_pos = torch.gather(pos, 1, rows)
    if rec_h is not None:  # recycled tokens go at the end of the visual block
        cut = start + kept.shape[1]
        rec_pos = torch.round(rec_idx).to(pos.dtype) + pos[:, start:start + 1]
        new_hidden = torch.cat([new_hidden[:, :cut], rec_h.to(hidden.dtype), new_hidden[:, cut:]], 1)
        new_pos = torch.cat([new_pos[:, :cut], rec_pos, new_pos[:, cut:]], 1)
    if getattr(reducer, "renumber_positions", False):
        new_pos = pos[:, :new_hidden.shape[1]]
    state.update(hidden=new_hidden, pos=new_pos, n_vis=kept.shape[1] + (0 if rec_h is None else rec_h.shape[1]))


def _phase(timer):
    return timer.phase("reducer", nested_in="prefill") if timer is not None else contextlib.nullcontext()


def rotated_qk(attn, x, cos_sin, cfg):
    """Rotated q [B, H, T, d] and k [B, H, T, d] (KV heads repeated) of a LLaMA attention."""
    b, t, _ = x.shape
    d = getattr(attn, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    q = attn.q_proj(x).view(b, t, -1, d).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, -1, d).transpose(1, 2)
    cos, sin = (c.unsqueeze(1) for c in cos_sin)
    rot = lambda v: torch.cat([-v[..., d // 2:], v[..., : d // 2]], -1)  # noqa: E731
    q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    return q, k


def causal_mask(hidden):
    t = hidden.shape[1]
    m = torch.full((t, t), torch.finfo(hidden.dtype).min, device=hidden.device, dtype=hidden.dtype).triu(1)
    return m[None, None].expand(hidden.shape[0], 1, t, t)
