"""The reducer contract: validated parameters, one ``reduce`` call, a :class:`Reduction` back.

A reducer takes the projected visual tokens ``features`` [B, N, D] (any float dtype, any
device) and a budget ``keep``, plus the signals it declares (``cls_attention``,
``vision_keys``, ...), and returns fewer tokens with enough bookkeeping to know where each
original token went. Reducers are pure functions of tensors: no model, no host round trip,
bit-identical under the same ``generator`` seed on the same device.
"""

from __future__ import annotations

import functools
import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import costs as C
from .params import Constraint, ReducerError, validate_params


@dataclass
class Reduction:
    """What a reducer returns.

    features:  [B, M, D], the input's dtype and device. Rows past ``lengths[b]`` are zero padding
               (only for methods whose count varies per sample).
    positions: [B, M] float, the original token index of a kept token, the mean original index
               of a merged group (weighted as the merge was); NaN on padding rows.
    kept_indices: [B, M] long, the original index of a token kept as is, -1 for a merged token
               or padding.
    assignment: [B, N] long, the output row each original token went into, -1 if dropped.
    weights:   [B, N] float merge weights (an output row is sum(w x) / sum(w) over the
               originals assigned to it), or None for an unweighted mean.
    lengths:   [B] long, valid output rows per sample (== M unless the count varies).
    combination: [B, M, N] float, or None. Set only by methods whose output rows are not the
               (weighted) means of their ``assignment`` groups: VisionZip's contextual token
               (target + mean of its group) and PruMerge's (x_i + attention-weighted sum of its
               32 nearest neighbours, neighbours shared between rows). Then ``features =
               combination @ input features`` exactly (computed in float32, float64 for float64
               input), ``assignment`` names each original's main row, ``positions`` are the
               combination-weighted mean indices and ``weights`` is None. Zero rows past
               ``lengths``. ``reorder`` and ``concat`` do not carry it.

    For a pre-projector reducer (``hook == "pre-projector"``) every index (positions,
    kept_indices, assignment, combination columns) counts the input rows, CLS = 0.
    """

    features: torch.Tensor
    positions: torch.Tensor
    kept_indices: torch.Tensor
    assignment: torch.Tensor
    lengths: torch.Tensor
    weights: torch.Tensor | None = None
    combination: torch.Tensor | None = None

    @property
    def count(self) -> int:
        """M, the number of output rows (the longest sample's count)."""
        return self.features.shape[1]


