"""One configuration's prediction: dataclasses with the per-op table (``--breakdown``) and the
assumptions the numbers rest on, as a view of :func:`costmodel.predict.sweep`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .calibrate import Calibration
from .predict import Options, PredictError, sweep
from .specs import VLMSpec, load_model


@dataclass
class OpCost:
    """One row of the per-op table (per layer, except ops with ``layers == 1``)."""

    name: str
    layers: int
    flops: float
    memory_access_bytes: float
    load_weight_bytes: float
    load_act_bytes: float
    store_act_bytes: float
    load_kv_bytes: float
    store_kv_bytes: float
    arithmetic_intensity: float
    bound: str
    time_s: float


@dataclass
class Cost:
    """Totals of one forward. ``flops`` are LLM-Viewer OPs in compat mode."""

    tokens: int
    flops: float
    memory_access_bytes: float
    activation_memory_bytes: float
    kv_cache_bytes: float
    weight_bytes: float
    time_s: float
    energy_j: float = 0.0
    vision_time_s: float | None = None
    projector_time_s: float | None = None
    ttft_s: float | None = None
    request_energy_j: float | None = None
    per_op: list[OpCost] = field(default_factory=list)


@dataclass
class Prediction:
    model: str
    gpu: str
    mode: str
    stage: str
    batch: int
    visual_tokens: int
    text_tokens: int
    keep: int
    options: Options
    baseline: Cost
    reduced: Cost
    savings: dict[str, float]
    assumptions: list[str]

    def to_dict(self, breakdown: bool = False) -> dict:
        def cost(c: Cost) -> dict:
            d = {k: v for k, v in asdict(c).items() if k != "per_op" and v is not None}
            if breakdown:
                d["per_op"] = [asdict(o) for o in c.per_op]
            return d
        return {
            "model": self.model, "gpu": self.gpu, "mode": self.mode, "stage": self.stage,
            "batch": self.batch, "visual_tokens": self.visual_tokens, "text_tokens": self.text_tokens,
            "keep": self.keep, "options": asdict(self.options),
            "baseline": cost(self.baseline), "reduced": cost(self.reduced),
            "savings": dict(self.savings), "assumptions": list(self.assumptions),
        }


def _op_rows(per_op: dict, gi: int, bi: int, ki: int) -> list[OpCost]:
    rows = []
    for name, r in per_op.items():
        op = r["op"]
        pick = lambda x: float(np.broadcast_to(np.asarray(x, dtype=np.float64), r["time_s"].shape)[gi, bi, ki])  # noqa: E731
        rows.append(OpCost(
            name=name, layers=op.repeat, flops=pick(op.flops), memory_access_bytes=pick(op.memory_access),
            load_weight_bytes=pick(op.load_weight), load_act_bytes=pick(op.load_act),
            store_act_bytes=pick(op.store_act), load_kv_bytes=pick(op.load_kv), store_kv_bytes=pick(op.store_kv),
            arithmetic_intensity=pick(r["arithmetic_intensity"]),
            bound="memory" if bool(np.broadcast_to(r["memory_bound"], r["time_s"].shape)[gi, bi, ki]) else "compute",
            time_s=pick(r["time_s"])))
    return rows


def assumptions(spec, opts: Options, calibration: Calibration | None = None) -> list[str]:
    """What a prediction assumes, stated in its output."""
    energy = ("energy: static power x time + energy per FLOP and per byte, "
              + (f"coefficients fitted to NVML measurements ({calibration.source}, n={calibration.n})"
                 if calibration is not None and calibration.energy is not None else
                 "first-guess coefficients from the TDP (costmodel/data/energy.toml), not calibrated"))
    timing = None
    if calibration is not None:
        err = calibration.error
        timing = (f"time calibrated for {calibration.gpu} ({calibration.dtype}): {calibration.overhead_s * 1e3:.3f} ms "
                  f"+ {calibration.compute_scale:.3g} x compute time + {calibration.memory_scale:.3g} x memory time; "
                  f"fit error {err.get('after_median_abs_rel', float('nan')):.1%} (roofline alone "
                  f"{err.get('before_median_abs_rel', float('nan')):.1%}); the LLM forward takes at least "
                  + ("no host floor (--cuda-graphs: kernels replayed from a CUDA graph)" if opts.cuda_graphs else
                     f"{calibration.host_s_per_layer * 1e3:.3f} ms per layer, the host floor of an eager runtime "
                     "(--cuda-graphs for a runtime that replays CUDA graphs)")
                  + "; vision encoder and projector: the fitted scales only")
    if opts.compat == "llm-viewer":
        return [energy] + [
            "LLM-Viewer compat mode (main @472f71f): its hardware figures, OPs (1 per multiply-add in the LM head, "
            "2 in linear layers), one-layer activation memory, LM head for the last token only, MLP activation "
            "sized by hidden_size, fused-attention output sized L*L, no causal halving; LLM only (no vision encoder)",
        ]
    out = ([timing] if timing else []) + [energy] + [
        f"compute at the GPU's dense {opts.compute_dtype()} tensor peak; memory at its datasheet bandwidth; "
        "each op takes max(flops/peak, bytes/bandwidth) (no overlap between ops, no launch overhead)",
        "FLOPs: 2 per multiply-add; RMSNorm 4, LayerNorm 7, softmax 5, SiLU*up 5, GELU 8 per element",
        ("attention: FlashAttention-style fused kernel, causal tiles skipped, K/V re-read once per "
         "query tile" if opts.flash_attention else
         "attention: materialised scores (eager/SDPA-math), full T x S square computed, mask applied after"),
        "activation memory: residual stream + the largest single op's live inputs and outputs (inference, no grad)",
        "weights: every parameter at w-bits, embeddings and LM head included",
        ("LM head on every position (all-token logits)" if opts.all_logits else
         "LM head on the last position only (generation)"),
    ]
    if isinstance(spec, VLMSpec):
        layers = spec.vision_layers_run or spec.vision.num_hidden_layers
        out.append(f"vision encoder {spec.vision.key}: {layers} layers run on {spec.images} image(s) of "
                   f"{spec.vision.tokens} tokens (HF runs the last layer although LLaVA reads layer -2); "
                   "projector on all visual tokens; post-projector reduction does not shrink either")
    return out


def predict(model, gpu, *, keep=None, retention=None, batch=1, text_tokens=64, visual_tokens=None,
            options: Options | None = None, calibration: Calibration | None = None) -> Prediction:
    """One configuration: baseline vs reduced costs, savings and the per-op tables."""
    for name, v in (("keep", keep), ("retention", retention), ("batch", batch)):
        if v is not None and np.ndim(v) > 0:
            raise PredictError(f"predict() takes one {name}; use sweep() for several")
    sw = sweep(model, [gpu], keep=keep, retention=retention, batch=batch, text_tokens=text_tokens,
               visual_tokens=visual_tokens, options=options, calibration=calibration)
    base_ops, red_ops = sw._per_op
    spec = load_model(model)

    def cost(d: dict, per_op: dict) -> Cost:
        g = {k: float(np.asarray(v)[0, 0, 0]) for k, v in d.items()}
        return Cost(tokens=int(g["tokens"]), flops=g["flops"], memory_access_bytes=g["memory_access_bytes"],
                    activation_memory_bytes=g["activation_memory_bytes"], kv_cache_bytes=g["kv_cache_bytes"],
                    weight_bytes=g["weight_bytes"], time_s=g["time_s"], energy_j=g["energy_j"],
                    vision_time_s=g.get("vision_time_s"), projector_time_s=g.get("projector_time_s"),
                    ttft_s=g.get("ttft_s"), request_energy_j=g.get("request_energy_j"),
                    per_op=_op_rows(per_op, 0, 0, 0))

    return Prediction(
        model=sw.model, gpu=sw.gpus[0], mode=sw.options.compat or "corrected", stage=sw.options.stage,
        batch=int(sw.batch[0]), visual_tokens=sw.visual_tokens, text_tokens=sw.text_tokens,
        keep=int(sw.keep[0]), options=sw.options, baseline=cost(sw.baseline, base_ops),
        reduced=cost(sw.reduced, red_ops),
        savings={k: float(np.asarray(v)[0, 0, 0]) for k, v in sw.savings.items()},
        assumptions=assumptions(spec, sw.options, calibration if sw.calibrated else None))
