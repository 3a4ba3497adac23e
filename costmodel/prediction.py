"""One configuration's prediction: dataclasses with the per-op table (``--breakdown``, built
only when read) and the assumptions the numbers rest on. The numbers come from the same
evaluation as :func:`costmodel.predict.sweep`, on Python floats (:mod:`costmodel.engine`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from . import engine as E
from . import schedule as S
from .calibrate import Calibration
from .predict import Options, PredictError, _check_request, _resolve, evaluate, savings
from .specs import VLMSpec


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
    """Totals of one forward (``tokens``: the LLM's input tokens; ``stages``: the tokens of each
    group of layers). ``flops`` are LLM-Viewer OPs in compat mode. The request quantities
    (reducer, decode, request) exist in the corrected mode's prefill stage."""

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
    reducer_time_s: float | None = None
    reducer_flops: float | None = None
    decode_time_s: float | None = None
    request_time_s: float | None = None
    stages: list[dict] = field(default_factory=list)
    _tables: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def per_op(self) -> list[OpCost]:
        """The per-op table of the LLM's forward (computed on first access)."""
        return self._tables[0].get(self._tables[1]) if self._tables else []

    def to_dict(self, breakdown: bool = False) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d = {k: v for k, v in d.items() if v is not None}
        if breakdown:
            d["per_op"] = [asdict(o) for o in self.per_op]
        return d


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
    reducer: str | None = None
    output_tokens: int = 0

    def to_dict(self, breakdown: bool = False) -> dict:
        return {
            "model": self.model, "gpu": self.gpu, "mode": self.mode, "stage": self.stage,
            "batch": self.batch, "visual_tokens": self.visual_tokens, "text_tokens": self.text_tokens,
            "keep": self.keep, "reducer": self.reducer, "output_tokens": self.output_tokens,
            "options": asdict(self.options),
            "baseline": self.baseline.to_dict(breakdown), "reduced": self.reduced.to_dict(breakdown),
            "savings": dict(self.savings), "assumptions": list(self.assumptions),
        }


def assumptions(spec, opts: Options, calibration: Calibration | None = None, reducer=None,
                output_tokens: int = 0) -> list[str]:
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
    return out + _request_assumptions(opts, calibration, reducer, output_tokens)


def _request_assumptions(opts: Options, calibration, reducer, output_tokens: int) -> list[str]:
    out = []
    if reducer is not None:
        name, hook = S.reducer_name(reducer), S.hook(reducer)
        where = {"in-llm": "its own schedule: each group of layers costed at its own length, its KV cache too",
                 "pre-projector": "keep tokens from layer 0 on; the projector runs on the kept tokens only",
                 "post-projector": "keep tokens from layer 0 on"}[hook]
        out.append(f"reducer {name} ({hook}): the LLM runs on {where}")
        if hasattr(reducer, "cost"):
            fitted = calibration is not None and calibration.launch_s is not None
            out.append(f"reducer {name}'s own time: max(its FLOPs / fp32 peak, its bytes / bandwidth) + its kernel "
                       "launches x a per-launch time (" + ("fitted by vtc validate" if fitted else
                                                            "the GPU spec's first guess, costmodel/data/gpus.toml")
                       + ("; replayed from a CUDA graph unless it synchronises with the host" if opts.cuda_graphs
                          else "; eager") + "); in time to first token and energies")
        else:
            out.append(f"reducer {name} has no cost model (no cost() method): its own time is counted as 0")
    if output_tokens:
        out.append(f"decode: {output_tokens} output tokens = the prefill's token + {max(0, output_tokens - 1)} decode "
                   "steps, each reading every weight and its layers' KV cache (+1 token per step), summed exactly"
                   + ("; each step calibrated as one LLM forward (overhead and host floor included)"
                      if calibration is not None else ""))
    return out


def _op_rows(per_op: dict) -> list[OpCost]:
    rows = []
    for name, r in per_op.items():
        op = r["op"]
        rows.append(OpCost(
            name=name, layers=op.repeat, flops=float(op.flops), memory_access_bytes=float(op.memory_access),
            load_weight_bytes=float(op.load_weight), load_act_bytes=float(op.load_act),
            store_act_bytes=float(op.store_act), load_kv_bytes=float(op.load_kv), store_kv_bytes=float(op.store_kv),
            arithmetic_intensity=float(r["arithmetic_intensity"]),
            bound="memory" if bool(r["memory_bound"]) else "compute", time_s=float(r["time_s"])))
    return rows


class _Tables:
    """The per-op tables, built on first use (``--breakdown``), by the same evaluation."""

    def __init__(self, run):
        self._run, self._tables = run, None

    def get(self, part: str) -> list[OpCost]:
        if self._tables is None:
            _, _, stacks = self._run()
            self._tables = {k: _op_rows(stacks[k]["per_op"]) for k in ("baseline", "reduced")}
        return self._tables[part]


def predict(model, gpu, *, keep=None, retention=None, batch=1, text_tokens=64, visual_tokens=None,
            options: Options | None = None, calibration: Calibration | None = None, reducer=None,
            output_tokens: int = 0) -> Prediction:
    """One configuration: baseline vs reduced costs, savings, the reduced schedule, and (on
    first access of ``.per_op``) the per-op tables. Same numbers as :func:`sweep`, evaluated
    on Python floats. ``reducer`` and ``output_tokens``: see :func:`sweep`."""
    for name, v in (("keep", keep), ("retention", retention), ("batch", batch)):
        if v is not None and np.ndim(v) > 0:
            raise PredictError(f"predict() takes one {name}; use sweep() for several")
    spec, llm, opts, gpus, V, text, k, b = _resolve(model, [gpu], visual_tokens, text_tokens, keep, retention,
                                                    batch, options, scalar=True)
    out_tokens = _check_request(opts, reducer, output_tokens)
    hw = E.hardware(gpus, opts, calibration)
    L = llm.num_hidden_layers
    counts = S.layer_counts(reducer, k, V, L) if S.hook(reducer) == "in-llm" else None
    segs = S.segments(counts) if counts else [(0, L, float(k))]
    rcost = S.reducer_costs(reducer, spec, llm, opts, V, text, k, b) if reducer is not None else None
    proj = float(k) if S.hook(reducer) == "pre-projector" else None
    args = (spec, llm, opts, hw, V, text, float(b), segs, rcost, proj, out_tokens)
    base, red, _ = evaluate(*args)
    tables = _Tables(lambda: evaluate(*args, keep_ops=True))
    stages = S.stages_of(counts or [k] * L, text)
    cal = calibration if hw.calibrated > 0 else None
    return Prediction(
        model=spec.key, gpu=gpus[0].key, mode=opts.compat or "corrected", stage=opts.stage, batch=b,
        visual_tokens=V, text_tokens=text, keep=k, options=opts,
        baseline=_cost(base, tables, "baseline", S.stages_of([V] * L, text)),
        reduced=_cost(red, tables, "reduced", stages), savings=savings(base, red),
        assumptions=assumptions(spec, opts, cal, reducer, out_tokens),
        reducer=None if reducer is None else S.reducer_name(reducer), output_tokens=out_tokens)


def _cost(d: dict, tables: _Tables, part: str, stages: list[dict]) -> Cost:
    g = {k: float(v) for k, v in d.items()}
    return Cost(tokens=int(g.pop("tokens")), stages=stages, _tables=(tables, part), **g)
