"""What a reducer changes in a prediction: its per-layer token schedule and its own cost.

The cost model imports no reducer. It takes any object with ``hook`` (``pre-projector``,
``post-projector`` or ``in-llm``) and reads, duck-typed:

* in-LLM ones: ``layer_tokens(keep, n_visual, n_layers)`` -> the visual tokens each decoder
  layer runs on (recycled tokens included), or, without it, ``stages(keep, n_visual,
  n_layers)`` -> [(layer, count)] with ``stage_prunes`` saying what a stage prunes: layer
  ``layer``'s ``"output"`` (default, ``reducers.in_llm``'s protocol: the later layers run on
  ``count``) or its ``"input"`` (it and the later ones); a stage whose count is not below the
  current one is skipped;
* every kind, optionally: ``cost(n, d, keep, batch=1, **context)`` -> ``{"flops", "bytes",
  "launches"}`` (and ``"capturable"``: whether a CUDA-graph runtime can replay it, default
  True; ``"work_dtype"``: ``"float32"`` (default) or ``"model"``), the reducer's own work (see
  :func:`context`). Without it the reducer costs nothing and the
  prediction's assumptions say so.

Post- and pre-projector reducers run every layer on ``keep`` visual tokens.
"""

from __future__ import annotations

import numpy as np

from .options import PredictError


def reducer_name(reducer) -> str:
    return getattr(reducer, "name", None) or type(reducer).__name__


def hook(reducer) -> str | None:
    return None if reducer is None else getattr(reducer, "hook", "post-projector")


def _ranges(values: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}..{v}" if v > start else f"{v}")
            start = None
    return ", ".join(out) or "none"


def _undefined(reducer, keep, err, check, n: int) -> PredictError:
    """One line: the keep, why, and the budgets the reducer does define (``check(k)`` raises
    ValueError for an undefined one)."""
    ok = []
    for k in range(1, n + 1):
        try:
            check(k)
            ok.append(k)
        except ValueError:
            pass
    return PredictError(f"keep = {keep} is not defined by reducer {reducer_name(reducer)!r} ({err}); allowed: "
                        f"keep {_ranges(ok)}")


def layer_counts(reducer, keep: int, n_visual: int, n_layers: int) -> list[int]:
    """Visual tokens each of the ``n_layers`` decoder layers runs on."""
    if hook(reducer) != "in-llm":
        return [keep] * n_layers
    try:
        counts = _counts(reducer, keep, n_visual, n_layers)
    except ValueError as e:
        raise _undefined(reducer, keep, e, lambda k: _counts(reducer, k, n_visual, n_layers), n_visual) from None
    if len(counts) != n_layers or not all(1 <= c <= n_visual for c in counts):
        raise PredictError(f"reducer {reducer_name(reducer)!r} gave a schedule of {len(counts)} layers with counts "
                           f"{sorted(set(counts))}; need {n_layers} layers, counts in 1..{n_visual}")
    return counts


def _counts(reducer, keep: int, n_visual: int, n_layers: int) -> list[int]:
    if hasattr(reducer, "layer_tokens"):
        return [int(c) for c in reducer.layer_tokens(keep, n_visual, n_layers)]
    shift = 1 if getattr(reducer, "stage_prunes", "output") == "output" else 0
    counts, current, pending = [], n_visual, {}
    stages = dict(reducer.stages(keep, n_visual, n_layers))
    for layer in range(n_layers):
        current = pending.pop(layer, current)
        if layer in stages and stages[layer] < current:
            if shift:
                pending[layer + 1] = int(stages[layer])
            else:
                current = int(stages[layer])
        counts.append(current)
    return counts


def segments(counts: list[int]) -> list[tuple[int, int, float]]:
    """[(first_layer, layers, visual tokens)] runs of equal counts."""
    out = []
    for layer, c in enumerate(counts):
        if out and out[-1][2] == c:
            out[-1] = (out[-1][0], out[-1][1] + 1, c)
        else:
            out.append((layer, 1, c))
    return [(s, n, float(c)) for s, n, c in out]


