"""Hardware and model specifications, read from data files.

Every figure lives in a TOML entry under ``costmodel/data`` with its source. A user's own
spec file (TOML or JSON holding one entry, or a table of entries) is accepted wherever a
catalog name is. Loading validates types and ranges and fails with a one-line
:class:`SpecError` that names the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"

#: dtype names a GPU may list under ``peak_ops_per_s``.
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")


class SpecError(ValueError):
    """A spec name, file or field that cannot be used."""


@dataclass(frozen=True)
class LLMViewerHardware:
    """The figures LLM-Viewer itself uses for a card (compat mode only)."""

    name: str
    bandwidth: float
    FP16: float
    INT8: float
    onchip_buffer: float
    source: str


@dataclass(frozen=True)
class GPUSpec:
    """A GPU: dense tensor peaks per dtype (ops/s), memory bandwidth (bytes/s), size, power."""

    key: str
    name: str
    peak_ops_per_s: dict[str, float]
    memory_bandwidth_bytes_per_s: float
    memory_bytes: float
    tdp_w: float
    l2_bytes: float
    flash_block_rows: int
    sources: dict[str, str]
    llm_viewer: LLMViewerHardware | None = None
    # per kernel: issued one by one by an eager framework (host dispatch + launch), and replayed
    # from a CUDA graph; a reducer's time is max(compute, memory) + launches x this
    launch_s: float = 22.5e-6
    graph_launch_s: float = 3.2e-6

    def peak_for(self, dtype: str) -> float:
        if dtype not in self.peak_ops_per_s:
            raise SpecError(
                f"GPU {self.key!r} lists no {dtype} peak; it has {sorted(self.peak_ops_per_s)}"
            )
        return self.peak_ops_per_s[dtype]


@dataclass(frozen=True)
class LLMSpec:
    """A LLaMA-style decoder: sizes in elements, counts in layers and heads."""

    key: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    source: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def gqa(self) -> bool:
        return self.num_key_value_heads != self.num_attention_heads

    def parameter_count(self) -> int:
        """Parameters (elements) including embeddings and LM head."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        q_out, kv_out = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * q_out + 2 * h * kv_out + q_out * h
        if self.attention_bias:
            attn += q_out + 2 * kv_out
        per_layer = attn + 3 * h * i + 2 * h
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.num_hidden_layers * per_layer + embed + head + h


@dataclass(frozen=True)
class VisionSpec:
    """A pre-LayerNorm ViT encoder."""

    key: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    has_cls: bool = True
    mlp: str = "gelu"
    source: str = ""

    @property
    def patch_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        return self.patch_tokens + (1 if self.has_cls else 0)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class VLMSpec:
    """A LLaVA-style VLM: vision encoder -> projector -> LLM."""

    key: str
    vision: VisionSpec
    llm: LLMSpec
    projector: str
    visual_tokens: int
    images: int = 1
    vision_layers_run: int | None = None
    image_token_id: int | None = None  # the <image> placeholder id, for runners
    source: str = ""

    @property
    def projector_dims(self) -> list[tuple[int, int]]:
        """(in, out) features of each projector linear layer."""
        if self.projector == "mlp2x_gelu":
            return [(self.vision.hidden_size, self.llm.hidden_size),
                    (self.llm.hidden_size, self.llm.hidden_size)]
        if self.projector == "linear":
            return [(self.vision.hidden_size, self.llm.hidden_size)]
        raise SpecError(f"unknown projector {self.projector!r}; allowed: mlp2x_gelu, linear")


ModelSpec = LLMSpec | VLMSpec


# --------------------------------------------------------------------------- catalogs


@cache
def _catalog(filename: str) -> dict[str, dict[str, Any]]:
    with open(DATA_DIR / filename, "rb") as f:
        return tomllib.load(f)


def gpu_names() -> list[str]:
    return sorted(_catalog("gpus.toml"))


def model_names() -> dict[str, list[str]]:
    """Catalog names by kind: ``llm``, ``vision``, ``vlm``."""
    return {
        "vlm": sorted(_catalog("vlms.toml")),
        "llm": sorted(_catalog("llms.toml")),
        "vision": sorted(_catalog("vision.toml")),
    }


