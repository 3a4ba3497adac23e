"""What one reducer call costs a GPU: FLOPs, bytes moved, kernel launches and host syncs.

Each reducer class has ``cost(n, d, keep, batch=1, **context)`` beside its definition (one
source: the formulas follow its code op by op); this module holds the arithmetic they share
and the costs of the shared helpers (``reducers.base``'s select / merge / reorder and the
input check; the first-layer saliency score; the cluster helpers' are beside them in
``reducers.saliency``). A launch is a dispatched aten op that
runs a kernel (views and allocations do not); on a GPU each is about one CUDA kernel, and at
batch 1 a reducer's time is mostly launches x the per-launch time, so the counts are exact for
the code path (float32 on the CPU; ``tests/costmodel/test_reducer_costs.py`` checks them against
the dispatched ops of a real call). FLOPs count 2 per multiply-add; ``matmul_flops`` is the part
in matrix products (what ``torch.utils.flop_counter`` counts). Bytes are each kernel's reads
and writes of its main tensors, an estimate.

``context`` (from the cost model, all optional): ``text_tokens``, ``heads``, ``kv_heads``,
``head_dim``, ``layers``, ``llm_hidden``, ``vision_hidden``, ``element_bytes`` (of the
features: 2 for bf16, 4 for float32; reducers compute in float32, so 16-bit inputs add their
conversions).
"""

from __future__ import annotations

import math


class Work:
    """Counts of a sequence of kernels; ``a + b`` runs both, ``n * a`` runs ``a`` n times."""

    __slots__ = ("flops", "matmul_flops", "bytes", "launches", "syncs")

    def __init__(self, flops=0.0, matmul_flops=0.0, bytes=0.0, launches=0, syncs=0):
        self.flops, self.matmul_flops, self.bytes = float(flops), float(matmul_flops), float(bytes)
        self.launches, self.syncs = launches, syncs

    def __add__(self, other: "Work") -> "Work":
        return Work(self.flops + other.flops, self.matmul_flops + other.matmul_flops, self.bytes + other.bytes,
                    self.launches + other.launches, self.syncs + other.syncs)

    def __mul__(self, n: int) -> "Work":
        return Work(self.flops * n, self.matmul_flops * n, self.bytes * n, self.launches * n, self.syncs * n)

    __rmul__ = __mul__

    def result(self, work_dtype: str = "float32", capturable: bool = True) -> dict:
        """The dict ``cost()`` returns. ``work_dtype``: ``float32`` (reducers' own arithmetic)
        or ``model`` (the model's dtype: an in-LLM reducer's projections); ``capturable``: a
        runtime that replays CUDA graphs can replay the method's kernels (its core never
        synchronises with the host; the input check runs before, eager)."""
        return {"flops": self.flops, "matmul_flops": self.matmul_flops, "bytes": self.bytes,
                "launches": self.launches, "syncs": self.syncs, "work_dtype": work_dtype, "capturable": capturable}


def total(*parts: Work) -> Work:
    out = Work()
    for p in parts:
        out = out + p
    return out


def kernels(n: int = 1, elems: float = 0.0, inputs: int = 1, flops: float = 1.0, e: float = 4) -> Work:
    """``n`` elementwise-like kernels, each over ``elems`` outputs reading ``inputs`` operands
    of that size, ``flops`` per output element."""
    return Work(flops=n * elems * flops, bytes=n * (inputs + 1) * elems * e, launches=n)


def matmul(b, m, k, n, e: float = 4) -> Work:
    """One (batched) product [b, m, k] x [b, k, n]."""
    f = 2.0 * b * m * k * n
    return Work(flops=f, matmul_flops=f, bytes=e * b * (m * k + k * n + m * n), launches=1)


def sort(rows, n, e: float = 4) -> Work:
    """One sort / argsort / top-k of ``rows`` rows of ``n`` (values and int64 indices out)."""
    return Work(flops=rows * n * max(1.0, math.log2(max(n, 2))), bytes=rows * n * (2 * e + 8), launches=1)


