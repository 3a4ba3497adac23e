"""Rows in, the report's numbers out: conditions with their uncertainty, net gain, Pareto fronts.

Pure functions. Three rules keep a report honest:

* batches, models and GPUs never mix: a condition is (model, gpu, batch, reducer, keep);
* accuracy is compared on the samples every condition of a (model, benchmark, options) shares,
  with n and a Wilson 95% interval per condition, and the difference to the baseline with its
  own paired interval; a difference inside it is "within noise";
* a time carries its 95% interval (the bootstrap CI of each row's median; the IQR over images
  when there are several), a speedup the interval of the ratio, and a speedup whose interval
  includes 1.0, or a break-even drawn from such rows, is "within noise" rather than a finding.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field


class ReportError(ValueError):
    """Rows a report cannot be made from."""


def check_rows(rows: list[dict], group_by: str | None) -> None:
    if not rows:
        raise ReportError("no rows: the input files are empty")
    for kind in ("profile", "eval"):
        measured = [r for r in rows if r.get("kind") == kind and r.get("source") is None]
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


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def spread(xs):
    """Interquartile range of a list (None below 2 values)."""
    xs = sorted(x for x in xs if x is not None)
    if len(xs) < 2:
        return None
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


def wilson(successes: float, n: int, z: float = 1.96):
    if not n:
        return None
    p = successes / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / d
    return (max(0.0, c - h), min(1.0, c + h))


@dataclass
class Condition:
    """A (reducer, keep) of one model on one GPU at one batch size, aggregated over images and
    benchmarks. Times and energies are per call (one batch)."""

    model: str
    gpu: str
    reducer: str
    keep: int
    batch: int = 1
    n_images: int = 0
    reps: int | None = None
    warmup: int | None = None
    phases_s: dict | None = None          # phase -> median over images of the per-image medians
    request_time_s: float | None = None
    request_time_ci_s: tuple | None = None
    request_time_iqr_s: float | None = None
    gpu_time_s: float | None = None
    gpu_time_ci_s: tuple | None = None
    prefill_time_s: float | None = None
    reducer_time_s: float | None = None
    reducer_reason: str | None = None
    energy_j: float | None = None
    energy_reason: str | None = None
    noisy: bool = False
    accuracy: float | None = None
    accuracy_ci: tuple | None = None
    accuracy_n: int = 0
    accuracy_note: str | None = None
    accuracy_change_ci: tuple | None = None   # vs the baseline, paired on the shared samples
    by_kind: dict = field(default_factory=dict)  # question kind -> (accuracy, (lo, hi), n)
    top1_agree: float | None = None
    kl_first_token: float | None = None
    answer_agree: float | None = None
    kept_tokens: float | None = None          # visual tokens the LLM received, mean (a method may differ from keep)
    ablation: str | None = None               # "blank" / "shuffle": what the model gets without looking


def _ci_of(rs: list[dict], phase: str):
    """The 95% interval of a phase time: the row's bootstrap CI (one image), else the medians
    of the per-image CI bounds."""
    cis = [r.get("stats", {}).get(phase, {}).get("ci95") for r in rs]
    cis = [c for c in cis if c]
    if not cis:
        return None
    return (median([c[0] for c in cis]), median([c[1] for c in cis]))


def _profile_conditions(rows) -> dict[tuple, Condition]:
    prof = defaultdict(list)
    for r in rows:
        if r.get("kind") == "profile" and r.get("status") == "ok":
            prof[(r["model"], r["gpu"], r["reducer"], int(r["keep"]), int(r.get("batch") or 1))].append(r)
    out = {}
    for key, rs in prof.items():
        c = Condition(*key, n_images=len({r.get("image") for r in rs}))
        c.reps, c.warmup = (rs[0].get("options") or {}).get("reps"), (rs[0].get("options") or {}).get("warmup")
        c.phases_s = {p: median([x.get(f"{p}_time_s") for x in rs]) for p in PHASES}
        c.request_time_s = median([x.get("request_time_s") for x in rs])
        c.request_time_iqr_s = spread([x.get("request_time_s") for x in rs])
        c.request_time_ci_s = _ci_of(rs, "request")
        c.gpu_time_s = median([x.get("gpu_time_s") for x in rs])
        c.gpu_time_ci_s = _ci_of(rs, "gpu")
        c.prefill_time_s = median([x.get("prefill_time_s") for x in rs])
        c.reducer_time_s = median([x.get("reducer_time_s") for x in rs])
        c.kept_tokens = median([x.get("kept_tokens") for x in rs])
        if c.reducer_time_s is None:
            c.reducer_reason = next((x.get("reducer_time_s_unavailable_reason") for x in rs
                                     if x.get("reducer_time_s_unavailable_reason")), None)
        c.energy_j = median([x.get("energy_j") for x in rs])
        c.noisy = any("request" in (x.get("noisy_phases") or []) for x in rs)
        if c.energy_j is None:
            c.energy_reason = next((x.get("energy_unavailable_reason") for x in rs if x.get("energy_unavailable_reason")),
                                   "no energy in the rows")
        out[key] = c
    return out


PHASES = ("preprocess", "vision", "projector", "reducer", "prefill", "decode")


def _eval_groups(rows):
    """Per (model, benchmark, reducer, keep, options): the latest ok sample rows by sample id."""
    groups = defaultdict(dict)
    for r in rows:
        if r.get("kind") == "eval" and not r.get("summary") and r.get("status") == "ok" and r.get("score") is not None:
            opts = r.get("options") or {}
            key = (r["model"], r["benchmark"], r["reducer"], r.get("keep"),
                   opts.get("ablate_image"), opts.get("max_new_tokens"))
            groups[key][r["sample_id"]] = r
    return groups


def _shared_accuracy(groups) -> dict:
    """Accuracy of each eval condition on the samples all conditions of its (model, benchmark)
    share; n, Wilson CI, per-kind accuracy, and a note when the sample sets differed."""
    by_bench = defaultdict(list)
    for key in groups:
        by_bench[(key[0], key[1], key[5])].append(key)
    out = {}
    for keys in by_bench.values():
        shared = set.intersection(*(set(groups[k]) for k in keys))
        for k in keys:
            rs = [groups[k][s] for s in sorted(shared)]
            scores = [r["score"] for r in rs]
            acc = sum(scores) / len(scores) if scores else None
            note = None if len(groups[k]) == len(shared) else \
                f"compared on the {len(shared)} samples every condition has (this one has {len(groups[k])})"
            kinds = defaultdict(list)
            for r in rs:
                if r.get("question_kind"):
                    kinds[r["question_kind"]].append(r["score"])
            out[k] = {"accuracy": acc, "ci": wilson(sum(scores), len(scores)), "n": len(scores), "note": note,
                      "scores": dict(zip(sorted(shared), scores)), "rows": rs,
                      "by_kind": {q: (sum(v) / len(v), wilson(sum(v), len(v)), len(v)) for q, v in kinds.items()}}
    return out


def paired_difference(a: dict, b: dict):
    """(mean of b - a, 95% interval) over the samples both have (paired per-sample scores)."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None, None
    d = [b[s] - a[s] for s in common]
    m = sum(d) / len(d)
    sd = statistics.stdev(d)
    h = 1.96 * sd / math.sqrt(len(d))
    return m, (m - h, m + h)


