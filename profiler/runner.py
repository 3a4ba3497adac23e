"""Running LLaVA with a reducer: vision tower -> projector -> reducer -> LLM prefill (-> decode).

The image features are computed here (vision tower hidden state at layer -2, CLS dropped,
projector), reduced from N to M, and put into a sequence whose run of image placeholders has
been shrunk to M; the LLM is then prefilled with ``inputs_embeds``. ``pixel_values`` are never
passed with a reduced count (some transformers versions would silently take a legacy path).

Signals for the reducers are captured on the way: the vision tower's keys and the CLS token's
attention at the feature layer (from hooked q/k projections, so the tower stays on SDPA), and
the first LLM layer's weights and the text embeddings for cross-modal saliency.

In-LLM methods (``fastv``, ``dart``) run the decoder layers one by one and drop visual tokens
from the hidden states at layer K; the attention rows they need are computed from that layer's
q/k, so every layer stays on the model's attention implementation.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import reducers
from reducers import Reduction

from .models import LoadedModel

VISION_SIGNALS = ("cls_attention", "vision_keys")
TEXT_SIGNALS = ("text_embeds", "layer0", "text_mask")


class RunnerError(ValueError):
    """A request the runner cannot serve."""


@dataclass
class Request:
    """One batch of prompts, each with one image placeholder run of ``visual_tokens`` ids."""

    input_ids: torch.Tensor       # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    pixel_values: torch.Tensor    # [B, 3, H, W]
    image_token_id: int

    @property
    def image_mask(self) -> torch.Tensor:
        return self.input_ids == self.image_token_id


@dataclass
class Prefill:
    logits: torch.Tensor               # [B, V] logits of the last position
    cache: object                      # the KV cache (whatever the model returned)
    next_position: torch.Tensor        # [B] position id of the next token
    attention_mask: torch.Tensor | None  # [B, L'] mask of what is cached (None: unpadded)
    llm_tokens: int                    # sequence length the LLM prefilled (longest sample)
    extra: dict = field(default_factory=dict)


def _vision_tower_layers(model):
    tower = model.model.vision_tower
    return getattr(tower, "vision_model", tower).encoder.layers


def _language_model(model):
    return model.model.language_model


def synthetic_prompt(lm: LoadedModel, text_tokens: int, batch: int = 1, seed: int = 0) -> list[list[int]]:
    """Prompt ids for a model without a tokenizer: BOS, a few tokens, the image run, the rest.

    Timing depends on the count, not the ids; ids are seeded and never the image token.
    """
    if text_tokens < 2:
        raise RunnerError(f"text_tokens = {text_tokens} is out of range; allowed: >= 2 (BOS + at least one)")
    vocab = lm.spec.llm.vocab_size
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        ids = torch.randint(3, vocab - 1, (text_tokens,), generator=g)
        ids[ids == lm.image_token_id] = 3
        ids[0] = 1
        prefix = min(5, text_tokens - 1)
        out.append(ids[:prefix].tolist() + [lm.image_token_id] * lm.visual_tokens + ids[prefix:].tolist())
    return out


def template_prompt(lm: LoadedModel, question: str) -> list[int]:
    """LLaVA-1.5 conversation template, tokenised, with the image run expanded."""
    if lm.tokenizer is None:
        raise RunnerError("this model has no tokenizer; use a checkpoint folder with one, or a synthetic prompt")
    tok = lm.tokenizer
    before = tok("USER: ", add_special_tokens=True)["input_ids"]
    after = tok("\n" + question + " ASSISTANT:", add_special_tokens=False)["input_ids"]
    return before + [lm.image_token_id] * lm.visual_tokens + after


def make_request(lm: LoadedModel, prompts: list[list[int]], pixel_values: torch.Tensor) -> Request:
    """Left-pad prompts into a batch (generation pads on the left)."""
    if len(prompts) != pixel_values.shape[0]:
        raise RunnerError(f"{len(prompts)} prompts but {pixel_values.shape[0]} images")
    for p in prompts:
        n_img = sum(1 for t in p if t == lm.image_token_id)
        if n_img != lm.visual_tokens:
            raise RunnerError(f"a prompt has {n_img} image placeholders; expected one run of {lm.visual_tokens}")
    length = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = torch.tensor(p)
        mask[i, length - len(p):] = 1
    return Request(ids.to(lm.device), mask.to(lm.device), pixel_values.to(lm.device, lm.dtype), lm.image_token_id)


class Runner:
    """Phases of one request, callable one by one so the profiler can time each."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.model = lm.model
        cfg = self.model.config
        self.feature_layer = cfg.vision_feature_layer
        if not isinstance(self.feature_layer, int):
            raise RunnerError("only a single vision_feature_layer is supported")
        self.select = cfg.vision_feature_select_strategy

    # ------------------------------------------------------------------ vision + projector

    def vision(self, pixel_values: torch.Tensor, signals: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict]:
        """Vision tower -> hidden state at the feature layer, CLS dropped. Returns it [B, N, Dv] and the
        raw q/k of that layer's attention when vision signals are wanted."""
        captured: dict = {}
        hooks = []
        if any(s in VISION_SIGNALS for s in signals):
            layers = _vision_tower_layers(self.model)
            # hidden_states[f] is the output of layer f - 1 (index 0 is the embeddings); for a
            # negative f, hidden_states[f] comes out of layers[f]
            attn = layers[self.feature_layer if self.feature_layer < 0 else self.feature_layer - 1].self_attn
            hooks.append(attn.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o)))
            hooks.append(attn.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o)))
            captured["heads"] = attn.num_heads if hasattr(attn, "num_heads") else attn.config.num_attention_heads
            captured["scale"] = attn.scale
        try:
            out = self.model.model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        finally:
            for h in hooks:
                h.remove()
        hidden = out.hidden_states[self.feature_layer]
        if self.select == "default":
            hidden = hidden[:, 1:]
        return hidden, captured

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.model.multi_modal_projector(hidden)

    # ------------------------------------------------------------------ signals

    def vision_signals(self, captured: dict) -> dict:
        """CLS -> patch attention (heads averaged) and patch keys, from the captured q/k."""
        out = {}
        if "q" not in captured:
            return out
        q, k = captured["q"].float(), captured["k"].float()  # [B, T, Dv], T = 1 + N
        b, t, dv = k.shape
        h = captured["heads"]
        d = dv // h
        qc = q[:, :1].view(b, 1, h, d).transpose(1, 2)  # [B, H, 1, d]
        kh = k.view(b, t, h, d).transpose(1, 2)          # [B, H, T, d]
        att = (torch.matmul(qc, kh.transpose(-1, -2)) * captured["scale"]).softmax(-1)  # over all T keys
        out["cls_attention"] = att[:, :, 0, 1:].mean(1)  # [B, N]
        out["vision_keys"] = k[:, 1:]
        return out

    def text_signals(self, request: Request) -> dict:
        """Text embeddings (prompt without the image run) and the first LLM layer's weights."""
        lm = _language_model(self.model)
        text_mask = (~request.image_mask) & (request.attention_mask > 0)
        lengths = text_mask.sum(1)
        t = int(lengths.max())
        order = torch.argsort((~text_mask).to(torch.int8), dim=1, stable=True)[:, :t]
        ids = torch.gather(request.input_ids, 1, order)
        valid = torch.arange(t, device=ids.device)[None] < lengths[:, None]
        layer = lm.layers[0]
        attn = layer.self_attn
        cfg = lm.config
        layer0 = {"q_weight": attn.q_proj.weight, "k_weight": attn.k_proj.weight,
                  "norm_weight": layer.input_layernorm.weight,
                  "norm_eps": float(getattr(layer.input_layernorm, "variance_epsilon", cfg.rms_norm_eps)),
                  "num_heads": cfg.num_attention_heads, "num_kv_heads": cfg.num_key_value_heads,
                  "rope_theta": float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters.get("rope_theta", 1e4))}
        if attn.q_proj.bias is not None:
            layer0["q_bias"], layer0["k_bias"] = attn.q_proj.bias, attn.k_proj.bias
        return {"text_embeds": lm.embed_tokens(ids), "layer0": layer0, "text_mask": valid.to(torch.long)}

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
        embeds = _language_model(self.model).embed_tokens(torch.where(ids == request.image_token_id, 0, ids))
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
        for _ in range(steps - 1):
            if finished is not None and bool(finished.all()):
                break
            # in-LLM methods leave layers with caches of different lengths and no padding: no mask
            mask = None if mask is None else torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            res = self.model(input_ids=tok, attention_mask=mask, position_ids=pos, past_key_values=cache,
                             use_cache=True, return_dict=True)
            cache = res.past_key_values
            tok = res.logits[:, -1].argmax(-1, keepdim=True)
            out.append(tok)
            pos = pos + 1
            if finished is not None:
                finished = finished | (tok.squeeze(-1) == eos_token_id)
        return torch.cat(out, 1)

    # ------------------------------------------------------------------ whole requests

    def reference_logits(self, request: Request) -> torch.Tensor:
        """The model's own forward on input_ids + pixel_values, all positions (for checks)."""
        out = self.model(input_ids=request.input_ids, pixel_values=request.pixel_values,
                         attention_mask=request.attention_mask, use_cache=False, return_dict=True)
        return out.logits

    def features(self, request: Request, signals: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict]:
        hidden, captured = self.vision(request.pixel_values, signals)
        feats = self.project(hidden)
        sig = self.vision_signals(captured)
        if any(s in TEXT_SIGNALS for s in signals):
            sig.update(self.text_signals(request))
        return feats, {k: v for k, v in sig.items() if k in signals}

    def run(self, request: Request, reducer=None, keep: int | None = None, *, generator=None,
            positions: str = "contiguous", all_logits: bool = False) -> Prefill:
        """One request end to end (untimed): features, reduction, prefill."""
        if is_in_llm(reducer):
            feats, _ = self.features(request)
            red = identity_reduction(feats)
            embeds, mask, pos = self.assemble(request, red)
            return layerwise_prefill(self, reducer, embeds, mask, pos, request, keep)
        signals = needed_signals(reducer)
        feats, sig = self.features(request, signals)
        if reducer is None:
            red = identity_reduction(feats)
        else:
            red = reducer.reduce(feats, keep, generator=generator, **sig)
        embeds, mask, pos = self.assemble(request, red, positions)
        return self.prefill(embeds, mask, pos, all_logits=all_logits)


