"""Loading LLaVA: a local checkpoint folder, or a preset built from its config with random weights.

Timing and energy do not depend on the weights' values, so ``--preset llava-1.5-7b`` measures
real latency without a download. A large preset is built on the meta device, materialised on
the target device with ``to_empty`` and a cheap init, and its buffers (rotary ``inv_freq``,
CLIP ``position_ids``) recomputed, since ``to_empty`` leaves them uninitialised: a 7B model is
ready in seconds on a GPU. The preset's geometry comes from the cost model's catalog, the one
place where a model's sizes live.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

import costmodel
from costmodel import VLMSpec

from .images import Preprocess

#: profiler preset -> cost-model VLM entry
PRESETS = {"tiny": "llava-tiny", "llava-1.5-7b": "llava-1.5-7b", "llava-1.5-13b": "llava-1.5-13b"}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


class ModelError(ValueError):
    """A model folder, preset or setting that cannot be used."""


@dataclass
class LoadedModel:
    """A LLaVA model ready to run, with what the runner needs to know about it."""

    model: torch.nn.Module
    source: str                      # "preset:NAME" or the folder path
    spec: VLMSpec                    # geometry in the cost model's terms (for predictions)
    device: torch.device
    dtype: torch.dtype
    attn_implementation: str
    image_token_id: int
    visual_tokens: int
    preprocess: Preprocess
    tokenizer: object | None = None  # a checkpoint's tokenizer; presets have none
    seed: int = 0
    info: dict = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.spec.vision.image_size // self.spec.vision.patch_size
        return side, side


def parse_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ModelError(f"dtype {name!r} is not allowed; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def hf_config(spec: VLMSpec, attn_implementation: str = "sdpa"):
    """A transformers LlavaConfig with the geometry of a cost-model VLM spec."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    v, t = spec.vision, spec.llm
    vc = CLIPVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                          num_hidden_layers=v.num_hidden_layers, num_attention_heads=v.num_attention_heads,
                          image_size=v.image_size, patch_size=v.patch_size, num_channels=v.num_channels,
                          hidden_act="quick_gelu", projection_dim=min(768, v.hidden_size))
    tc = LlamaConfig(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                     num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                     num_key_value_heads=t.num_key_value_heads, vocab_size=t.vocab_size,
                     max_position_embeddings=4096, rms_norm_eps=1e-5, attention_bias=t.attention_bias,
                     tie_word_embeddings=t.tie_word_embeddings)
    image_token = spec.image_token_id if spec.image_token_id is not None else t.vocab_size - 1
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=image_token, projector_hidden_act="gelu",
                      vision_feature_layer=-2, vision_feature_select_strategy="default",
                      image_seq_length=spec.visual_tokens)
    cfg._attn_implementation = attn_implementation
    return cfg


def parameter_bytes(spec: VLMSpec, dtype: torch.dtype) -> int:
    v = spec.vision
    per_layer = 4 * (v.hidden_size ** 2 + v.hidden_size) + 2 * v.hidden_size * v.intermediate_size \
        + v.intermediate_size + v.hidden_size + 4 * v.hidden_size
    vision = v.num_hidden_layers * per_layer + v.num_channels * v.patch_size ** 2 * v.hidden_size \
        + (v.tokens + 1) * v.hidden_size + 4 * v.hidden_size
    projector = sum(i * o + o for i, o in spec.projector_dims)
    return (spec.llm.parameter_count() + vision + projector) * torch.finfo(dtype).bits // 8


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def running_bytes(spec: VLMSpec, dtype: torch.dtype, batch: int = 1, text_tokens: int = 64) -> int:
    """The KV cache and the largest live activations of a batch's prefill (the cost model's count)."""
    p = costmodel.predict(spec, "h100-sxm", keep=spec.visual_tokens, batch=batch, text_tokens=text_tokens,
                          options=costmodel.Options(a_bits=torch.finfo(dtype).bits, w_bits=torch.finfo(dtype).bits))
    return int(p.baseline.kv_cache_bytes + p.baseline.activation_memory_bytes)


def check_memory(spec: VLMSpec, dtype: torch.dtype, device: torch.device, available: int | None = None,
                 batch: int = 1, text_tokens: int = 64) -> int:
    """Refuse before loading when the weights, the batch's KV cache and activations (+20%) do not fit."""
    weights = parameter_bytes(spec, dtype)
    running = running_bytes(spec, dtype, batch, text_tokens) if batch > 1 else 0
    need = int((weights + running) * 1.2)
    have = available_memory_bytes(device) if available is None else available
    if need > have:
        what = "weights + 20%" if not running else \
            f"weights {weights / 2**30:.1f} GiB + batch {batch}'s KV cache and activations {running / 2**30:.1f} GiB, + 20%"
        raise ModelError(f"{spec.key} in {str(dtype).replace('torch.', '')} needs about {need / 2**30:.1f} GiB on "
                         f"{device.type} ({what}), but only {have / 2**30:.1f} GiB is available; use a GPU, a smaller "
                         "batch, a smaller dtype or a smaller preset")
    return need