def conditions(rows: list[dict]) -> dict[tuple, Condition]:
    """Profile and eval rows joined by (model, gpu, reducer, keep, batch); batches never mix."""
    out = _profile_conditions(rows)
    acc = _shared_accuracy(_eval_groups(rows))
    base = {(k[0], k[1]): v for k, v in acc.items() if k[2] == "none" and k[4] is None}
    for (model, bench, reducer, keep, ablation, _), a in acc.items():
        label = reducer if ablation is None else f"{reducer} (image {ablation})"
        matches = [c for k, c in out.items() if k[0] == model and k[2] == reducer and k[3] == keep
                   and ablation is None]
        if not matches:
            c = Condition(model, "n/a", label, keep if keep is not None else -1, energy_reason="no profile row")
            out[(model, "n/a", label, c.keep, 1)] = c
            matches = [c]
        b = base.get((model, bench))
        change = paired_difference(b["scores"], a["scores"])[1] if b is not None and b is not a else None
        for c in matches:
            c.accuracy, c.accuracy_ci, c.accuracy_n, c.accuracy_note = a["accuracy"], a["ci"], a["n"], a["note"]
            c.accuracy_change_ci, c.by_kind, c.ablation = change, a["by_kind"], ablation
            # per-sample 0/1 agreements and KLs: their MEAN (a median of 0/1 values reads 100%)
            c.top1_agree = mean([r.get("top1_agree") for r in a["rows"]])
            c.kl_first_token = mean([r.get("kl_first_token") for r in a["rows"]])
            c.answer_agree = mean([r.get("answer_agree") for r in a["rows"]])
            kept = mean([r.get("kept_tokens") for r in a["rows"]])
            c.kept_tokens = c.kept_tokens if kept is None else kept
    _summary_only(rows, out)
    return out


