"""Per-op counts of one transformer forward: FLOPs and bytes moved, as numpy arrays.

Every count is a closed-form expression of the token count, the batch size and the model's
sizes, evaluated with numpy broadcasting so that a whole sweep (token counts x batch sizes x
GPUs) is one pass. Two sets of formulas live here:

* :func:`llm_viewer_ops` reproduces LLM-Viewer (``ModelAnalyzer.analyze``, main branch at
  commit 472f71f) term for term, miscounts included, so its published numbers can be redone.
* :func:`transformer_ops` is this project's corrected model; the docstring of each fix says
  what LLM-Viewer does instead. It serves LLM decoders and ViT encoders alike.

Notation: ``B`` batch, ``T`` tokens processed this pass, ``S`` keys attended (the KV span),
``h`` hidden size, ``I`` MLP width, ``H``/``Hk`` query/KV heads, ``d`` head dim, ``a``/``w``/
``kv`` bytes per activation/weight/KV element. Per-layer ops carry ``repeat = layers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: ops that are matrix products (what torch.utils.flop_counter counts)
MATMUL_OPS = frozenset({"q_proj", "k_proj", "v_proj", "out_proj", "qk_matmul", "sv_matmul", "gate_proj",
                        "up_proj", "down_proj", "fc1", "fc2", "lm_head", "rotary_emb"})


@dataclass
class Op:
    """One op's counts (numpy arrays or scalars, broadcastable). Bytes unless named flops."""

    name: str
    flops: np.ndarray | float
    load_weight: np.ndarray | float = 0.0
    load_act: np.ndarray | float = 0.0
    store_act: np.ndarray | float = 0.0
    load_kv: np.ndarray | float = 0.0
    store_kv: np.ndarray | float = 0.0
    repeat: int = 1  # how many times the op runs per forward (layers)

    @property
    def memory_access(self):
        return self.load_weight + self.load_act + self.store_act + self.load_kv + self.store_kv


# --------------------------------------------------------------------------- numbers
# Every formula takes Python floats (one configuration: predict()'s fast path) or numpy arrays
# (a sweep); these helpers keep floats as floats, so both give the same IEEE results.


def num(x):
    """A float, or a float64 array for array input."""
    return np.asarray(x, dtype=np.float64) if isinstance(x, np.ndarray) else float(x)


def ceil(x):
    return float(math.ceil(x)) if isinstance(x, float) else np.ceil(x)


def floor(x):
    return float(math.floor(x)) if isinstance(x, float) else np.floor(x)


