"""Rows in, the report's numbers out: grouping, net gain, Pareto fronts. Pure functions."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass


class ReportError(ValueError):
    """Rows a report cannot be made from."""


def check_rows(rows: list[dict], group_by: str | None) -> None:
    if not rows:
        raise ReportError("no rows: the input files are empty")
    for kind in ("profile", "eval"):
        measured = [r for r in rows if r.get("kind") == kind]
        models = sorted({str(r.get("model")) for r in measured})
        gpus = sorted({str(r.get("gpu")) for r in measured})
        if len(models) > 1 and group_by != "model":
            raise ReportError(f"{kind} rows of different models are mixed ({', '.join(models)}); "
                              "pass --group-by model, or report them separately")
        if kind == "profile" and len(gpus) > 1 and group_by != "gpu":
            raise ReportError(f"profile rows from different GPUs are mixed ({', '.join(gpus)}); timings of "
                              "different GPUs are never averaged together: pass --group-by gpu")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs):
    """Interquartile range of a list (None below 2 values)."""
    xs = sorted(x for x in xs if x is not None)
    if len(xs) < 2:
        return None
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


@dataclass
class Condition:
    """A (reducer, keep) of one model on one GPU at one batch size, aggregated over images and
    benchmarks. Times and energies are per call (one batch); ``energy_per_request_j`` divides by
    the batch."""

    model: str
    gpu: str
    reducer: str
    keep: int
    batch: int = 1
    n_images: int = 0
    phases_s: dict | None = None          # phase -> median over images of the per-image medians
    request_time_s: float | None = None
    request_time_iqr_s: float | None = None
    gpu_time_s: float | None = None
    prefill_time_s: float | None = None
    reducer_time_s: float | None = None
    energy_j: float | None = None
    energy_reason: str | None = None
    accuracy: float | None = None
    accuracy_n: int = 0
    top1_agree: float | None = None
    kl_first_token: float | None = None


PHASES = ("preprocess", "vision", "projector", "reducer", "prefill", "decode")


def conditions(rows: list[dict]) -> dict[tuple, Condition]:
    """Profile and eval rows joined by (model, gpu, reducer, keep, batch); batches never mix."""
    prof = defaultdict(list)
    for r in rows:
        if r.get("kind") == "profile" and r.get("status") == "ok":
            prof[(r["model"], r["gpu"], r["reducer"], int(r["keep"]), int(r.get("batch") or 1))].append(r)
    out: dict[tuple, Condition] = {}
    for key, rs in prof.items():
        c = Condition(*key, n_images=len(rs))
        c.phases_s = {p: median([x.get(f"{p}_time_s") for x in rs]) for p in PHASES}
        c.request_time_s = median([x.get("request_time_s") for x in rs])
        c.request_time_iqr_s = spread([x.get("request_time_s") for x in rs])
        c.gpu_time_s = median([x.get("gpu_time_s") for x in rs])
        c.prefill_time_s = median([x.get("prefill_time_s") for x in rs])
        c.reducer_time_s = median([x.get("reducer_time_s") for x in rs])
        c.energy_j = median([x.get("energy_j") for x in rs])
        if c.energy_j is None:
            c.energy_reason = next((x.get("energy_unavailable_reason") for x in rs if x.get("energy_unavailable_reason")),
                                   "no energy in the rows")
        out[key] = c
    evals = defaultdict(list)
    for r in rows:
        if r.get("kind") == "eval" and r.get("summary") and r.get("status") == "ok" and r.get("accuracy") is not None:
            evals[(r["model"], r["reducer"], int(r["keep"]) if r.get("keep") is not None else None)].append(r)
    for (model, reducer, keep), rs in evals.items():
        matches = [c for k, c in out.items() if k[0] == model and k[2] == reducer and k[3] == keep]
        if not matches:
            c = Condition(model, "n/a", reducer, keep, energy_reason="no profile row for this condition")
            out[(model, "n/a", reducer, keep, 1)] = c
            matches = [c]
        last = {r["benchmark"]: r for r in rs}  # the latest summary per benchmark
        acc = sum(r["accuracy"] for r in last.values()) / len(last)
        for c in matches:
            c.accuracy = acc
            c.accuracy_n = sum(r.get("n", 0) for r in last.values())
            c.top1_agree = median([r.get("top1_agree") for r in last.values()])
            c.kl_first_token = median([r.get("kl_first_token") for r in last.values()])
    return out


def baseline_of(conds: dict[tuple, Condition], c: Condition) -> Condition | None:
    for k, b in conds.items():
        if k[0] == c.model and k[1] == c.gpu and k[2] == "none" and k[4] == c.batch:
            return b
    return None


def net_gain(conds: dict[tuple, Condition]) -> list[dict]:
    """Per condition: speedup, energy saved, accuracy change, reducer overhead vs. saved time."""
    rows = []
    for key in sorted(conds, key=lambda k: (k[0], k[1], k[4], k[2] != "none", k[2], k[3])):
        c = conds[key]
        b = baseline_of(conds, c)
        row = {"model": c.model, "gpu": c.gpu, "batch": c.batch, "reducer": c.reducer, "keep": c.keep,
               "n_images": c.n_images,
               "request_time_ms": None if c.request_time_s is None else c.request_time_s * 1e3,
               "request_time_iqr_ms": None if c.request_time_iqr_s is None else c.request_time_iqr_s * 1e3,
               "speedup": None, "energy_j": c.energy_j, "energy_saved_j": None, "energy_saved_pct": None,
               "accuracy_pct": None if c.accuracy is None else 100 * c.accuracy, "accuracy_change_pts": None,
               "reducer_overhead_ms": None if c.reducer_time_s is None else c.reducer_time_s * 1e3,
               "overhead_pct_of_saved": None, "net_saved_ms": None,
               "energy_note": None if c.energy_j is not None else f"not measured ({c.energy_reason})"}
        if b is not None and b is not c:
            if b.request_time_s and c.request_time_s:
                row["speedup"] = b.request_time_s / c.request_time_s
            if b.energy_j and c.energy_j:
                row["energy_saved_j"] = b.energy_j - c.energy_j
                row["energy_saved_pct"] = 100 * (b.energy_j - c.energy_j) / b.energy_j
            if b.accuracy is not None and c.accuracy is not None:
                row["accuracy_change_pts"] = 100 * (c.accuracy - b.accuracy)
            if b.gpu_time_s is not None and c.gpu_time_s is not None and c.reducer_time_s is not None:
                # time the reduction saves downstream, before paying for the reducer itself
                saved = (b.gpu_time_s - (b.reducer_time_s or 0)) - (c.gpu_time_s - c.reducer_time_s)
                row["net_saved_ms"] = (saved - c.reducer_time_s) * 1e3
                if saved > 0:
                    row["overhead_pct_of_saved"] = 100 * c.reducer_time_s / saved
        rows.append(row)
    return rows


def break_even(rows: list[dict]) -> dict[str, str]:
    """Per reducer: the budget where its overhead eats the gain (net saved time crosses 0),
    interpolated between measured budgets; or a statement of which side the range is on."""
    out = {}
    by = defaultdict(list)
    for r in rows:
        if r["reducer"] != "none" and r["net_saved_ms"] is not None:
            by[(r["model"], r["gpu"], r["reducer"], r.get("batch", 1))].append((r["keep"], r["net_saved_ms"]))
    for (model, gpu, red, batch), pts in by.items():
        pts.sort()
        text = None
        for (k0, v0), (k1, v1) in zip(pts, pts[1:]):
            if (v0 > 0) != (v1 > 0):
                k = k0 + (k1 - k0) * v0 / (v0 - v1)
                text = f"net gain reaches 0 at about keep = {k:.0f}"
                break
        if text is None:
            text = ("net gain at every measured budget" if all(v > 0 for _, v in pts)
                    else "the overhead exceeds the saving at every measured budget")
        out[red if batch == 1 else f"{red} (batch {batch})"] = text
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower or equal cost and higher or equal
    accuracy, one of them strictly. points: (cost, accuracy)."""
    front = []
    for i, (c, a) in enumerate(points):
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front
