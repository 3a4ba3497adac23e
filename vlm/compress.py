"""One line to compress a transformers LLaVA: ``vlm.compress(model, "visionzip", keep=64)``.

The model object is patched in place (an instance ``forward``; ``vlm.restore(model)`` removes
it) so that its ordinary ``model.generate(**processor(images=..., text=...))`` and
``model(**inputs)`` run with the reduced visual tokens. The work is :class:`vlm.Runner`'s:

* **prefill** (a call with ``pixel_values``): ``Runner.forward`` — vision, the reducer at its
  hook (pre-projector, post-projector or in-LLM), projector, each prompt's image-placeholder run
  shrunk to its kept count, left padding, contiguous positions. It returns the logits over the
  reduced sequence (the last position only when ``logits_to_keep=1``, as ``generate`` asks; in-LLM
  reducers always give the last position) and the KV cache of the reduced sequence. The cache is
  tagged with what decoding needs: its length after the prefill, each row's next position and
  the reduced prompt's attention mask.
* **decode** (a call whose ``past_key_values`` carries that tag): ``generate`` keeps the masks and
  positions of the prompt it was given (the full placeholder run), so they are mapped onto the
  cache: ``t`` = tokens the cache received since the prefill; position ids = each row's next
  reduced position + ``t`` (+ 0..q-1); attention mask = the reduced prompt's mask followed by the
  last ``t + q`` columns of the given mask (ones when none is given); ``cache_position`` (passed
  by transformers 4.x) = the cache's length + 0..q-1. In-LLM reducers leave layers with caches of
  different lengths and no padding: no mask, as ``Runner.decode`` does.

Any other call (text only, ``inputs_embeds``, a cache this module did not fill) runs the model's
own forward unchanged.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch

import reducers

from .forward import Runner, is_in_llm
from .layerwise import per_layer_positions
from .images import Preprocess
from .loading import LoadedModel, spec_from_hf_config
from .prompts import Request, RunnerError

SUPPORTED = "transformers' LlavaForConditionalGeneration (LLaVA-1.5 layout: a CLIP-style tower with CLS, " \
            "one vision_feature_layer, vision_feature_select_strategy 'default', one image per prompt)"
POSITIONS = ("contiguous", "reduced")
_STATE = "_vtc_compression"
_CACHE_TAG = "_vtc_reduced"


class CompressError(ValueError):
    """A model, setting or input that ``vlm.compress`` cannot serve."""


@dataclass
class Compression:
    """What a compressed model carries (``vlm.compression(model)``)."""

    reducer: object | None          # the reducer instance (None: all visual tokens kept)
    name: str                        # its registered name ("none" when None)
    keep: int                        # visual tokens the LLM receives (in-LLM: from its last stage)
    visual_tokens: int               # N, the model's visual tokens per image
    seed: int                        # seeds a fresh generator per call (random reducers)
    positions: str                   # Runner.assemble's positions
    runner: Runner

    def describe(self) -> dict:
        params = self.reducer.params() if self.reducer is not None else {}
        return {"reducer": self.name, "keep": self.keep, "visual_tokens": self.visual_tokens,
                "hook": getattr(self.reducer, "hook", None), "params": params, "seed": self.seed,
                "positions": self.positions}


@dataclass
class _Tag:
    """Attached to the KV cache of a reduced prefill: what its decode steps are mapped with."""

    base: int                          # the cache's length (layer 0) right after the prefill
    next_position: torch.Tensor        # [B] the next position id of each row
    prefix_mask: torch.Tensor | None   # [B, L'] the reduced prompt's mask (None: no mask, in-LLM)
    layer_next: tuple | None = None    # (rows, layer -> row) of the layers' next ids (renumbered in-LLM layers)


def _llava_class():
    from transformers import LlavaForConditionalGeneration
    return LlavaForConditionalGeneration


def check_supported(model) -> None:
    """Refuse, naming the class and what is supported, anything but a LLaVA-1.5-style model."""
    cls = type(model)
    if not isinstance(model, _llava_class()):
        raise CompressError(f"vlm.compress does not support {cls.__module__}.{cls.__qualname__}; "
                            f"supported: {SUPPORTED}")
    cfg = model.config
    if not isinstance(cfg.vision_feature_layer, int):
        raise CompressError(f"vision_feature_layer = {cfg.vision_feature_layer!r} (several layers) is not "
                            f"supported; supported: {SUPPORTED}")
    if cfg.vision_feature_select_strategy != "default":
        raise CompressError(f"vision_feature_select_strategy = {cfg.vision_feature_select_strategy!r} is not "
                            f"supported; supported: {SUPPORTED}")


def loaded_model(model) -> LoadedModel:
    """The suite's view (:class:`vlm.LoadedModel`) of a transformers LLaVA already in memory."""
    check_supported(model)
    cfg = model.config
    spec = spec_from_hf_config(cfg, getattr(cfg, "_name_or_path", "") or type(model).__name__)
    param = next(model.parameters())
    attn = getattr(cfg.text_config, "_attn_implementation", None) or getattr(cfg, "_attn_implementation", "sdpa")
    return LoadedModel(model=model, source=str(getattr(cfg, "_name_or_path", "") or "in-memory"), spec=spec,
                       device=param.device, dtype=param.dtype, attn_implementation=attn or "sdpa",
                       image_token_id=cfg.image_token_id, visual_tokens=spec.visual_tokens,
                       preprocess=Preprocess(size=spec.vision.image_size))