def _unknown(what: str, name: str, choices: list[str]) -> SpecError:
    contains = [c for c in choices if name.lower() in c.lower()]
    close = (contains + [c for c in difflib.get_close_matches(name, choices, n=3, cutoff=0.4)
                         if c not in contains])[:3]
    hint = f"; closest: {', '.join(close)}" if close else ""
    return SpecError(f"unknown {what} {name!r}{hint}; known: {', '.join(choices)} (or a spec file path)")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise SpecError(f"cannot read spec file {str(path)!r}: {e.strerror}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text.decode())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"malformed spec file {str(path)!r}: {e}") from None
    if not isinstance(data, dict) or not data:
        raise SpecError(f"malformed spec file {str(path)!r}: expected a table of fields")
    return data


def _looks_like_path(name: str) -> bool:
    return name.endswith((".toml", ".json")) or "/" in name or "\\" in name


def _single_entry(data: dict[str, Any], path: str) -> tuple[str, dict[str, Any]]:
    """A file holds either one entry's fields, or one named entry."""
    if all(isinstance(v, dict) for v in data.values()) and len(data) == 1:
        (key, entry), = data.items()
        return key, entry
    return Path(path).stem, data


# --------------------------------------------------------------------------- validation


def _num(entry: dict, key: str, field_name: str, *, integer: bool = False,
         minimum: float = 0.0, exclusive: bool = True) -> Any:
    if field_name not in entry:
        raise SpecError(f"spec {key!r} is missing field {field_name!r}")
    value = entry[field_name]
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise SpecError(f"spec {key!r} field {field_name!r} = {value!r}: must be {kind}")
    if not math.isfinite(value) or value < minimum or (exclusive and value == minimum):
        bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
        raise SpecError(f"spec {key!r} field {field_name!r} = {value!r}: must be {bound}")
    return value


def _gpu_from_entry(key: str, e: dict[str, Any]) -> GPUSpec:
    peaks = e.get("peak_ops_per_s")
    if not isinstance(peaks, dict) or not peaks:
        raise SpecError(f"GPU spec {key!r} needs a table 'peak_ops_per_s' with dtypes {', '.join(DTYPES)}")
    for dtype in peaks:
        if dtype not in DTYPES:
            raise SpecError(f"GPU spec {key!r}: unknown dtype {dtype!r} in peak_ops_per_s; allowed: {', '.join(DTYPES)}")
        _num(peaks, key, dtype)
    sources = e.get("sources", {})
    lv = None
    if "llm_viewer" in e:
        raw = e["llm_viewer"]
        lv = LLMViewerHardware(
            name=str(raw.get("name", key)),
            bandwidth=float(_num(raw, key, "bandwidth")),
            FP16=float(_num(raw, key, "FP16")),
            INT8=float(_num(raw, key, "INT8")),
            onchip_buffer=float(_num(raw, key, "onchip_buffer")),
            source=str(raw.get("source", "")),
        )
    return GPUSpec(
        key=key,
        name=str(e.get("name", key)),
        peak_ops_per_s={k: float(v) for k, v in peaks.items()},
        memory_bandwidth_bytes_per_s=float(_num(e, key, "memory_bandwidth_bytes_per_s")),
        memory_bytes=float(_num(e, key, "memory_bytes")),
        tdp_w=float(_num(e, key, "tdp_w")),
        l2_bytes=float(e.get("l2_bytes", 0.0)),
        flash_block_rows=int(_num(e, key, "flash_block_rows", integer=True)) if "flash_block_rows" in e else 128,
        sources=dict(sources),
        llm_viewer=lv,
        **{f: float(_num(e, key, f)) for f in ("launch_s", "graph_launch_s") if f in e},
    )


_LLM_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _llm_from_entry(key: str, e: dict[str, Any]) -> LLMSpec:
    vals = {f: _num(e, key, f, integer=True) for f in _LLM_INTS}
    kv = _num(e, key, "num_key_value_heads", integer=True) if "num_key_value_heads" in e else vals["num_attention_heads"]
    if vals["hidden_size"] % vals["num_attention_heads"]:
        raise SpecError(f"spec {key!r}: hidden_size {vals['hidden_size']} is not divisible by num_attention_heads {vals['num_attention_heads']}")
    if vals["num_attention_heads"] % kv:
        raise SpecError(f"spec {key!r}: num_attention_heads {vals['num_attention_heads']} is not a multiple of num_key_value_heads {kv}")
    return LLMSpec(key=key, num_key_value_heads=kv,
                   tie_word_embeddings=bool(e.get("tie_word_embeddings", False)),
                   attention_bias=bool(e.get("attention_bias", False)),
                   source=str(e.get("source", "")), **vals)


_VISION_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")


def _vision_from_entry(key: str, e: dict[str, Any]) -> VisionSpec:
    vals = {f: _num(e, key, f, integer=True) for f in _VISION_INTS}
    if vals["image_size"] % vals["patch_size"]:
        raise SpecError(f"spec {key!r}: image_size {vals['image_size']} is not a multiple of patch_size {vals['patch_size']}")
    return VisionSpec(key=key, num_channels=int(e.get("num_channels", 3)), has_cls=bool(e.get("has_cls", True)),
                      mlp=str(e.get("mlp", "gelu")), source=str(e.get("source", "")), **vals)


def _vlm_from_entry(key: str, e: dict[str, Any]) -> VLMSpec:
    for f in ("vision", "llm"):
        if f not in e:
            raise SpecError(f"VLM spec {key!r} is missing field {f!r}")
    vision = e["vision"] if isinstance(e["vision"], dict) else None
    vision_spec = _vision_from_entry(key + ".vision", vision) if vision else _load_vision(str(e["vision"]))
    if vision_spec.patch_tokens * int(e.get("images", 1)) != e.get("visual_tokens"):
        raise SpecError(f"VLM spec {key!r}: visual_tokens = {e.get('visual_tokens')!r} but the encoder gives "
                        f"{vision_spec.patch_tokens} patches x {e.get('images', 1)} image(s)")
    llm_raw = e["llm"]
    llm = _llm_from_entry(key + ".llm", llm_raw) if isinstance(llm_raw, dict) else load_llm(str(llm_raw))
    overrides = e.get("llm_overrides", {})
    if overrides:
        unknown = set(overrides) - set(LLMSpec.__dataclass_fields__)
        if unknown:
            raise SpecError(f"VLM spec {key!r}: unknown llm_overrides {sorted(unknown)}")
        llm = replace(llm, **overrides)
    visual = _num(e, key, "visual_tokens", integer=True)
    spec = VLMSpec(key=key, vision=vision_spec, llm=llm, projector=str(e.get("projector", "mlp2x_gelu")),
                   visual_tokens=visual, images=int(_num(e, key, "images", integer=True)) if "images" in e else 1,
                   vision_layers_run=e.get("vision_layers_run"), image_token_id=e.get("image_token_id"),
                   source=str(e.get("source", "")))
    spec.projector_dims  # validates the projector name
    return spec


def _load_vision(name: str) -> VisionSpec:
    cat = _catalog("vision.toml")
    if name not in cat:
        raise _unknown("vision encoder", name, sorted(cat))
    return _vision_from_entry(name, cat[name])


# --------------------------------------------------------------------------- public loaders


@cache
def _catalog_gpu(name: str) -> GPUSpec:
    return _gpu_from_entry(name, _catalog("gpus.toml")[name])


@cache
def _catalog_model(name: str) -> LLMSpec | VLMSpec:
    if name in _catalog("vlms.toml"):
        return _vlm_from_entry(name, _catalog("vlms.toml")[name])
    return load_llm(name)


def load_gpu(name_or_path: str | GPUSpec) -> GPUSpec:
    """A GPU by catalog name (``h100-sxm``) or spec file path. Catalog entries are parsed once."""
    if isinstance(name_or_path, GPUSpec):
        return name_or_path
    name = str(name_or_path)
    cat = _catalog("gpus.toml")
    if name in cat:
        return _catalog_gpu(name)
    if _looks_like_path(name) or Path(name).is_file():
        key, entry = _single_entry(_read_file(Path(name)), name)
        return _gpu_from_entry(key, entry)
    raise _unknown("GPU", name, sorted(cat))


def gpu_for_device_name(device_name: str) -> str | None:
    """The catalog key of a GPU from the name torch or NVML reports ("NVIDIA H100 80GB HBM3")."""
    for key, entry in _catalog("gpus.toml").items():
        if any(sub.lower() in device_name.lower() for sub in entry.get("device_names", [])):
            return key
    return None


def load_llm(name: str) -> LLMSpec:
    cat = _catalog("llms.toml")
    if name not in cat:
        raise _unknown("LLM", name, sorted(cat))
    return _llm_from_entry(name, cat[name])


def load_model(name_or_path: str | LLMSpec | VLMSpec) -> LLMSpec | VLMSpec:
    """An LLM or VLM by catalog name (``llama2-7b``, ``llava-1.5-7b``) or spec file path."""
    if isinstance(name_or_path, (LLMSpec, VLMSpec)):
        return name_or_path
    name = str(name_or_path)
    if name in _catalog("vlms.toml") or name in _catalog("llms.toml"):
        return _catalog_model(name)
    if _looks_like_path(name) or Path(name).is_file():
        key, entry = _single_entry(_read_file(Path(name)), name)
        kind = entry.get("kind", "vlm" if "vision" in entry else "llm")
        if kind == "vlm":
            return _vlm_from_entry(key, entry)
        if kind == "llm":
            return _llm_from_entry(key, entry)
        raise SpecError(f"spec file {name!r}: kind {kind!r} is not a model; allowed: llm, vlm")
    names = model_names()
    raise _unknown("model", name, names["vlm"] + names["llm"])
