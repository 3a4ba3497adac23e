"""How to count (:class:`Options`) and the error a bad prediction request raises."""

from __future__ import annotations

from dataclasses import dataclass

QUANTITIES = ("tokens", "flops", "memory_access_bytes", "activation_memory_bytes", "kv_cache_bytes",
              "weight_bytes", "time_s", "energy_j")
VLM_QUANTITIES = ("vision_time_s", "projector_time_s", "ttft_s", "request_energy_j")
STAGES = ("prefill", "decode")
COMPAT_MODES = (None, "llm-viewer")


class PredictError(ValueError):
    """A prediction request whose values are out of range."""


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    """How to count. Bits are per element; ``kv_bits=None`` means ``a_bits``."""

    stage: str = "prefill"
    w_bits: int = 16
    a_bits: int = 16
    kv_bits: int | None = None
    flash_attention: bool = False
    compat: str | None = None
    all_logits: bool = False
    cuda_graphs: bool = False  # a runtime that replays CUDA graphs pays no host launch floor

    def validated(self) -> "Options":
        if self.stage not in STAGES:
            raise PredictError(f"stage {self.stage!r} is not allowed; use one of {', '.join(STAGES)}")
        if self.compat not in COMPAT_MODES:
            raise PredictError(f"compat mode {self.compat!r} is not allowed; use 'llm-viewer' or none")
        for name in ("w_bits", "a_bits", "kv_bits"):
            v = getattr(self, name)
            if v is None and name == "kv_bits":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 32:
                raise PredictError(f"{name.replace('_', '-')} = {v!r} is out of range; allowed: integers 1..32")
        if self.compat and self.all_logits:
            raise PredictError("all_logits is not an LLM-Viewer option; drop it or the compat mode")
        return self

    @property
    def kv(self) -> int:
        return self.a_bits if self.kv_bits is None else self.kv_bits

    def compute_dtype(self) -> str:
        if self.w_bits <= 8 and self.a_bits <= 8 and self.kv <= 8:
            return "int8"
        return "bf16" if self.a_bits <= 16 else "fp32"