def _make_reducer(reducer, params: dict):
    if reducer is None or reducer == "none":
        if params:
            raise CompressError(f"reducer parameters {', '.join(sorted(params))} given without a reducer")
        return None, "none"
    if isinstance(reducer, str):
        try:
            red = reducers.get(reducer, **params)
        except reducers.ReducerError as e:
            raise CompressError(str(e)) from None
        return red, reducer
    if isinstance(reducer, reducers.BaseReducer):
        if params:
            raise CompressError("give reducer parameters with a reducer name, not with a reducer instance")
        return reducer, reducer.name
    raise CompressError(f"reducer must be a registered name ({', '.join(reducers.available())}) or a "
                        f"reducers.BaseReducer, not {type(reducer).__name__}")


def compress(model, reducer, keep: int | None = None, *, seed: int = 0, positions: str = "contiguous",
             **params):
    """Patch ``model`` (a transformers ``LlavaForConditionalGeneration``) in place so that its
    ``generate`` and ``forward`` feed the LLM ``keep`` visual tokens per image chosen by
    ``reducer`` (a name from ``reducers.available()`` with its ``**params``, or an instance).
    ``keep`` = None or the model's visual token count keeps every token (the reducer is not
    called: exactly the model's own output). A compressed model is re-compressed cleanly (the
    previous patch is removed first). Returns the same model object; ``vlm.restore(model)`` undoes
    it."""
    check_supported(model)
    if positions not in POSITIONS:
        raise CompressError(f"positions = {positions!r} is not allowed; use one of {', '.join(POSITIONS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CompressError(f"seed = {seed!r} must be an integer")
    red, name = _make_reducer(reducer, params)
    try:
        runner = Runner(loaded_model(model))
    except RunnerError as e:
        raise CompressError(f"{e}; supported: {SUPPORTED}") from None
    n = runner.lm.visual_tokens
    if keep is None:
        keep = n
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n:
        raise CompressError(f"keep = {keep!r} is out of range; allowed: 1..{n} (this model's visual tokens "
                            "per image), or None for all")
    if is_in_llm(red):
        try:  # a layer beyond the LLM is refused now, not at the first prompt
            red.stages(keep, n, len(runner.language_model.layers))
        except reducers.ReducerError as e:
            raise CompressError(str(e)) from None
    state = Compression(reducer=red, name=name, keep=keep, visual_tokens=n, seed=seed, positions=positions,
                        runner=runner)
    restore(model)  # a compressed model is re-compressed: the previous patch goes first
    setattr(model, _STATE, state)
    model.forward = types.MethodType(_patched(type(model).forward), model)
    return model


def _patched(original):
    """A forward with the original's signature (``generate`` inspects it) that runs :func:`_forward`."""
    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        return _forward(self, *args, **kwargs)
    return forward


def restore(model):
    """Undo :func:`compress` (a model that is not compressed is returned unchanged)."""
    if getattr(model, _STATE, None) is not None:
        del model.__dict__["forward"]
        delattr(model, _STATE)
    return model


def compression(model) -> Compression | None:
    """The compression a model carries, or None."""
    return getattr(model, _STATE, None)


def _original(model):
    return types.MethodType(type(model).forward, model)


def _forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, past_key_values=None,
             inputs_embeds=None, *, labels=None, logits_to_keep=0, **kwargs):
    """The compressed model's forward: a reduced prefill, a mapped decode step, or the model's own."""
    state: Compression = getattr(self, _STATE)
    tag = getattr(past_key_values, _CACHE_TAG, None)
    if pixel_values is not None:
        if labels is not None:
            raise CompressError("a compressed model runs inference only (labels given); vlm.restore(model) to train")
        return _prefill(self, state, input_ids, pixel_values, attention_mask, past_key_values, inputs_embeds,
                        logits_to_keep, kwargs)
    if tag is not None:
        return _decode(self, tag, input_ids, attention_mask, past_key_values, inputs_embeds, logits_to_keep, kwargs)
    return _original(self)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                           logits_to_keep=logits_to_keep, **kwargs)