def sync(e: float = 4) -> Work:
    """A value read back to the host (``.item()``): one copy, one host synchronisation."""
    return Work(bytes=e, launches=1, syncs=1)


def cast(elems, e_in: float, launches: int = 1) -> Work:
    """Conversions of 16-bit tensors to float32 (none when they already are float32)."""
    if e_in >= 4:
        return Work()
    return Work(bytes=launches * elems * (e_in + 4), launches=launches)


# ----------------------------------------------------------------------- reducers.base helpers


def check(b, n, d, signals: int = 0, signal_elems: float = 0.0, e: float = 4) -> Work:
    """``Reducer.reduce``'s input check: one sum of the features and of each tensor signal,
    added, read back once (the call's one host sync)."""
    return Work(flops=b * n * d, bytes=b * n * d * e, launches=1) + kernels(2 * signals) + \
        Work(bytes=signal_elems * e) + sync()


def identity(b, n) -> Work:
    return kernels(3, b * n, e=8)


def select(b, n, m, d, e: float = 4) -> Work:
    """``base.select``: gather m of n rows, and the bookkeeping (7 kernels)."""
    return kernels(1, b * m * d, e=e) + kernels(6, b * n, e=8)


def merge(b, n, m, d, e: float = 4) -> Work:
    """``base.merge``: one-hot [b, m, n] built by scatter, mean rows by two products (17 kernels)."""
    return kernels(13, b * m * n) + matmul(b, m, n, d) + matmul(b, m, n, 1) + kernels(2, b * m * d)


def reorder(b, m, n, d, e: float = 4) -> Work:
    """``base.reorder`` (8 kernels)."""
    return sort(b, m) + kernels(4, b * n, e=8) + kernels(3, b * m * d / 3, e=e)


def sorted_by_position(b, m, n, d, e: float = 4) -> Work:
    return kernels(1, b * m) + sort(b, m) + reorder(b, m, n, d, e)


# ----------------------------------------------------------------------- reducers.saliency helpers


def rms_norm(rows, d, e_in: float = 4) -> Work:
    """``saliency._rms_norm``: pow, mean, add, rsqrt, mul, mul (float32)."""
    return cast(rows * d, e_in) + kernels(6, rows * d, flops=1.0)


def saliency(b, n, d, t, heads, kv_heads, head_dim, e: float = 4) -> Work:
    """``first_layer_qk`` + ``saliency_scores`` (no text mask, no RoPE): the first LLM layer's
    norm and q/k projections of n visual and t text tokens in float32, then the text-by-visual
    scores, softmax over text, max over heads, mean over text (19 kernels, 4 more for 16-bit
    weights and inputs)."""
    q_out, k_out = heads * head_dim, kv_heads * head_dim
    weights = cast(d * q_out + d * k_out, e, 2)
    scores = b * heads * n * t
    gqa = kernels(1, b * heads * n * head_dim) if heads != kv_heads else Work()
    return weights + rms_norm(b * n, d, e) + rms_norm(b * t, d, e) + matmul(1, b * n, d, k_out) + \
        matmul(1, b * t, d, q_out) + gqa + matmul(b * heads, n, head_dim, t) + kernels(2, scores, flops=3.0) + \
        kernels(1, scores) + kernels(1, b * n * t)


def saliency_from(b, n, d, e, ctx: dict, rope: bool = False) -> Work:
    """A saliency reducer's score from the signals the forward path passes (``text_embeds`` of
    ``ctx["text_tokens"]`` tokens and ``layer0``), through ``saliency.cross_modal_saliency``;
    RoPE adds 42 kernels (the positions, the rotary tables, the rotations of q and k)."""
    t, h = ctx.get("text_tokens") or 64, ctx.get("heads") or d // 128
    return saliency(b, n, d, t, h, ctx.get("kv_heads") or h, d // h, e) + kernels(42 * rope, b * n * d)
