"""The cross-modal saliency score (the paper's Algorithm 1), one function for every user: the
saliency reducers select with :func:`cross_modal_saliency` and ``vtc saliency`` maps it.

The layer is given as tensors (``layer0`` signal), so this module needs no model:
``{"q_weight": [H*d, D], "k_weight": [Hk*d, D], "norm_weight": [D], "norm_eps": float,
"num_heads": H, "num_kv_heads": Hk}`` plus optional ``q_bias``, ``k_bias`` and ``rope_theta``.
"""

from __future__ import annotations

import math

import torch

from .base import ReducerError

LAYER0_KEYS = ("q_weight", "k_weight", "norm_weight", "num_heads", "num_kv_heads")


def _rms_norm(x, weight, eps):
    x32 = x.to(torch.float32)
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.to(torch.float32)


def _rope(x, positions, theta):
    """Rotate-half rotary embedding (LLaMA/HF convention). x [B, H, T, d], positions [T] or [B, T]."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    ang = positions.to(torch.float32)[..., None] * inv  # [T, d/2] or [B, T, d/2]
    if ang.dim() == 3:
        ang = ang[:, None]  # [B, 1, T, d/2]: the same rotation for every head
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def check_layer0(layer0, dim: int) -> None:
    if not isinstance(layer0, dict):
        raise ReducerError(f"signal 'layer0' must be a dict of the first layer's tensors, got {type(layer0).__name__}")
    missing = [k for k in LAYER0_KEYS if k not in layer0]
    if missing:
        raise ReducerError(f"signal 'layer0' is missing {', '.join(missing)}; it needs {', '.join(LAYER0_KEYS)}")
    h, hk = layer0["num_heads"], layer0["num_kv_heads"]
    for key in ("q_weight", "k_weight"):
        w = layer0[key]
        heads = h if key == "q_weight" else hk
        if w.dim() != 2 or w.shape[1] != dim or w.shape[0] % heads:
            raise ReducerError(f"layer0[{key!r}] has shape {list(w.shape)}; expected [{'H' if heads == h else 'Hk'}*d, "
                               f"{dim}] for features of width {dim}")
    if layer0["norm_weight"].shape != (dim,):
        raise ReducerError(f"layer0['norm_weight'] has shape {list(layer0['norm_weight'].shape)}; expected [{dim}]")


def first_layer_qk(features, text_embeds, layer0, *, rope: bool = False, text_positions=None, visual_start=None):
    """Keys of the visual tokens [B, H, N, d] (KV heads repeated for GQA) and queries of the
    text tokens [B, H, T, d] at the LLM's first layer (or any layer whose weights ``layer0``
    holds), float32. With ``rope``, the image run sits at positions ``visual_start`` [B] ..
    + N - 1 and text token t at ``text_positions`` [B, T], the positions those tokens have in
    the unreduced sequence; without them (a call by hand), the image starts at 0 and the
    text follows it."""
    check_layer0(layer0, features.shape[-1])
    b, n, _ = features.shape
    t = text_embeds.shape[1]
    h, hk = int(layer0["num_heads"]), int(layer0["num_kv_heads"])
    eps = float(layer0.get("norm_eps", 1e-6))
    nw = layer0["norm_weight"]
    wq, wk = layer0["q_weight"].to(torch.float32), layer0["k_weight"].to(torch.float32)
    d = wq.shape[0] // h
    xv, xt = _rms_norm(features, nw, eps), _rms_norm(text_embeds, nw, eps)
    k = xv @ wk.T
    q = xt @ wq.T
    if layer0.get("k_bias") is not None:
        k = k + layer0["k_bias"].to(torch.float32)
    if layer0.get("q_bias") is not None:
        q = q + layer0["q_bias"].to(torch.float32)
    k = k.view(b, n, hk, d).transpose(1, 2)
    q = q.view(b, t, h, d).transpose(1, 2)
    if rope:
        dev = features.device
        start = torch.zeros(b, dtype=torch.long, device=dev) if visual_start is None else visual_start.to(dev)
        if text_positions is None:
            text_positions = start[:, None] + n + torch.arange(t, device=dev)
        theta = float(layer0.get("rope_theta", 10000.0))
        k = _rope(k, start[:, None] + torch.arange(n, device=dev), theta)
        q = _rope(q, text_positions.to(dev), theta)
    if h != hk:
        k = k.repeat_interleave(h // hk, dim=1)
    return k, q


def saliency_scores(keys: torch.Tensor, queries: torch.Tensor, text_mask: torch.Tensor | None = None):
    """Algorithm 1. keys [B, H, N, d], queries [B, H, T, d] -> saliency [B, N].

    k_v . Q_text / sqrt(d), softmax over the text dimension, max over heads, mean over the
    (unmasked) text tokens.
    """
    d = keys.shape[-1]
    logits = torch.matmul(keys.to(torch.float32), queries.to(torch.float32).transpose(-1, -2)) / math.sqrt(d)
    if text_mask is not None:
        valid = text_mask.to(torch.bool)[:, None, None, :]
        logits = logits.masked_fill(~valid, float("-inf"))
    probs = logits.softmax(-1).amax(1)  # [B, N, T]
    if text_mask is None:
        return probs.mean(-1)
    m = text_mask.to(torch.float32)
    return (probs * m[:, None, :]).sum(-1) / m.sum(-1, keepdim=True).clamp(min=1)


TEXT_CHOICES = ("all", "after_image")


def cross_modal_saliency(features, text_embeds, layer0, text_mask=None, *, rope: bool = False, text: str = "all",
                         text_positions=None, visual_start=None):
    """THE saliency score: what every saliency reducer selects with and what ``vtc saliency``
    maps, from one layer's weights (``layer0``) and that layer's input rows. features [B, N, D]
    (the image run), text_embeds [B, T, D] (the other tokens, padding masked by ``text_mask``).

    Defaults are the paper's Algorithm 1 (Sec. 3.1): no rotary positions, and Q_text from every
    non-image token of the prompt (system, question and answer cue). Options: ``rope=True``
    rotates q and k to the tokens' real positions (``text_positions`` [B, T], ``visual_start``
    [B]); ``text="after_image"`` keeps only the tokens after the image run (needs the positions).
    """
    if text not in TEXT_CHOICES:
        raise ReducerError(f"text = {text!r} is not allowed; use one of {', '.join(TEXT_CHOICES)}")
    if text == "after_image":
        if text_positions is None or visual_start is None:
            raise ReducerError("text='after_image' needs the signals 'text_positions' and 'visual_start'")
        after = text_positions > visual_start[:, None]
        text_mask = after if text_mask is None else text_mask.to(torch.bool) & after
    k, q = first_layer_qk(features, text_embeds, layer0, rope=rope, text_positions=text_positions,
                          visual_start=visual_start)
    return saliency_scores(k, q, text_mask)