def segments_grid(reducer, keeps, n_visual: int, n_layers: int) -> list[tuple[int, int, np.ndarray]]:
    """Segments for many budgets at once: each value a (1, 1, K) array; layers group where the
    counts of every budget agree."""
    if hook(reducer) != "in-llm":
        return [(0, n_layers, np.asarray(keeps, dtype=np.float64).reshape(1, 1, -1))]
    table = np.array([layer_counts(reducer, int(k), n_visual, n_layers) for k in keeps], dtype=np.float64).T
    out = []
    for layer in range(n_layers):
        if out and np.array_equal(table[out[-1][0]], table[layer]):
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((layer, 1))
    return [(s, n, table[s].reshape(1, 1, -1)) for s, n in out]


def stages_of(counts: list[int], text: int) -> list[dict]:
    """The JSON form: [{"layers": [first, last], "tokens": LLM tokens, "visual_tokens": n}]."""
    return [{"layers": [s, s + n - 1], "tokens": int(c) + text, "visual_tokens": int(c)}
            for s, n, c in segments(counts)]


# --------------------------------------------------------------------------- the reducer's own cost


def context(spec, llm, opts) -> dict:
    """What a reducer's ``cost`` may need beside (n, d, keep, batch): the prompt and the models."""
    ctx = {"text_tokens": None, "heads": llm.num_attention_heads, "kv_heads": llm.num_key_value_heads,
           "head_dim": llm.head_dim, "layers": llm.num_hidden_layers, "llm_hidden": llm.hidden_size,
           "element_bytes": opts.a_bits / 8}
    vision = getattr(spec, "vision", None)
    if vision is not None:
        ctx.update(vision_hidden=vision.hidden_size, vision_heads=vision.num_attention_heads,
                   vision_tokens=vision.tokens * spec.images)
    return ctx


def input_shape(reducer, spec, llm, n_visual: int) -> tuple[int, int]:
    """(N, D) of what the reducer reads: the tower's tokens with CLS (pre-projector), else the
    visual tokens in the LLM's width."""
    if hook(reducer) == "pre-projector":
        vision = getattr(spec, "vision", None)
        if vision is None:
            raise PredictError(f"reducer {reducer_name(reducer)!r} acts before the projector; model {spec.key!r} "
                               "has no vision encoder (use a VLM preset)")
        return vision.tokens * spec.images, vision.hidden_size
    return n_visual, llm.hidden_size


def reducer_costs(reducer, spec, llm, opts, n_visual: int, text: int, keeps, batches) -> dict | None:
    """The reducer's cost per (batch, keep): floats for scalars, else (1, B, K) arrays. None when
    there is no reducer or it has no cost model."""
    fn = getattr(reducer, "cost", None)
    if fn is None:
        return None
    n, d = input_shape(reducer, spec, llm, n_visual)
    ctx = context(spec, llm, opts)
    ctx["text_tokens"] = text
    scalar = np.ndim(keeps) == 0 and np.ndim(batches) == 0
    ks, bs = np.atleast_1d(keeps), np.atleast_1d(batches)
    cols = {"flops": [], "bytes": [], "launches": [], "capturable": [], "model_dtype": []}
    for b in bs:
        for k in ks:
            try:
                c = fn(n, d, int(k), batch=int(b), **ctx)
            except ValueError as e:
                raise _undefined(reducer, int(k), e, lambda j: fn(n, d, j, batch=int(b), **ctx), n_visual) from None
            for key in ("flops", "bytes", "launches"):
                cols[key].append(float(c.get(key, 0.0)))
            cols["capturable"].append(bool(c.get("capturable", True)))
            cols["model_dtype"].append(c.get("work_dtype", "float32") == "model")
    if scalar:
        return {k: v[0] for k, v in cols.items()}
    return {k: np.asarray(v).reshape(1, len(bs), len(ks)) for k, v in cols.items()}