def _summary_only(rows, out) -> None:
    """Eval summaries without sample rows (imported from lmms-eval, or files of summaries only):
    their own accuracy, n and interval; the latest summary per condition wins."""
    have = {(c.model, c.reducer, c.keep) for c in out.values() if c.accuracy is not None}
    latest = {}
    for r in rows:
        if r.get("kind") == "eval" and r.get("summary") and r.get("accuracy") is not None:
            key = (r["model"], r["reducer"], r.get("keep") if r.get("keep") is not None else -1)
            if key not in have:
                latest[key] = r
    base = {k[0]: r for k, r in latest.items() if k[1] == "none"}
    for key, r in latest.items():
        matches = [c for k, c in out.items() if (k[0], k[2], k[3]) == key] or [out.setdefault(
            (key[0], "n/a", key[1], key[2], 1), Condition(key[0], "n/a", key[1], key[2], energy_reason="no profile row"))]
        n = int(r.get("n") or 0)
        for c in matches:
            c.accuracy, c.accuracy_n = r["accuracy"], n
            c.accuracy_ci = tuple(r["accuracy_ci95"]) if r.get("accuracy_ci95") else wilson(r["accuracy"] * n, n)
            c.top1_agree, c.kl_first_token = r.get("top1_agree"), r.get("kl_first_token")
            c.answer_agree = r.get("answer_agree")
            c.accuracy_note = f"summary only ({r['source']})" if r.get("source") else "summary only (no sample rows)"
        b = base.get(key[0])
        if b is not None and key[1] != "none" and b.get("n") and n:  # unpaired: both proportions' variances
            pb, pc, nb = b["accuracy"], r["accuracy"], int(b["n"])
            h = 1.96 * math.sqrt(pb * (1 - pb) / nb + pc * (1 - pc) / n)
            for c in matches:
                c.accuracy_change_ci = (pc - pb - h, pc - pb + h)


def baseline_of(conds: dict[tuple, Condition], c: Condition) -> Condition | None:
    for k, b in conds.items():
        if k[0] == c.model and k[1] == c.gpu and k[2] == "none" and k[4] == c.batch:
            return b
    return None


def _ratio_ci(b: Condition, c: Condition):
    if not (b.request_time_ci_s and c.request_time_ci_s):
        return None
    (blo, bhi), (clo, chi) = b.request_time_ci_s, c.request_time_ci_s
    return (blo / chi, bhi / clo) if clo > 0 and chi > 0 else None


def net_gain(conds: dict[tuple, Condition]) -> list[dict]:
    """Per condition: speedup (with its interval), energy saved, accuracy change, reducer overhead."""
    rows = []
    for key in sorted(conds, key=lambda k: (k[0], k[1], k[4], k[2] != "none", k[2], k[3])):
        c = conds[key]
        rows.append(_gain_row(c, baseline_of(conds, c)))
    return rows


