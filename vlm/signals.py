"""The signals reducers read, captured on the forward path; one rule for which ones a reducer needs.

* vision signals, from hooked q/k projections of the vision tower's feature layer (so the tower
  stays on SDPA): ``cls_attention`` [B, N] (the CLS query's attention to each patch, heads
  averaged) and ``vision_keys`` [B, N, Dv] (the patches' keys);
* tower signals for pre-projector reducers (CLS at index 0 of 1 + N rows, as the official
  methods read them): ``tower_cls_attention`` [B, 1+N] (the feature layer's attention
  probabilities, CLS query row, heads averaged, CLS column included), ``tower_keys``
  [B, 1+N, d] (the feature layer's k_proj output, heads averaged), ``tower_last_q`` /
  ``tower_last_k`` [B, 1+N, Dv] (the last layer's q_proj / k_proj outputs, full width);
* text signals, for cross-modal saliency: ``text_embeds`` [B, T, D] (the prompt without the
  image run), ``text_mask`` [B, T], ``layer0`` (the first LLM layer's q/k weights and norm),
  and the positions those rows have in the unreduced sequence: ``text_positions`` [B, T] and
  ``visual_start`` [B] (the image run's first position), for scores with rotary positions.
"""

from __future__ import annotations

import torch

from .prompts import Request

VISION_SIGNALS = ("cls_attention", "vision_keys", "tower_cls_attention", "tower_keys")
LAST_LAYER_SIGNALS = ("tower_last_q", "tower_last_k", "tower_last_cls_attention")
TEXT_SIGNALS = ("text_embeds", "layer0", "text_mask", "text_positions", "visual_start")


def needed_signals(reducer) -> tuple[str, ...]:
    """The signals to capture for a reducer: its required ones, and for saliency methods the
    text embeddings and first-layer weights (their optional route). In-LLM methods read the
    LLM's own q/k/hidden, computed by the layer-by-layer prefill: nothing to capture."""
    if reducer is None or reducer.hook == "in-llm":
        return ()
    wanted = list(reducer.signals)
    if "tower_last_k" in wanted and "tower_last_q" in reducer.optional_signals:
        wanted.append("tower_last_q")
    if "text_embeds" in reducer.optional_signals:
        wanted += list(TEXT_SIGNALS)
    if "vision_keys" in reducer.optional_signals:
        wanted.append("vision_keys")
    return tuple(dict.fromkeys(wanted))


def vision_tower_layers(model):
    tower = model.model.vision_tower
    return getattr(tower, "vision_model", tower).encoder.layers


def hook_feature_layer(model, feature_layer: int, captured: dict, last_layer: bool = False) -> list:
    """Hooks on the feature layer's q/k projections (and the last layer's, when asked) writing
    into ``captured``; returns them."""
    layers = vision_tower_layers(model)
    # hidden_states[f] is the output of layer f - 1 (index 0 is the embeddings); for a negative f,
    # hidden_states[f] comes out of layers[f]
    attn = layers[feature_layer if feature_layer < 0 else feature_layer - 1].self_attn
    captured["heads"] = attn.num_heads if hasattr(attn, "num_heads") else attn.config.num_attention_heads
    captured["scale"] = attn.scale
    hooks = [attn.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o)),
             attn.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o))]
    if last_layer:
        last = layers[-1].self_attn
        hooks += [last.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("last_q", o)),
                  last.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("last_k", o))]
    return hooks


def vision_signals(captured: dict) -> dict:
    """CLS -> patch attention (heads averaged) and patch keys, from the captured q/k."""
    if "q" not in captured:
        return {}
    q, k = captured["q"].float(), captured["k"].float()  # [B, T, Dv], T = 1 + N
    b, t, dv = k.shape
    h = captured["heads"]
    d = dv // h
    qc = q[:, :1].view(b, 1, h, d).transpose(1, 2)  # [B, H, 1, d]
    kh = k.view(b, t, h, d).transpose(1, 2)          # [B, H, T, d]
    att = (torch.matmul(qc, kh.transpose(-1, -2)) * captured["scale"]).softmax(-1)  # over all T keys
    out = {"cls_attention": att[:, :, 0, 1:].mean(1), "vision_keys": k[:, 1:],
           "tower_cls_attention": att[:, :, 0, :].mean(1), "tower_keys": kh.mean(1)}
    if "last_q" in captured:
        out["tower_last_q"], out["tower_last_k"] = captured["last_q"].float(), captured["last_k"].float()
    return out


def layer_weights(language_model, index: int = 0) -> dict:
    """One decoder layer's q/k projections and input norm, as the saliency score takes them
    (the reducers use layer 0; ``vtc saliency`` any layer)."""
    layer = language_model.layers[index]
    attn, cfg = layer.self_attn, language_model.config
    rope = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 1e4)
    out = {"q_weight": attn.q_proj.weight, "k_weight": attn.k_proj.weight, "norm_weight": layer.input_layernorm.weight,
           "norm_eps": float(getattr(layer.input_layernorm, "variance_epsilon", cfg.rms_norm_eps)),
           "num_heads": cfg.num_attention_heads, "num_kv_heads": cfg.num_key_value_heads, "rope_theta": float(rope)}
    if attn.q_proj.bias is not None:
        out["q_bias"], out["k_bias"] = attn.q_proj.bias, attn.k_proj.bias
    return out


def layer0_weights(language_model) -> dict:
    """The first decoder layer's q/k projections and input norm, as the saliency reducers take them."""
    return layer_weights(language_model, 0)


def text_rows(request: Request):
    """Where the non-image tokens are: their indices in ``request.input_ids`` [B, T] (in order,
    padded at the end), validity [B, T], their positions in the unreduced sequence [B, T]
    (0 at each sample's first real token, as the forward path numbers them) and the image
    run's first position [B]."""
    real = request.attention_mask > 0
    text_mask = (~request.image_mask) & real
    lengths = text_mask.sum(1)
    t = int(lengths.max())
    order = torch.argsort((~text_mask).to(torch.int8), dim=1, stable=True)[:, :t]
    valid = torch.arange(t, device=order.device)[None] < lengths[:, None]
    pos = real.to(torch.long).cumsum(1) - 1
    first_image = torch.argmax(request.image_mask.to(torch.int8), dim=1)
    return order, valid, torch.gather(pos, 1, order), pos.gather(1, first_image[:, None])[:, 0]


def text_signals(language_model, request: Request) -> dict:
    """Text embeddings (the prompt without the image run), their mask and positions, and the first layer's weights."""
    order, valid, positions, visual_start = text_rows(request)
    ids = torch.gather(request.input_ids, 1, order)
    return {"text_embeds": language_model.embed_tokens(ids), "layer0": layer0_weights(language_model),
            "text_mask": valid.to(torch.long), "text_positions": positions, "visual_start": visual_start}