class BaseReducer(ABC):
    """What every registered method has: a name, a hook, the signals it reads, and parameters
    validated against ``_parameter_constraints`` on construction (one place, for every class).

    ``hook``: ``post-projector`` (between the projector and the LLM, the paper's setting;
    :class:`Reducer`), ``pre-projector`` (on the vision tower's feature-layer hidden state, CLS
    included, before the projector; a :class:`Reducer` too, see ``SIGNAL_SHAPES``) or ``in-llm``
    (inside the decoder; :class:`reducers.in_llm.InLLMReducer`). A class whose ``stage``
    parameter picks its hook reads ``hook`` per instance; on the class it is the default.
    ``signals`` are required keyword tensors; ``optional_signals`` may be given.
    ``fixed_count`` is False when the method defines its own output count.
    """

    name: ClassVar[str] = ""
    hook: ClassVar[str] = "post-projector"
    signals: ClassVar[tuple[str, ...]] = ()
    optional_signals: ClassVar[tuple[str, ...]] = ()
    fixed_count: ClassVar[bool] = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_validates", False):
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def validated_init(self, *args, **kw):
            try:
                bound = sig.bind(self, *args, **kw)
            except TypeError as e:
                raise ReducerError(f"reducer {type(self).name!r}: {e}; its parameters are "
                                   f"{', '.join(list(sig.parameters)[1:]) or 'none'}") from None
            bound.apply_defaults()
            given = {k: v for k, v in bound.arguments.items() if k != "self"}
            validate_params(f"reducer {type(self).name!r}", type(self)._parameter_constraints, given)
            init(self, *args, **kw)

        validated_init._validates = True
        cls.__init__ = validated_init

    def params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class Reducer(BaseReducer):
    """A post-projector reducer. Subclasses set ``name`` and ``signals`` and implement ``_reduce``.

    ``reduce(features, keep)`` validates its inputs (one host sync, for non-finite values in
    the features and the signals together) and returns the identity, with zero work, when
    ``keep`` equals the token count. ``_reduce``, the method itself, never synchronises with the
    host: its shapes follow from the inputs' shapes and ``keep`` alone, so it can be captured in
    a CUDA graph.
    """

    def count_from_keep(self) -> bool:
        """Whether ``keep`` sets the output count (False when a parameter makes the method
        choose its own count and ``keep`` is ignored)."""
        return True

    def cost(self, n: int, d: int, keep: int, batch: int = 1, **context) -> dict:
        """What one ``reduce`` call on features [batch, n, d] -> ``keep`` rows costs: FLOPs, bytes,
        kernel launches, host syncs (:mod:`reducers.costs`): the input check (the one sync), then
        the method (``_cost``, beside each ``_reduce``); the identity at keep = n. A method that
        sets its own count is costed at ``keep`` rows out."""
        if not 1 <= keep <= n:
            raise ReducerError(f"keep = {keep!r} is out of range; allowed: 1..{n} (the number of visual tokens)")
        e = context.get("element_bytes", 4)
        check = C.check(batch, n, d, self._tensor_signals(), e=e)
        if keep == n and self.count_from_keep():
            return (check + C.identity(batch, n)).result()
        core = self._cost(n, d, keep, batch, e, context)
        return (check + core).result(capturable=core.syncs == 0)

    def _tensor_signals(self) -> int:
        """Tensor signals the forward path passes (``vlm.signals.needed_signals``), each summed
        by the input check."""
        passed = set(self.signals) | {s for s in ("tower_last_q", "text_embeds", "vision_keys")
                                      if s in self.optional_signals}
        return sum(s in SIGNAL_SHAPES for s in passed)

    def _cost(self, n: int, d: int, keep: int, b: int, e: float, ctx: dict) -> C.Work:
        raise ReducerError(f"reducer {self.name!r} has no cost model")

    # ------------------------------------------------------------------ public entry point

    def reduce(self, features: torch.Tensor, keep: int, *, generator: torch.Generator | None = None,
               **signals) -> Reduction:
        check_features(features, finite=False)
        # one host sync for the finiteness of the features and every tensor signal together; the
        # exact checks below run only when it fails (an error, or a sum that overflowed)
        all_finite = _all_finite(features, signals)
        if not all_finite:
            _check_features_finite(features)
        n = features.shape[1]
        if isinstance(keep, bool) or not isinstance(keep, int):
            raise ReducerError(f"keep = {keep!r} must be an integer")
        if not 1 <= keep <= n:
            raise ReducerError(f"keep = {keep} is out of range; allowed: 1..{n} (the number of visual tokens)")
        missing = [s for s in self.signals if signals.get(s) is None]
        if missing:
            raise ReducerError(f"reducer {self.name!r} needs signal(s) {', '.join(missing)}; "
                               f"give them as keyword arguments to reduce()")
        unknown = set(signals) - set(self.signals) - set(self.optional_signals)
        if unknown:
            raise ReducerError(f"reducer {self.name!r} does not take signal(s) {', '.join(sorted(unknown))}; "
                               f"it takes {', '.join(self.signals + self.optional_signals) or 'none'}")
        for s, v in signals.items():
            if isinstance(v, torch.Tensor):
                check_signal(s, v, features, finite=not all_finite)
        if keep == n and self.count_from_keep():
            return identity(features)
        return self._reduce(features, keep, generator=generator, **signals)

    @abstractmethod
    def _reduce(self, features, keep, *, generator, **signals) -> Reduction:
        """The method itself, on validated inputs."""


# ---------------------------------------------------------------------- validation helpers


