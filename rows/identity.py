"""What makes two rows the same measurement, per kind: the resume key."""

from __future__ import annotations

import json

#: per kind: top-level fields, and the ``options`` fields, that identify a row
_FIELDS = {
    "profile": (("model", "gpu", "reducer", "keep", "image", "dtype", "attn_implementation", "batch"),
                ("text_tokens", "positions", "decode_steps", "reducer_params", "cuda_graphs")),
    "eval": (("benchmark", "model", "reducer", "keep", "sample_id", "summary"),
             ("reducer_params", "max_new_tokens", "ablate_image", "fidelity")),
    "prediction": (("model", "gpu", "reducer", "keep", "batch", "mode", "stage"), ("output_tokens",)),
    "published": (("source", "model", "reducer", "keep", "benchmark"), ("reducer_params",)),
    "reducer-timing": (("reducer", "keep", "dtype", "device", "gpu", "batch"), ()),
    "reducer-ops": (("reducer", "keep", "dtype", "device", "batch"), ()),
    "graph-timing": (("model", "gpu", "part", "batch", "keep", "dtype"), ()),
}
_DEFAULTS = {"batch": 1, "summary": False}


def identity(row: dict) -> str:
    """A canonical string: equal for two rows of one kind that measure the same thing under
    the same options (reducer parameters and generation options included)."""
    kind = row.get("kind")
    if kind not in _FIELDS:
        raise ValueError(f"no identity for row kind {kind!r}")
    top, opts = _FIELDS[kind]
    options = row.get("options") or {}
    ident = {"kind": kind, **{k: row.get(k, _DEFAULTS.get(k)) for k in top},
             "options": {k: options.get(k) for k in opts}}
    return json.dumps(ident, sort_keys=True, default=str)
