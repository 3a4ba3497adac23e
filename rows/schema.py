"""One builder per row kind: the only places rows are made."""

from __future__ import annotations

import math

SCHEMA_VERSION = 2
KINDS = ("prediction", "profile", "eval", "published", "reducer-timing", "reducer-ops", "graph-timing")


def clean(value):
    """JSON has no NaN/inf: they become null (the caller adds a reason)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def _base(kind: str, status: str = "ok", **fields) -> dict:
    if kind not in KINDS:
        raise ValueError(f"row kind {kind!r} is not one of {', '.join(KINDS)}")
    return clean({"schema_version": SCHEMA_VERSION, "kind": kind, "status": status, **fields})


def prediction_rows(sweep) -> list[dict]:
    """One ``kind: prediction`` row per (GPU, batch, keep) of a ``costmodel.Sweep``."""
    rows = []
    opts = sweep.options
    for gi, gpu in enumerate(sweep.gpus):
        for bi, batch in enumerate(sweep.batch):
            for ki, keep in enumerate(sweep.keep):
                def pick(d, k):
                    return float(d[k][gi, bi, min(ki, d[k].shape[2] - 1)])
                row = {"model": sweep.model, "gpu": gpu, "reducer": getattr(sweep, "reducer", None) or "any",
                       "keep": int(keep),
                       "visual_tokens": sweep.visual_tokens, "text_tokens": sweep.text_tokens, "batch": int(batch),
                       "retention": int(keep) / sweep.visual_tokens, "mode": opts.compat or "corrected",
                       "stage": opts.stage,
                       "options": {"w_bits": opts.w_bits, "a_bits": opts.a_bits, "kv_bits": opts.kv,
                                   "flash_attention": opts.flash_attention, "all_logits": opts.all_logits,
                                   "cuda_graphs": getattr(opts, "cuda_graphs", False)}}
                for k in sweep.reduced:
                    row[f"baseline_{k}"] = pick(sweep.baseline, k)
                    row[k] = pick(sweep.reduced, k)
                    if k in sweep.savings:
                        row[f"saved_{k}"] = pick(sweep.savings, k)
                if getattr(sweep, "output_tokens", 0):
                    row["options"]["output_tokens"] = int(sweep.output_tokens)
                if getattr(sweep, "layer_table", None) is not None:
                    row["stages"] = sweep.stages(ki)
                if opts.stage == "prefill":
                    row["prefill_time_s"] = row["time_s"]
                rows.append(_base("prediction", **row))
    return rows


def profile_row(*, model: str, spec: str, gpu: str, reducer: str, keep: int, visual_tokens: int, image: str,
                batch: int, dtype: str, attn_implementation: str, options: dict, hook: str, environment: dict,
                status: str = "ok", **measured) -> dict:
    """A ``vtc profile`` condition: identity fields, then what was measured (or ``error``)."""
    return _base("profile", status, model=model, spec=spec, gpu=gpu, reducer=reducer, keep=keep,
                 visual_tokens=visual_tokens, image=image, batch=batch, dtype=dtype,
                 attn_implementation=attn_implementation, options=options, hook=hook, environment=environment,
                 **measured)


def eval_row(*, benchmark: str, model: str, spec: str | None, gpu: str | None, reducer: str, keep: int | None,
             visual_tokens: int | None, hook: str, options: dict, status: str = "ok", summary: bool = False,
             **fields) -> dict:
    """A sample's or a summary's ``vtc eval`` row; ``options`` holds the reducer parameters and the
    generation options (part of the row's identity)."""
    return _base("eval", status, benchmark=benchmark, model=model, spec=spec, gpu=gpu, reducer=reducer, keep=keep,
                 visual_tokens=visual_tokens, hook=hook, options=options, summary=summary, **fields)


def published_row(*, source: str, model: str, reducer: str, reducer_params: dict, keep: int | None,
                  keep_is_approximate: bool, visual_tokens: int | None, retention: float | None, benchmark: str,
                  accuracy: float | None, mme_total: float | None) -> dict:
    return _base("published", source=source, model=model, gpu=None, reducer=reducer,
                 options={"reducer_params": reducer_params}, reducer_params=reducer_params, keep=keep,
                 keep_is_approximate=keep_is_approximate, visual_tokens=visual_tokens, retention=retention,
                 benchmark=benchmark, summary=True, accuracy=accuracy, mme_total=mme_total)


def reducer_timing_row(*, reducer: str, keep: int, visual_tokens: int, hidden_size: int, batch: int, dtype: str,
                       device: str, gpu: str, status: str = "ok", **measured) -> dict:
    return _base("reducer-timing", status, reducer=reducer, keep=keep, visual_tokens=visual_tokens,
                 hidden_size=hidden_size, batch=batch, dtype=dtype, device=device, gpu=gpu, **measured)


def graph_timing_row(*, model: str, spec: str, gpu: str, part: str, batch: int, keep: int | None,
                     visual_tokens: int, tokens: int, dtype: str, attn_implementation: str, status: str = "ok",
                     **measured) -> dict:
    return _base("graph-timing", status, model=model, spec=spec, gpu=gpu, part=part, batch=batch, keep=keep,
                 visual_tokens=visual_tokens, tokens=tokens, dtype=dtype, attn_implementation=attn_implementation,
                 **measured)


def failed_row(kind: str, identity_fields: dict, error: str, status: str = "failed") -> dict:
    """A unit of work that produced no measurement: its identity and the reason."""
    return _base(kind, status, **identity_fields, error=error)