def check_features(features, finite: bool = True) -> None:
    """Type, rank, dtype and shape of ``features`` [B, N, D]; with ``finite``, also no NaN or inf
    (one host sync)."""
    if not isinstance(features, torch.Tensor):
        raise ReducerError(f"features must be a torch.Tensor [B, N, D], got {type(features).__name__}")
    if features.dim() != 3:
        raise ReducerError(f"features must have rank 3 [B, N, D], got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ReducerError(f"features must be floating point, got {features.dtype}")
    b, n, d = features.shape
    if b == 0 or n == 0 or d == 0:
        raise ReducerError(f"features shape {tuple(features.shape)} has an empty dimension; need B, N, D >= 1")
    if finite and not _all_finite(features, {}):
        _check_features_finite(features)


def _all_finite(features: torch.Tensor, signals: dict) -> bool:
    """Whether the features and every floating-point tensor signal with a declared shape are
    free of NaN and inf, as far as one sum of each can tell: the one host sync. NaN and inf
    propagate through a sum (inf - inf is NaN), so a finite total proves every value finite;
    a non-finite one (an error, or a sum that overflowed) sends the caller to the exact
    elementwise checks."""
    total = features.sum(dtype=torch.float32)
    for k, v in signals.items():
        if isinstance(v, torch.Tensor) and k in SIGNAL_SHAPES and v.is_floating_point():
            total = total + v.sum(dtype=torch.float32).to(features.device)
    return math.isfinite(total.item())


def _check_features_finite(features: torch.Tensor) -> None:
    if not torch.isfinite(features).all():
        bad = (~torch.isfinite(features)).nonzero()[0].tolist()
        raise ReducerError(f"features contain NaN or inf (first at [batch, token, dim] = {bad})")


#: the leading shape each tensor signal must have, given features [B, N, D]
SIGNAL_SHAPES = {
    "cls_attention": ("B", "N"),          # [B, N] CLS -> patch attention, heads averaged
    "vision_keys": ("B", "N", None),      # [B, N, Dk] vision-tower keys of the patches
    "saliency": ("B", "N"),               # [B, N] precomputed saliency scores
    "text_embeds": ("B", None, "D"),      # [B, T, D] text token embeddings (LLM input space)
    "text_queries": ("B", None, None, None),  # [B, H, T, d]
    "visual_keys": ("B", None, "N", None),    # [B, Hk, N, d]
    # Pre-projector signals (hook "pre-projector": features = the vision tower's feature-layer
    # hidden state [B, 1+P, Dv] WITH the CLS token at index 0, so "N" = 1 + P here). Layers are
    # numbered for LLaVA-1.5's CLIP ViT-L/14-336 (24 encoder layers, 16 heads of 64, P = 576,
    # features = hidden_states[-2] = the output of encoder.layers[22]).
    # [B, 1+P] row 0 (the CLS query) of encoder.layers[22]'s self-attention probabilities
    # (softmax(q k^T / sqrt(64)), HF ``attentions[-2]``), averaged over the 16 heads, over all
    # 1+P keys, the CLS column (index 0) included: each row sums to 1. VisionZip, FasterVLM.
    "tower_cls_attention": ("B", "N"),
    # [B, 1+P, 64] encoder.layers[22].self_attn.k_proj output (bias included, unscaled, on that
    # layer's layer_norm1 output), viewed as 16 heads of 64 and averaged over the heads; CLS at
    # index 0. VisionZip's ``metric`` and ToMe's metric.
    "tower_keys": ("B", "N", None),
    # [B, 1+P, Dv] the last layer's (encoder.layers[23]) self_attn.q_proj / k_proj outputs
    # (PruMerge's forward hooks): bias included, unscaled (q not multiplied by the attention
    # scale), full width Dv = 1024 (no head split), CLS at index 0. PruMerge+.
    "tower_last_q": ("B", "N", None),
    "tower_last_k": ("B", "N", None),
    # [B, 1+P] softmax over the 1+P keys of tower_last_q[:, 0] . tower_last_k^T * Dv^-0.5: a
    # single head over the full width, CLS column included (PruMerge's ``attn[:, 0]``); may be
    # given instead of tower_last_q.
    "tower_last_cls_attention": ("B", "N"),
}


def check_signal(name: str, value: torch.Tensor, features: torch.Tensor, finite: bool = True) -> None:
    """The shape of a tensor signal against ``features``; with ``finite``, also no NaN or inf
    (one host sync)."""
    spec = SIGNAL_SHAPES.get(name)
    if spec is None:
        return
    b, n, d = features.shape
    want = {"B": b, "N": n, "D": d}
    shape = tuple(value.shape)
    ok = len(shape) == len(spec) and all(s is None or shape[i] == want[s] for i, s in enumerate(spec))
    if not ok:
        pretty = "[" + ", ".join(f"{s}={want[s]}" if s else "*" for s in spec) + "]"
        raise ReducerError(f"signal {name!r} has shape {list(shape)}; expected {pretty} for features "
                           f"{list(features.shape)}")
    if finite and value.is_floating_point() and not torch.isfinite(value).all():
        raise ReducerError(f"signal {name!r} contains NaN or inf")


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        rng = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ReducerError(f"{name} = {value!r} is out of range; allowed: integers {rng}")
    return value


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value or value == float("inf"):
        raise ReducerError(f"{name} = {value!r} is out of range; allowed: a finite number > 0")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ReducerError(f"{name} = {value!r} is not allowed; use one of {', '.join(map(repr, choices))}")
    return value


# ---------------------------------------------------------------------- building results


def identity(features: torch.Tensor) -> Reduction:
    """Every token, in order (what ``keep`` = N means): no work beyond the index tensors."""
    b, n, _ = features.shape
    idx = torch.arange(n, device=features.device).expand(b, n)
    return Reduction(features=features, positions=idx.to(torch.float32), kept_indices=idx, assignment=idx,
                     lengths=torch.full((b,), n, dtype=torch.long, device=features.device))


def select(features: torch.Tensor, indices: torch.Tensor) -> Reduction:
    """A reduction that keeps ``indices`` [B, M] (original order preserved by the caller)."""
    b, n, d = features.shape
    m = indices.shape[1]
    out = torch.gather(features, 1, indices.unsqueeze(-1).expand(b, m, d))
    assignment = torch.full((b, n), -1, dtype=torch.long, device=features.device)
    assignment.scatter_(1, indices, torch.arange(m, device=features.device).expand(b, m))
    return Reduction(features=out, positions=indices.to(torch.float32), kept_indices=indices.clone(),
                     assignment=assignment, lengths=torch.full((b,), m, dtype=torch.long, device=features.device))


def merge(features: torch.Tensor, assignment: torch.Tensor, m: int, weights: torch.Tensor | None = None,
          kept_indices: torch.Tensor | None = None) -> Reduction:
    """Output row j = weighted mean of the originals with ``assignment == j``.

    ``assignment`` [B, N] in -1..m-1; computed as a one-hot matrix product (deterministic on GPU,
    unlike scatter_add) in float32, then cast back to the input dtype.
    """
    b, n, d = features.shape
    dev = features.device
    onehot = torch.zeros(b, m, n, device=dev, dtype=torch.float32)
    valid = assignment >= 0
    w = valid.to(torch.float32) if weights is None else weights.to(torch.float32) * valid  # 1 x valid: the same
    onehot.scatter_(1, assignment.clamp(min=0).unsqueeze(1), w.unsqueeze(1))
    mass = onehot.sum(-1)  # [B, m]
    denom = mass.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)
    out = torch.bmm(onehot, features.to(torch.float32)) / denom
    pos_idx = torch.arange(n, device=dev, dtype=torch.float32).expand(b, n).unsqueeze(-1)
    positions = (torch.bmm(onehot, pos_idx) / denom).squeeze(-1)
    nonempty = mass > 0
    lengths = nonempty.sum(-1)
    positions = torch.where(nonempty, positions, float("nan"))
    if kept_indices is None:
        kept_indices = torch.full((b, m), -1, dtype=torch.long, device=dev)
    return Reduction(features=out.to(features.dtype), positions=positions, kept_indices=kept_indices,
                     assignment=assignment, lengths=lengths, weights=weights)