def is_in_llm(reducer) -> bool:
    return getattr(reducer, "hook", None) == "in-llm"


def get_reducer(name: str, **params):
    """A reducer by name (kept for callers of the runner; the registry is ``reducers.get``)."""
    return reducers.get(name, **params)


def all_reducer_names() -> list[str]:
    return reducers.available()


def identity_reduction(feats: torch.Tensor) -> Reduction:
    """Every token, in order, built directly (the baseline pays for no reducer)."""
    b, n, _ = feats.shape
    idx = torch.arange(n, device=feats.device).expand(b, n)
    return Reduction(features=feats, positions=idx.to(torch.float32), kept_indices=idx, assignment=idx,
                     lengths=torch.full((b,), n, dtype=torch.long, device=feats.device))


def needed_signals(reducer) -> tuple[str, ...]:
    """The signals to capture for a reducer: its required ones, and for saliency methods the
    text embeddings and first-layer weights (their optional route)."""
    if reducer is None or is_in_llm(reducer):
        return ()
    wanted = list(reducer.signals)
    if "text_embeds" in reducer.optional_signals:
        wanted += ["text_embeds", "layer0", "text_mask"]
    if "vision_keys" in reducer.optional_signals:
        wanted.append("vision_keys")
    return tuple(dict.fromkeys(wanted))