def _check_prompts(state: Compression, input_ids, attention_mask, pixel_values) -> None:
    """One image per prompt, its placeholder run expanded to the model's visual tokens, contiguous."""
    if input_ids is None:
        raise CompressError("a compressed model needs input_ids with pixel_values (not inputs_embeds)")
    n, image_id = state.visual_tokens, state.runner.lm.image_token_id
    if pixel_values.dim() != 4 or pixel_values.shape[0] != input_ids.shape[0]:
        raise CompressError(f"{input_ids.shape[0]} prompts but pixel_values of shape {tuple(pixel_values.shape)}; "
                            "a compressed model takes one image per prompt")
    for b in range(input_ids.shape[0]):
        where = ((input_ids[b] == image_id) & (attention_mask[b] > 0)).nonzero().flatten()
        if len(where) != n or int(where[-1] - where[0]) != n - 1:
            raise CompressError(f"prompt {b} has {len(where)} image placeholder(s)"
                                f"{'' if len(where) != n else ' not in one run'}; a compressed model takes one "
                                f"run of {n} (one image per prompt, '<image>' expanded as the processor does)")


def _prefill(self, state: Compression, input_ids, pixel_values, attention_mask, past_key_values, inputs_embeds,
             logits_to_keep, kwargs):
    from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast

    if inputs_embeds is not None:
        input_ids = None  # refused below with the reason
    if past_key_values is not None and past_key_values.get_seq_length() > 0:
        raise CompressError("pixel_values with a non-empty KV cache: a compressed model prefills each prompt once")
    for k in ("output_attentions", "output_hidden_states"):
        if kwargs.get(k):
            raise CompressError(f"{k}=True is not available from a compressed model")
    for k in ("vision_feature_layer", "vision_feature_select_strategy"):
        if kwargs.get(k) is not None and kwargs[k] != getattr(self.config, k):
            raise CompressError(f"{k} = {kwargs[k]!r} differs from the model's config; a compressed model uses "
                                f"{getattr(self.config, k)!r}")
    if input_ids is not None and attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _check_prompts(state, input_ids, attention_mask, pixel_values)
    red = state.reducer if state.keep < state.visual_tokens else None
    in_llm = is_in_llm(red)
    if in_llm and bool((attention_mask == 0).any()):
        raise CompressError(f"{state.name} runs inside the LLM and needs prompts of equal length (this batch is "
                            "padded); generate them one at a time or in batches of equal length")
    lm = state.runner.lm
    param = next(self.parameters())
    lm.device, lm.dtype = param.device, param.dtype  # the model may have moved since it was compressed
    request = Request(input_ids, attention_mask.to(torch.long), pixel_values.to(lm.device, lm.dtype),
                      lm.image_token_id)
    all_logits = not (isinstance(logits_to_keep, int) and logits_to_keep == 1) and not in_llm
    gen = torch.Generator(device=lm.device).manual_seed(state.seed)
    pre = state.runner.forward(request, red, state.keep, generator=gen, positions=state.positions,
                               all_logits=all_logits)
    logits = pre.logits if all_logits else pre.logits[:, None]
    if all_logits and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
        keep_idx = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = logits[:, keep_idx]
    cache = pre.cache
    setattr(cache, _CACHE_TAG, _Tag(base=cache.get_seq_length(), next_position=pre.next_position,
                                    prefix_mask=pre.attention_mask,
                                    layer_next=pre.extra.get("layer_next_position")))
    use_cache = kwargs.get("use_cache")
    return LlavaCausalLMOutputWithPast(logits=logits, past_key_values=cache if use_cache is not False else None)