def _gain_row(c: Condition, b: Condition | None) -> dict:
    row = {"model": c.model, "gpu": c.gpu, "batch": c.batch, "reducer": c.reducer, "keep": c.keep,
           "n_images": c.n_images, "request_time_ms": None if c.request_time_s is None else c.request_time_s * 1e3,
           "request_time_ci_ms": None if not c.request_time_ci_s else [x * 1e3 for x in c.request_time_ci_s],
           "request_time_iqr_ms": None if c.request_time_iqr_s is None else c.request_time_iqr_s * 1e3,
           "speedup": None, "speedup_ci": None, "within_noise": None, "energy_j": c.energy_j, "energy_saved_j": None,
           "energy_saved_pct": None, "accuracy_pct": None if c.accuracy is None else 100 * c.accuracy,
           "accuracy_ci_pct": None if not c.accuracy_ci else [100 * x for x in c.accuracy_ci],
           "accuracy_n": c.accuracy_n, "accuracy_change_pts": None, "accuracy_change_ci_pts": None,
           "accuracy_change_within_noise": None,
           "reducer_overhead_ms": None if c.reducer_time_s is None else c.reducer_time_s * 1e3,
           "reducer_overhead_note": None if c.reducer_time_s is not None or c.reducer == "none" else
           f"not measured ({c.reducer_reason or 'no reducer time in the rows'})",
           "overhead_pct_of_saved": None, "net_saved_ms": None, "noisy": c.noisy,
           "energy_note": None if c.energy_j is not None else f"not measured ({c.energy_reason})"}
    if b is None or b is c:
        return row
    if b.request_time_s and c.request_time_s:
        row["speedup"] = b.request_time_s / c.request_time_s
        row["speedup_ci"] = _ratio_ci(b, c)
        row["within_noise"] = row["speedup_ci"] is not None and row["speedup_ci"][0] <= 1.0 <= row["speedup_ci"][1]
    if b.energy_j and c.energy_j:
        row["energy_saved_j"] = b.energy_j - c.energy_j
        row["energy_saved_pct"] = 100 * (b.energy_j - c.energy_j) / b.energy_j
    if b.accuracy is not None and c.accuracy is not None:
        row["accuracy_change_pts"] = 100 * (c.accuracy - b.accuracy)
        if c.accuracy_change_ci:
            lo, hi = (100 * x for x in c.accuracy_change_ci)
            row["accuracy_change_ci_pts"] = [lo, hi]
            row["accuracy_change_within_noise"] = lo <= 0 <= hi
    if b.gpu_time_s is not None and c.gpu_time_s is not None and c.reducer_time_s is not None:
        # time the reduction saves downstream, before paying for the reducer itself
        saved = (b.gpu_time_s - (b.reducer_time_s or 0)) - (c.gpu_time_s - c.reducer_time_s)
        row["net_saved_ms"] = (saved - c.reducer_time_s) * 1e3
        if saved > 0:
            row["overhead_pct_of_saved"] = 100 * c.reducer_time_s / saved
        row["nothing_saved"] = saved <= 0
    return row


def break_even(rows: list[dict]) -> dict[str, str]:
    """Per reducer: the budget where its overhead eats the gain (net saved time crosses 0),
    interpolated between measured budgets; or which side the range is on; "within noise" when
    the speedups it rests on are."""
    out = {}
    by = defaultdict(list)
    for r in rows:
        if r["reducer"] != "none" and r["net_saved_ms"] is not None:
            by[(r["model"], r["gpu"], r["reducer"], r.get("batch", 1))].append(r)
    for (model, gpu, red, batch), rs in by.items():
        pts = sorted((r["keep"], r["net_saved_ms"]) for r in rs)
        text = None
        for (k0, v0), (k1, v1) in zip(pts, pts[1:]):
            if (v0 > 0) != (v1 > 0):
                text = f"net gain reaches 0 at about keep = {k0 + (k1 - k0) * v0 / (v0 - v1):.0f}"
                break
        if text is None:
            text = ("net gain at every measured budget" if all(v > 0 for _, v in pts)
                    else "the overhead exceeds the saving at every measured budget")
        noisy = sorted(r["keep"] for r in rs if r.get("within_noise"))
        if len(noisy) == len(rs):
            text = f"within noise ({text}, but the speedups' intervals include 1.0)"
        elif noisy:
            text += f" (the speedup's interval includes 1.0 at keep = {', '.join(map(str, noisy))})"
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


def protocol(conds: dict[tuple, Condition]) -> str:
    """The timing protocol the conditions were measured with, in one sentence."""
    prof = [c for c in conds.values() if c.n_images]
    if not prof:
        return ""
    imgs = sorted({c.n_images for c in prof})
    reps = sorted({c.reps for c in prof if c.reps is not None})
    warm = sorted({c.warmup for c in prof if c.warmup is not None})
    return (f"Protocol: {'/'.join(map(str, imgs))} image(s) x {'/'.join(map(str, reps)) or '?'} timed repetitions "
            f"after {'/'.join(map(str, warm)) or '?'} warm-up runs per condition, conditions interleaved; medians "
            "with bootstrap 95% intervals.")