# ---------------------------------------------------------------------- in-LLM methods


def layerwise_prefill(runner: Runner, reducer, embeds, mask, pos, request: Request, keep: int) -> Prefill:
    """The decoder layer by layer, dropping visual tokens where an in-LLM reducer's stages say."""
    if bool((mask == 0).any()):
        raise RunnerError(f"{reducer.name} runs the decoder layer by layer and needs an unpadded batch "
                          "(equal prompt lengths)")
    lm = _language_model(runner.model)
    n_layers = len(lm.layers)
    n = runner.lm.visual_tokens
    stages = dict(reducer.stages(keep, n, n_layers))
    img = (request.input_ids[0][request.attention_mask[0] > 0] == request.image_token_id).nonzero().flatten()
    start = int(img[0])
    n_vis = n
    from transformers import DynamicCache
    try:
        cache = DynamicCache(config=lm.config)
    except TypeError:  # transformers 4.x
        cache = DynamicCache()
    hidden = embeds
    cos_sin = lm.rotary_emb(hidden, pos)
    eager = runner.lm.attn_implementation == "eager"
    b, dev = hidden.shape[0], hidden.device
    for i, layer in enumerate(lm.layers):
        if i in stages and stages[i] < n_vis:
            vis = slice(start, start + n_vis)
            x = layer.input_layernorm(hidden)
            q, k = _qk(layer.self_attn, x, cos_sin, lm.config)
            kept, rec_h, rec_idx = reducer.select(q, k, hidden, vis, stages[i])
            rows = torch.cat([torch.arange(start, device=dev).expand(b, -1), kept + start,
                              torch.arange(start + n_vis, hidden.shape[1], device=dev).expand(b, -1)], 1)
            gather = lambda t: torch.gather(t, 1, rows.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # noqa: E731
            new_hidden, new_pos = gather(hidden), torch.gather(pos, 1, rows)
            if rec_h is not None:  # recycled tokens go at the end of the visual block
                cut = start + kept.shape[1]
                rec_pos = torch.round(rec_idx).to(pos.dtype) + pos[:, start:start + 1]
                new_hidden = torch.cat([new_hidden[:, :cut], rec_h.to(hidden.dtype), new_hidden[:, cut:]], 1)
                new_pos = torch.cat([new_pos[:, :cut], rec_pos, new_pos[:, cut:]], 1)
            hidden, pos = new_hidden, new_pos
            n_vis = kept.shape[1] + (0 if rec_h is None else rec_h.shape[1])
            cos_sin = lm.rotary_emb(hidden, pos)
        attn_mask = _causal_mask(hidden) if eager else None
        out = layer(hidden, attention_mask=attn_mask, position_ids=pos, past_key_values=cache, use_cache=True,
                    position_embeddings=cos_sin)
        hidden = out[0] if isinstance(out, tuple) else out
    hidden = lm.norm(hidden)
    logits = runner.model.lm_head(hidden[:, -1])
    return Prefill(logits=logits, cache=cache, next_position=pos.max(1).values + 1,
                   attention_mask=None, llm_tokens=embeds.shape[1],
                   extra={"tokens_after_layer": hidden.shape[1], "visual_tokens_at_end": n_vis})


def _qk(attn, x, cos_sin, cfg):
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


def _causal_mask(hidden):
    t = hidden.shape[1]
    m = torch.full((t, t), torch.finfo(hidden.dtype).min, device=hidden.device, dtype=hidden.dtype).triu(1)
    return m[None, None].expand(hidden.shape[0], 1, t, t)