def _decode(self, tag: _Tag, input_ids, attention_mask, past_key_values, inputs_embeds, logits_to_keep, kwargs):
    """A step after a reduced prefill: positions, mask and cache_position mapped onto the cache."""
    x = input_ids if input_ids is not None else inputs_embeds
    bsz, q = x.shape[0], x.shape[1]
    if bsz != tag.next_position.shape[0]:
        raise CompressError(f"a decode step of batch {bsz} on a cache prefilled with batch "
                            f"{tag.next_position.shape[0]}")
    if tag.prefix_mask is None and q > 1:  # layers' caches differ in length: one token at a time
        return _decode_one_by_one(self, tag, input_ids, inputs_embeds, past_key_values, logits_to_keep, kwargs)
    seen = past_key_values.get_seq_length()
    t = seen - tag.base
    dev = x.device
    step = torch.arange(q, device=dev)
    position_ids = tag.next_position.to(dev)[:, None] + t + step[None]
    mask = None
    if tag.prefix_mask is not None:
        given = attention_mask if attention_mask is not None and attention_mask.dim() == 2 \
            and attention_mask.shape[1] >= t + q else None
        tail = given[:, given.shape[1] - (t + q):] if given is not None \
            else tag.prefix_mask.new_ones(bsz, t + q)
        mask = torch.cat([tag.prefix_mask.to(dev), tail.to(dev, tag.prefix_mask.dtype)], 1)
    if kwargs.get("cache_position") is not None:  # transformers 4.x passes it in the prompt's coordinates
        kwargs["cache_position"] = seen + step
    with per_layer_positions(self.model.language_model, tag.layer_next, t):
        return _original(self)(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                               past_key_values=past_key_values, inputs_embeds=inputs_embeds,
                               logits_to_keep=logits_to_keep, **kwargs)


def _decode_one_by_one(self, tag: _Tag, input_ids, inputs_embeds, past_key_values, logits_to_keep, kwargs):
    """Several tokens after an in-LLM prefill, fed one by one (a causal mask over layers whose
    caches differ in length cannot be built); the logits of every step, cut to ``logits_to_keep``."""
    x = input_ids if input_ids is not None else inputs_embeds
    outs = []
    for i in range(x.shape[1]):
        one = (input_ids[:, i:i + 1], None) if input_ids is not None else (None, inputs_embeds[:, i:i + 1])
        outs.append(_decode(self, tag, one[0], None, past_key_values, one[1], 0, dict(kwargs)))
    logits = torch.cat([o.logits for o in outs], 1)
    if isinstance(logits_to_keep, int):
        logits = logits[:, -logits_to_keep:] if logits_to_keep else logits
    else:
        logits = logits[:, logits_to_keep]
    out = outs[-1]
    out.logits = logits
    return out
