"""The JSON Lines row schema shared by every command, and its reader and writer.

One row is one prediction, measurement, evaluation or published number; a report can mix them.
Common keys: ``schema_version``, ``kind`` (prediction | profile | eval | published), ``model``,
``gpu`` (``cpu`` on a CPU), ``reducer`` (``none`` for the baseline), ``keep``,
``visual_tokens``, ``text_tokens``, ``status`` (ok | failed | oom, with ``error``). Values carry
units in their names (``prefill_time_s``, ``energy_j``, ``flops``...); a value that could not be
obtained is ``null`` with ``<name>_unavailable_reason`` beside it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Iterator

SCHEMA_VERSION = 1
KINDS = ("prediction", "profile", "eval", "published", "reducer-timing", "reducer-ops", "graph-timing")


class RowError(ValueError):
    """A JSON Lines file or row that does not follow the schema."""


def _clean(value):
    """JSON has no NaN/inf: they become null (the caller adds a reason)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def prediction_rows(sweep) -> list[dict]:
    """One ``kind: prediction`` row per (GPU, batch, keep) of a :class:`costmodel.Sweep`."""
    rows = []
    opts = sweep.options
    for gi, gpu in enumerate(sweep.gpus):
        for bi, batch in enumerate(sweep.batch):
            for ki, keep in enumerate(sweep.keep):
                def pick(d, k):
                    return float(d[k][gi, bi, min(ki, d[k].shape[2] - 1)])
                row = {
                    "schema_version": SCHEMA_VERSION, "kind": "prediction", "status": "ok",
                    "model": sweep.model, "gpu": gpu, "reducer": "any", "keep": int(keep),
                    "visual_tokens": sweep.visual_tokens, "text_tokens": sweep.text_tokens,
                    "batch": int(batch), "retention": int(keep) / sweep.visual_tokens,
                    "mode": opts.compat or "corrected", "stage": opts.stage,
                    "options": {"w_bits": opts.w_bits, "a_bits": opts.a_bits, "kv_bits": opts.kv,
                                "flash_attention": opts.flash_attention, "all_logits": opts.all_logits},
                }
                for k in sweep.reduced:
                    row[f"baseline_{k}"] = pick(sweep.baseline, k)
                    row[k] = pick(sweep.reduced, k)
                    row[f"saved_{k}"] = pick(sweep.savings, k)
                if opts.stage == "prefill":
                    row["prefill_time_s"] = row["time_s"]
                rows.append(_clean(row))
    return rows


def append_rows(path: str | Path, rows: Iterable[dict]) -> int:
    """Append rows to a JSON Lines file, one flushed and fsynced line each (a crash loses none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(_clean(row), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            n += 1
    return n


def read_rows(path: str | Path) -> Iterator[dict]:
    """Rows of a JSON Lines file. A torn last line (a crash mid-write) is skipped; any other
    malformed line is an error naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise RowError(f"cannot read rows file {str(path)!r}: {e.strerror}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                continue  # the last write was cut short; resume redoes that condition
            raise RowError(f"{path}:{i}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or row.get("kind") not in KINDS:
            raise RowError(f"{path}:{i}: not a row of this suite (kind must be one of {', '.join(KINDS)})")
        yield row