def sorted_by_position(red: Reduction) -> Reduction:
    """Reorder output rows by position (padding last), keeping the bookkeeping consistent."""
    pos = torch.nan_to_num(red.positions, nan=float("inf"))
    order = torch.argsort(pos, dim=1, stable=True)
    return reorder(red, order)


def reorder(red: Reduction, order: torch.Tensor) -> Reduction:
    b, m, d = red.features.shape
    inverse = torch.argsort(order, dim=1)
    assignment = torch.where(red.assignment >= 0, torch.gather(inverse, 1, red.assignment.clamp(min=0)),
                             red.assignment)
    return Reduction(features=torch.gather(red.features, 1, order.unsqueeze(-1).expand(b, m, d)),
                     positions=torch.gather(red.positions, 1, order),
                     kept_indices=torch.gather(red.kept_indices, 1, order), assignment=assignment,
                     lengths=red.lengths, weights=red.weights)


def concat(parts: list[Reduction], n: int) -> Reduction:
    """Join reductions whose assignments cover disjoint originals, rows in the given order."""
    offset = 0
    assignment = None
    for p in parts:
        a = torch.where(p.assignment >= 0, p.assignment + offset, torch.full_like(p.assignment, -1))
        assignment = a if assignment is None else torch.where(a >= 0, a, assignment)
        offset += p.count
    weights = None
    if any(p.weights is not None for p in parts):
        weights = torch.ones_like(parts[0].positions[:, :1].expand(-1, n), dtype=torch.float32)
        for p in parts:
            if p.weights is not None:
                weights = torch.where(p.assignment >= 0, p.weights.to(torch.float32), weights)
    return Reduction(features=torch.cat([p.features for p in parts], 1),
                     positions=torch.cat([p.positions for p in parts], 1),
                     kept_indices=torch.cat([p.kept_indices for p in parts], 1), assignment=assignment,
                     lengths=sum(p.lengths for p in parts), weights=weights)
