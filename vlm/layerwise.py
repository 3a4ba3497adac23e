"""The decoder layer by layer, for reducers that act inside the LLM (``hook == "in-llm"``).

Before each layer named by the reducer's ``stages``, that layer's rotated q/k of the current
sequence are computed (from its input norm and projections, exactly as the layer will) and the
reducer's ``select`` names the visual rows to keep; the hidden states, position ids and rotary
tables are gathered to those rows, recycled rows appended to the visual block. The layers
themselves run on the model's attention implementation; ``--attn eager`` gives the eager
variant the published latencies used. Each ``select`` call is timed as the ``reducer`` phase,
nested in ``prefill``.
"""

from __future__ import annotations

import torch

from .prompts import Prefill, Request, RunnerError


def layerwise_prefill(runner, reducer, embeds, mask, pos, request: Request, keep: int, timer=None) -> Prefill:
    """The decoder layer by layer, dropping visual tokens where an in-LLM reducer's stages say.
    ``timer`` (a :class:`profiler.timing.PhaseTimer`-like object, optional) times each ``select``
    as the ``reducer`` phase nested in ``prefill``."""
    if bool((mask == 0).any()):
        raise RunnerError(f"{reducer.name} runs the decoder layer by layer and needs an unpadded batch "
                          "(equal prompt lengths)")
    lm = runner.model.model.language_model
    n = runner.lm.visual_tokens
    stages = dict(reducer.stages(keep, n, len(lm.layers)))
    img = (request.input_ids[0][request.attention_mask[0] > 0] == request.image_token_id).nonzero().flatten()
    state = {"hidden": embeds, "pos": pos, "start": int(img[0]), "n_vis": n}
    cache = _new_cache(lm.config)
    cos_sin = lm.rotary_emb(embeds, pos)
    eager = runner.lm.attn_implementation == "eager"
    for i, layer in enumerate(lm.layers):
        if i in stages and stages[i] < state["n_vis"]:
            _prune(reducer, layer, lm.config, cos_sin, state, stages[i], timer)
            cos_sin = lm.rotary_emb(state["hidden"], state["pos"])
        hidden = state["hidden"]
        out = layer(hidden, attention_mask=causal_mask(hidden) if eager else None, position_ids=state["pos"],
                    past_key_values=cache, use_cache=True, position_embeddings=cos_sin)
        state["hidden"] = out[0] if isinstance(out, tuple) else out
    hidden = lm.norm(state["hidden"])
    logits = runner.model.lm_head(hidden[:, -1])
    return Prefill(logits=logits, cache=cache, next_position=state["pos"].max(1).values + 1, attention_mask=None,
                   llm_tokens=embeds.shape[1],
                   extra={"tokens_after_layer": hidden.shape[1], "visual_tokens_at_end": state["n_vis"]})


def _new_cache(config):
    from transformers import DynamicCache
    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


def _prune(reducer, layer, config, cos_sin, state: dict, count: int, timer) -> None:
    """Score with this layer's q/k, keep ``count`` visual rows (plus recycled ones), in place."""
    hidden, pos, start, n_vis = state["hidden"], state["pos"], state["start"], state["n_vis"]
    b, dev = hidden.shape[0], hidden.device
    vis = slice(start, start + n_vis)
    with (timer.phase("reducer", nested_in="prefill") if timer is not None else _nullcontext()):
        q, k = rotated_qk(layer.self_attn, layer.input_layernorm(hidden), cos_sin, config)
        kept, rec_h, rec_idx = reducer.select(q, k, hidden, vis, count)
    rows = torch.cat([torch.arange(start, device=dev).expand(b, -1), kept + start,
                      torch.arange(start + n_vis, hidden.shape[1], device=dev).expand(b, -1)], 1)
    new_hidden = torch.gather(hidden, 1, rows.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    new_pos = torch.gather(pos, 1, rows)
    if rec_h is not None:  # recycled tokens go at the end of the visual block
        cut = start + kept.shape[1]
        rec_pos = torch.round(rec_idx).to(pos.dtype) + pos[:, start:start + 1]
        new_hidden = torch.cat([new_hidden[:, :cut], rec_h.to(hidden.dtype), new_hidden[:, cut:]], 1)
        new_pos = torch.cat([new_pos[:, :cut], rec_pos, new_pos[:, cut:]], 1)
    state.update(hidden=new_hidden, pos=new_pos, n_vis=kept.shape[1] + (0 if rec_h is None else rec_h.shape[1]))


def _nullcontext():
    import contextlib
    return contextlib.nullcontext()


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