def _init_weights_cheaply(model: torch.nn.Module, seed: int) -> None:
    """Small random weights, unit norm scales, zero biases: finite activations, fast on any device."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:  # LayerNorm / RMSNorm scales, class embedding
                p.fill_(1.0) if "norm" in name else p.normal_(0.0, 0.02, generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)


def _restore_buffers(model: torch.nn.Module, config) -> None:
    """Recompute the non-persistent buffers that ``to_empty`` left uninitialised."""
    known = set()
    for name, module in model.named_modules():
        if hasattr(module, "inv_freq") and hasattr(module, "rope_type"):
            fresh = type(module)(config=module.config)
            module.inv_freq.copy_(fresh.inv_freq)
            if hasattr(module, "original_inv_freq"):
                module.original_inv_freq.copy_(fresh.original_inv_freq)
            known |= {f"{name}.inv_freq", f"{name}.original_inv_freq"}
        if hasattr(module, "position_ids") and hasattr(module, "num_positions"):
            module.position_ids.copy_(torch.arange(module.num_positions, device=module.position_ids.device).expand(1, -1))
            known.add(f"{name}.position_ids")
    unknown = [n for n, _ in model.named_buffers() if n not in known]
    if unknown:
        raise ModelError(f"buffers this loader does not know how to initialise: {', '.join(unknown)} "
                         "(a transformers version with a different LLaVA layout?)")


def build_preset(name: str, *, device="cpu", dtype=None, attn_implementation: str = "sdpa", seed: int = 0, batch: int = 1,
                 available_memory: int | None = None, init: str | None = None) -> LoadedModel:
    """A LLaVA with a preset's geometry and random weights, built straight on ``device``.

    ``init``: ``library`` (transformers' own init, seeded; the tiny preset's default) or
    ``cheap`` (meta device, ``to_empty``, small normal weights; the large presets' default).
    """
    from transformers import LlavaForConditionalGeneration

    if name not in PRESETS:
        raise ModelError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)} (or --model-path DIR)")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ModelError(f"attention implementation {attn_implementation!r} is not allowed; "
                         f"use one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    device = torch.device(device)
    dtype = parse_dtype(dtype, device)
    spec = costmodel.load_model(PRESETS[name])
    check_memory(spec, dtype, device, available_memory, batch=batch)
    config = hf_config(spec, attn_implementation)
    init = init or ("library" if name == "tiny" else "cheap")
    if init not in ("library", "cheap"):
        raise ModelError(f"init = {init!r} is not allowed; use 'library' or 'cheap'")
    if init == "library":  # the library's own init, seeded, so tests can compare runs
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).to(device=device, dtype=dtype)
    else:
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(config)
        model = model.to(dtype).to_empty(device=device)  # cast on meta: no full-precision copy on the device
        _init_weights_cheaply(model, seed)
        _restore_buffers(model, config)
    model.eval()
    return LoadedModel(model=model, source=f"preset:{name}", spec=spec, device=device, dtype=dtype,
                       attn_implementation=attn_implementation, image_token_id=config.image_token_id,
                       visual_tokens=spec.visual_tokens, preprocess=Preprocess(size=spec.vision.image_size),
                       seed=seed)


def spec_from_hf_config(config, key: str) -> VLMSpec:
    """The cost model's view of a checkpoint's LlavaConfig."""
    v, t = config.vision_config, config.text_config
    vision = costmodel.VisionSpec(key=key + ".vision", hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                                  num_hidden_layers=v.num_hidden_layers, num_attention_heads=v.num_attention_heads,
                                  image_size=v.image_size, patch_size=v.patch_size,
                                  num_channels=getattr(v, "num_channels", 3), has_cls=True)
    llm = costmodel.LLMSpec(key=key + ".llm", hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                            num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                            num_key_value_heads=getattr(t, "num_key_value_heads", t.num_attention_heads),
                            vocab_size=t.vocab_size, tie_word_embeddings=bool(getattr(t, "tie_word_embeddings", False)),
                            attention_bias=bool(getattr(t, "attention_bias", False)))
    return VLMSpec(key=key, vision=vision, llm=llm, projector="mlp2x_gelu", visual_tokens=vision.patch_tokens,
                   image_token_id=config.image_token_id)


def load_folder(path: str | Path, *, device="cpu", dtype=None, attn_implementation: str = "sdpa",
                seed: int = 0, batch: int = 1) -> LoadedModel:
    """A LLaVA checkpoint from a local folder (``from_pretrained``, no network)."""
    from transformers import AutoConfig, LlavaForConditionalGeneration

    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"model folder {str(folder)!r} does not exist")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ModelError(f"model folder {str(folder)!r} has no config.json; expected a LLaVA checkpoint "
                         "saved with save_pretrained")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ModelError(f"{cfg_file}: not JSON ({e.msg})") from None
    if model_type != "llava":
        raise ModelError(f"model folder {str(folder)!r} holds a {model_type!r} model, not a LLaVA "
                         "(config.json model_type must be 'llava')")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ModelError(f"attention implementation {attn_implementation!r} is not allowed; "
                         f"use one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    device = torch.device(device)
    dtype = parse_dtype(dtype, device)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # one line per error, no loading bars in the command line's output
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    spec = spec_from_hf_config(config, folder.name)
    check_memory(spec, dtype, device, batch=batch)
    model = LlavaForConditionalGeneration.from_pretrained(
        folder, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True).to(device).eval()
    tokenizer = None
    if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return LoadedModel(model=model, source=str(folder), spec=spec, device=device, dtype=dtype,
                       attn_implementation=attn_implementation, image_token_id=config.image_token_id,
                       visual_tokens=spec.visual_tokens,
                       preprocess=Preprocess.from_model_folder(folder, spec.vision.image_size),
                       tokenizer=tokenizer, seed=seed)


def load(*, preset: str | None = None, model_path: str | None = None, **kw) -> LoadedModel:
    if (preset is None) == (model_path is None):
        raise ModelError("give exactly one of a preset or a model folder")
    return build_preset(preset, **kw) if preset else load_folder(model_path, **kw)