def minimum(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a if a <= b else b
    return np.minimum(a, b)


def maximum(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a if a >= b else b
    return np.maximum(a, b)


def where(cond, a, b):
    if isinstance(cond, (bool, np.bool_)):
        return a if cond else b
    return np.where(cond, a, b)


def ones_like(x):
    return 1.0 if isinstance(x, float) else np.ones_like(x)


# --------------------------------------------------------------------------- LLM-Viewer


def llm_viewer_ops(llm, seq_len, batch, *, stage, w_bytes, a_bytes, kv_bytes,
                   flash, onchip_buffer) -> list[Op]:
    """LLM-Viewer's op table for a LLaMA decoder, reproduced exactly.

    ``seq_len`` is the prompt length (prefill) or the KV length (decode). The quirks kept on
    purpose: MLP activation sized by hidden_size (LLM-Viewer issue #16), fused attention output
    sized L*L, Q loads counted with KV heads, no causal halving, LM head for one token at one
    op per multiply-add with un-batched activations.
    """
    L = num(seq_len)
    B = num(batch)
    h, I = llm.hidden_size, llm.intermediate_size
    H, Hk = llm.num_attention_heads, llm.num_key_value_heads
    d = h // H
    n = llm.num_hidden_layers
    a, w, kv = a_bytes, w_bytes, kv_bytes
    T = L if stage == "prefill" else 1.0  # rows through the linear layers
    ops: list[Op] = []

    linears = {
        "q_proj": (h, h), "k_proj": (h, h * Hk / H), "v_proj": (h, h * Hk / H),
        "out_proj": (h, h), "gate_proj": (h, I), "up_proj": (h, I), "down_proj": (I, h),
    }
    lin = {}
    for name, (ic, oc) in linears.items():
        is_kv = name in ("k_proj", "v_proj")
        lin[name] = Op(name, flops=ic * oc * B * T * 2, load_weight=ic * oc * w,
                       load_act=ic * B * T * a,
                       store_act=0.0 if is_kv else oc * B * T * a,
                       store_kv=oc * B * T * kv if is_kv else 0.0, repeat=n)

    if stage == "prefill":
        qk = L * L * d * H * B * 2
        sv = L * d * L * H * B * 2
        sm = B * H * L * L * 5
        q_rows, o_cols = L, L
    else:
        qk = L * d * H * B * 2
        sv = d * L * H * B * 2
        sm = B * H * L * 5
        q_rows, o_cols = 1.0, L
    attn: list[Op] = []
    if flash:
        block_r = minimum(ceil(num(onchip_buffer) / (kv * d)), float(d))
        n_blocks = ceil(q_rows / block_r)
        q_numel = q_rows * d * B * H * a
        o_numel = q_rows * o_cols * B * H * a
        attn.append(Op("fused_attention", flops=qk + sv + sm, load_act=q_numel, store_act=o_numel * 2,
                       load_kv=n_blocks * L * d * B * Hk * kv * 2, repeat=n))
    else:
        attn.append(Op("qk_matmul", flops=qk, load_act=q_rows * d * B * Hk * a if stage == "prefill"
                       else q_rows * d * B * H * a,
                       store_act=q_rows * L * B * H * a, load_kv=L * d * B * Hk * kv, repeat=n))
        attn.append(Op("softmax", flops=sm, load_act=B * H * q_rows * L * a,
                       store_act=B * H * q_rows * L * a, repeat=n))
        attn.append(Op("sv_matmul", flops=sv, load_act=q_rows * L * B * H * a,
                       store_act=q_rows * d * B * H * a, load_kv=L * d * B * Hk * kv, repeat=n))

    rows = B * h * T
    norm = lambda name: Op(name, flops=rows * 7, load_act=rows * a, store_act=rows * a, repeat=n)  # noqa: E731
    add = lambda name: Op(name, flops=rows, load_act=rows * a, store_act=rows * a, repeat=n)  # noqa: E731
    mlp_act = Op("mlp_act", flops=rows * 2, load_act=rows * a * 2, store_act=rows * a, repeat=n)

    V = llm.vocab_size
    lm_head = Op("lm_head", flops=B * h * V * 1, load_weight=h * V * w, load_act=h * a * 1.0,
                 store_act=V * a * 1.0, repeat=1)
    ops = [norm("attn_norm"), lin["q_proj"], lin["k_proj"], lin["v_proj"], *attn, lin["out_proj"],
           add("attn_add"), norm("mlp_norm"), lin["gate_proj"], lin["up_proj"], mlp_act,
           lin["down_proj"], add("mlp_add"), lm_head]
    return ops


# --------------------------------------------------------------------------- corrected model

# Elementwise op counts per element (documented choices, not measurements).
RMSNORM_FLOPS = 4      # square, accumulate, scale by rsqrt, scale by weight
LAYERNORM_FLOPS = 7    # mean, subtract, square, accumulate, scale by rsqrt, weight, bias
SOFTMAX_FLOPS = 5      # max, subtract, exp, sum, divide
SILU_MUL_FLOPS = 5     # silu(g) = g / (1 + exp(-g)): 4, then * up: 1
GELU_FLOPS = 8         # tanh or sigmoid approximation


def causal_pairs(T, S):
    """(query, key) pairs a causal pass computes when T new queries see S keys (S >= T)."""
    T, S = num(T), num(S)
    return T * (S - T) + T * (T + 1) / 2


def transformer_ops(*, hidden, intermediate, heads, kv_heads, layers, tokens, span, batch,
                    w_bytes, a_bytes, kv_bytes, flash, block_rows, causal, gated_mlp, norm,
                    bias, kv_cache, prefix="") -> list[Op]:
    """Corrected op table of one stack of identical transformer layers.

    Fixes against LLM-Viewer: 2 FLOPs per multiply-add everywhere; Q loads counted with query
    heads; causal attention counts only unmasked (query, key) pairs when FlashAttention skips
    masked tiles (eager and SDPA-math kernels compute the full square, so they do not);
    FlashAttention reads K/V once per query tile of ``block_rows`` rows and writes an output
    of T*d per head (not T*S); the MLP activation is sized by the MLP width; residual adds
    load both operands; norm weights are loaded.
    """
    T, S, B = num(tokens), num(span), num(batch)
    h, I, H, Hk, n = hidden, intermediate, heads, kv_heads, layers
    d = h // H
    a, w, kv = a_bytes, w_bytes, kv_bytes
    rows = B * T
    nf = RMSNORM_FLOPS if norm == "rms" else LAYERNORM_FLOPS
    norm_w = h * w * (1 if norm == "rms" else 2)
    ops: list[Op] = []

    def linear(name, ic, oc, *, to_kv=False, in_act=None):
        return Op(prefix + name, flops=2 * rows * ic * oc,
                  load_weight=(ic * oc + (oc if bias else 0)) * w,
                  load_act=rows * ic * a if in_act is None else in_act,
                  store_act=0.0 if to_kv else rows * oc * a,
                  store_kv=rows * oc * kv if to_kv else 0.0, repeat=n)

    def norm_op(name):
        return Op(prefix + name, flops=rows * h * nf, load_weight=norm_w, load_act=rows * h * a,
                  store_act=rows * h * a, repeat=n)

    def add_op(name):
        return Op(prefix + name, flops=rows * h, load_act=2 * rows * h * a, store_act=rows * h * a, repeat=n)

    # K/V of this pass go to the cache (LLM) or stay activations (ViT); either way attention
    # reads them back, counted as KV traffic for the LLM and activation traffic for the ViT.
    kv_elem = kv if kv_cache else a
    ops += [norm_op("attn_norm"), linear("q_proj", h, H * d),
            linear("k_proj", h, Hk * d, to_kv=kv_cache), linear("v_proj", h, Hk * d, to_kv=kv_cache)]
    if flash:
        pairs = causal_pairs(T, S) if causal else T * S
        n_tiles = ceil(T / block_rows)
        if causal:  # query tile i reads keys up to its last row: sum_i min(S - T + i*b, S)
            keys_read = n_tiles * (S - T) + block_rows * n_tiles * (n_tiles - 1) / 2 + T
            keys_read = minimum(keys_read, n_tiles * S)
        else:
            keys_read = n_tiles * S
        kv_read = 2 * B * Hk * d * keys_read * kv_elem
        ops.append(Op(prefix + "fused_attention", flops=B * H * pairs * (4 * d + SOFTMAX_FLOPS),
                      load_act=rows * H * d * a, store_act=rows * H * d * a,
                      load_kv=kv_read if kv_cache else 0.0,
                      load_weight=0.0, repeat=n))
        if not kv_cache:
            ops[-1].load_act = ops[-1].load_act + kv_read
    else:
        scores = B * H * T * S
        k_bytes = B * S * Hk * d * kv_elem
        qk = Op(prefix + "qk_matmul", flops=2 * scores * d, load_act=rows * H * d * a,
                store_act=scores * a, repeat=n)
        sv = Op(prefix + "sv_matmul", flops=2 * scores * d, load_act=scores * a,
                store_act=rows * H * d * a, repeat=n)
        if kv_cache:
            qk.load_kv, sv.load_kv = k_bytes, k_bytes
        else:
            qk.load_act, sv.load_act = qk.load_act + k_bytes, sv.load_act + k_bytes
        ops += [qk, Op(prefix + "softmax", flops=scores * SOFTMAX_FLOPS, load_act=scores * a,
                       store_act=scores * a, repeat=n), sv]
    ops += [linear("out_proj", H * d, h), add_op("attn_add"), norm_op("mlp_norm")]
    if gated_mlp:
        ops += [linear("gate_proj", h, I), linear("up_proj", h, I),
                Op(prefix + "mlp_act", flops=rows * I * SILU_MUL_FLOPS, load_act=2 * rows * I * a,
                   store_act=rows * I * a, repeat=n),
                linear("down_proj", I, h)]
    else:
        ops += [linear("fc1", h, I),
                Op(prefix + "mlp_act", flops=rows * I * GELU_FLOPS, load_act=rows * I * a,
                   store_act=rows * I * a, repeat=n),
                linear("fc2", I, h)]
    ops.append(add_op("mlp_add"))
    return ops


def llm_ops(llm, seq_len, batch, *, stage, w_bytes, a_bytes, kv_bytes, flash, block_rows,
            all_logits=False, segments=None) -> list[Op]:
    """Corrected op table of a LLaMA decoder forward (prefill of ``seq_len`` tokens, or one
    decode step after ``seq_len`` cached tokens), embedding and LM head included.

    ``segments``: [(first_layer, layers, seq_len)] when layers run on different token counts
    (an in-LLM reducer's schedule): each group of layers is costed at its own length (prefill)
    or its own cache length (decode), its KV cache too; ``seq_len`` is then the first group's.
    Ops of a group carry ``repeat = layers`` and, with several groups, the prefix ``L<a>-<b>.``.
    """
    segments = segments or [(0, llm.num_hidden_layers, seq_len)]
    B = num(batch)
    first, last = num(segments[0][2]), num(segments[-1][2])
    T0, Tn = (first, last) if stage == "prefill" else (ones_like(first), ones_like(last))
    h, V = llm.hidden_size, llm.vocab_size
    a, w = a_bytes, w_bytes
    d = h // llm.num_attention_heads
    embed = Op("embed_tokens", flops=0.0, load_weight=B * T0 * h * w, store_act=B * T0 * h * a)
    # cos/sin tables: an outer product of d/2 frequencies with T positions, shared by the batch
    rotary = Op("rotary_emb", flops=2 * (d / 2) * T0, store_act=2 * T0 * d * a)
    ops = [embed, rotary]
    for start, layers, length in segments:
        L = num(length)
        T, S = (L, L) if stage == "prefill" else (ones_like(L), L + 1)
        prefix = f"L{start}-{start + layers - 1}." if len(segments) > 1 else ""
        ops += transformer_ops(
            hidden=h, intermediate=llm.intermediate_size, heads=llm.num_attention_heads,
            kv_heads=llm.num_key_value_heads, layers=layers, tokens=T, span=S,
            batch=B, w_bytes=w, a_bytes=a, kv_bytes=kv_bytes, flash=flash, block_rows=block_rows,
            causal=True, gated_mlp=True, norm="rms", bias=llm.attention_bias, kv_cache=True, prefix=prefix)
    # HF normalises every position, then projects only the kept rows (logits_to_keep).
    logit_rows = B * Tn if all_logits else B * ones_like(Tn)
    ops.append(Op("final_norm", flops=B * Tn * h * RMSNORM_FLOPS, load_weight=h * w,
                  load_act=B * Tn * h * a, store_act=B * Tn * h * a))
    ops.append(Op("lm_head", flops=2 * logit_rows * h * V, load_weight=h * V * w,
                  load_act=logit_rows * h * a, store_act=logit_rows * V * a))
    return ops


def vision_ops(vision, layers_run, images, batch, *, w_bytes, a_bytes, flash, block_rows) -> list[Op]:
    """Corrected op table of a ViT encoder over ``batch * images`` images."""
    B = num(batch) * images
    P, T, h = vision.patch_tokens, vision.tokens, vision.hidden_size
    a, w = a_bytes, w_bytes
    k = vision.num_channels * vision.patch_size ** 2
    pixels = B * vision.num_channels * vision.image_size ** 2
    ops = [Op("vision.patch_embed", flops=2 * B * P * k * h, load_weight=k * h * w,
              load_act=pixels * a, store_act=B * T * h * a),
           Op("vision.pre_norm", flops=B * T * h * LAYERNORM_FLOPS, load_weight=2 * h * w,
              load_act=B * T * h * a, store_act=B * T * h * a)]
    ops += transformer_ops(
        hidden=h, intermediate=vision.intermediate_size, heads=vision.num_attention_heads,
        kv_heads=vision.num_attention_heads, layers=layers_run, tokens=T, span=T, batch=B,
        w_bytes=w, a_bytes=a, kv_bytes=a, flash=flash, block_rows=block_rows, causal=False,
        gated_mlp=False, norm="layer", bias=True, kv_cache=False, prefix="vision.")
    return ops


def projector_ops(dims, tokens, batch, *, w_bytes, a_bytes) -> list[Op]:
    """LLaVA's projector (linear, GELU, linear) over ``tokens`` visual tokens per request."""
    rows = num(batch) * tokens
    ops = []
    for i, (ic, oc) in enumerate(dims):
        if i:
            ops.append(Op("projector.act", flops=rows * ic * GELU_FLOPS, load_act=rows * ic * a_bytes,
                          store_act=rows * ic * a_bytes))
        ops.append(Op(f"projector.linear_{i + 1}", flops=2 * rows * ic * oc,
                      load_weight=(ic * oc + oc) * w_bytes, load_act=rows * ic * a_bytes,
                      store_act=rows * oc * a_bytes))
    return ops
