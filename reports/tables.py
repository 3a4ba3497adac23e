"""Plain-text and Markdown tables with units in their headers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

_PREFIXES = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]


def si(value: float | None, digits: int = 3) -> str:
    """1.23e12 -> '1.23T'. None -> 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{prefix}"
    return f"{value:.{digits}g}"


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.3f}"


def pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction * 100:.1f}"


def _numeric(cell: str) -> bool:
    if cell in ("n/a", "-", ""):
        return True
    try:
        float(cell.rstrip("kMGTP%"))
        return True
    except ValueError:
        return False


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Aligned columns: numbers right-aligned, text left-aligned."""
    cells = [list(map(str, headers))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = [all(_numeric(r[i]) for r in cells[1:]) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(out)


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Rows (dicts) as a CSV file, the union of their keys as columns."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in keys})
    return path
