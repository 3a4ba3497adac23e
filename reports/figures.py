"""Figures, each with units on its axes and its data source in the caption."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SAVINGS_LABELS = {  # the curves are percentages saved: no units in their names
    "flops": "FLOPs",
    "memory_access_bytes": "memory access",
    "activation_memory_bytes": "activation memory",
    "kv_cache_bytes": "KV cache",
    "time_s": "LLM prefill time",
    "ttft_s": "time to first token, whole VLM",
}


def plot_predicted_savings(retention, savings: dict, *, title: str, caption: str, path: str | Path,
                           mark: float | None = 0.11) -> Path:
    """Fraction saved vs visual-token retention, one curve per quantity (the paper's Fig. 2 as curves).

    ``retention``: 1-D array in (0, 1]; ``savings[name]``: same-length fractions in [0, 1].
    """
    r = np.asarray(retention, dtype=float)
    order = np.argsort(r)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for key, label in SAVINGS_LABELS.items():
        if key in savings:
            ax.plot(r[order] * 100, np.asarray(savings[key], dtype=float)[order] * 100, marker="o", ms=3,
                    label=label)
    if mark is not None:
        ax.axvline(mark * 100, color="grey", ls=":", lw=1)
        ax.text(mark * 100, 2, f" {mark:.0%} kept", color="grey", fontsize=8)
    ax.set_xlabel("visual tokens kept (% of all visual tokens)")
    ax.set_ylabel("saved vs. all visual tokens (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.text(0.01, 0.01, caption, fontsize=7, color="dimgrey", wrap=True)
    CAPTIONS[Path(path).name] = f"{title}. {caption}"
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, path)


#: figure file name -> "title. caption", for the HTML page's figure captions
CAPTIONS: dict[str, str] = {}


def _caption(fig, text):
    fig.text(0.01, 0.01, text, fontsize=7, color="dimgrey", wrap=True)


def _finish(fig, ax, *, xlabel, ylabel, title, caption, path, grid="both", title_pad=6):
    """Axis labels (with units), title, grid, source caption, then write the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, pad=title_pad)
    ax.grid(alpha=0.3, axis=grid)
    _caption(fig, caption)
    CAPTIONS[Path(path).name] = f"{title}. {caption}"
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)  # bbox_inches="tight" in _save keeps every label inside the image


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_measured_vs_predicted(points, *, title, caption, path):
    """points: dicts with predicted_ms, measured_ms, calibrated_ms (or None), reducer."""
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=120)
    if points:
        p = np.array([x["predicted_ms"] for x in points])
        m = np.array([x["measured_ms"] for x in points])
        ax.scatter(p, m, s=18, label="roofline prediction", color="tab:blue")
        cal = [x for x in points if x.get("calibrated_ms") is not None]
        if cal:
            ax.scatter([x["calibrated_ms"] for x in cal], [x["measured_ms"] for x in cal], s=18, marker="x",
                       color="tab:orange", label="after calibration")
        every = np.concatenate([p, m, [x["calibrated_ms"] for x in cal]])
        every = every[every > 0]
        if every.size and every.max() / every.min() > 20:  # points span decades: log axes keep them apart
            lim = [every.min() / 1.5, every.max() * 1.5]
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:
            lim = [0, max(every.max() if every.size else 1.0, 1e-9) * 1.1]
        ax.plot(lim, lim, color="grey", lw=1, ls="--", label="measured = predicted")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
    return _finish(fig, ax, xlabel="predicted LLM prefill time (ms)", ylabel="measured LLM prefill time (ms)", title=title, caption=caption, path=path)


PHASE_COLORS = {"preprocess": "#9e9e9e", "vision": "#1f77b4", "projector": "#17becf", "reducer": "#d62728",
                "prefill": "#2ca02c", "decode": "#bcbd22"}


def plot_phases(labels, phases, ci=None, *, title, caption, path):
    """Stacked horizontal bars, one row per condition (readable for 50+ conditions, top to bottom
    in the given order): labels [str], phases {phase: [ms or None per label]}; ci: per label
    [lo, hi] of the request time (ms) or None, drawn as whiskers."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(8.4, max(3.2, 0.24 * n + 1.6)), dpi=120)
    y = np.arange(n)
    left = np.zeros(n)
    for phase, vals in phases.items():
        v = np.array([0.0 if x is None else x for x in vals])
        if not v.any():
            continue
        ax.barh(y, v, left=left, height=0.75, label=phase, color=PHASE_COLORS.get(phase))
        left += v
    base = next((left[i] for i, lab in enumerate(labels) if str(lab).startswith("none@")), None)
    if base:  # the unreduced request: a bar ending left of this line is a net gain
        ax.axvline(base, color="black", ls=":", lw=1)
        ax.text(base, n - 0.5, " all tokens", fontsize=7, va="bottom")
    if ci:
        for i, c in enumerate(ci):
            if c:
                ax.plot(c, [i, i], color="black", lw=0.9)
                ax.plot([c[0], c[0]], [i - 0.2, i + 0.2], color="black", lw=0.9)
                ax.plot([c[1], c[1]], [i - 0.2, i + 0.2], color="black", lw=0.9)
    ax.set_yticks(y, labels, fontsize=8 if n <= 40 else 7)
    ax.set_ylim(n - 0.5, -0.5)  # first condition on top
    ax.legend(fontsize=8, ncols=min(6, len(phases)), loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False)
    return _finish(fig, ax, xlabel="time per request (ms)", ylabel="reducer @ visual tokens kept",
                   title=title, caption=caption, path=path, grid="x", title_pad=22)


def _whiskers(p, key, ci_key):
    ci = p.get(ci_key)
    return None if not ci else [[p[key] - ci[0]], [ci[1] - p[key]]]


def plot_accuracy_vs_cost(points, front, *, xlabel, title, caption, path, floors: dict | None = None):
    """points: dicts with cost, cost_ci, accuracy_pct, accuracy_ci, label ("reducer@keep"); front:
    Pareto indices; floors: {ablation: accuracy %}, drawn as dashed lines (what the model gets
    without looking). One colour per reducer, its budgets joined; faint whiskers (95% intervals);
    the axes fit the points, so a very wide interval runs off the frame instead of squeezing it."""
    fig, ax = plt.subplots(figsize=(9.2, 5.6), dpi=120)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(points):
        groups.setdefault(p["label"].split("@")[0], []).append(i)
    palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (6, 7)]  # red is the front's
    for g, (name, idx) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0] != "none", kv[0]))):
        idx = sorted(idx, key=lambda i: points[i]["cost"])
        colour = "black" if name == "none" else palette[g % len(palette)]
        for i in idx:
            p = points[i]
            ax.errorbar(p["cost"], p["accuracy_pct"], xerr=_whiskers(p, "cost", "cost_ci"),
                        yerr=_whiskers(p, "accuracy_pct", "accuracy_ci"), fmt="none", ecolor=colour, alpha=0.3,
                        lw=0.7, zorder=1)
        ax.plot([points[i]["cost"] for i in idx], [points[i]["accuracy_pct"] for i in idx], ls="-", lw=0.8,
                marker="*" if name == "none" else "o", ms=11 if name == "none" else 5, color=colour, zorder=2,
                label="all tokens" if name == "none" else name)
    for i in front:
        p = points[i]
        ax.plot(p["cost"], p["accuracy_pct"], "o", ms=10, mfc="none", mec="tab:red", mew=1.2, zorder=3)
        ax.annotate(p["label"], (p["cost"], p["accuracy_pct"]), fontsize=7, xytext=(6, 4), textcoords="offset points")
    if front:
        f = sorted((points[i]["cost"], points[i]["accuracy_pct"]) for i in front)
        ax.step([x for x, _ in f], [y for _, y in f], where="post", color="tab:red", lw=1, label="Pareto front")
    xs = [p["cost"] for p in points]
    ys = [p["accuracy_pct"] for p in points] + list((floors or {}).values())
    if xs:
        span = max(xs) - min(xs) or max(xs) * 0.1 or 1.0
        ax.set_xlim(min(xs) - 0.08 * span, max(xs) + 0.08 * span)
        yspan = max(ys) - min(ys) or 2.0
        ax.set_ylim(min(ys) - 0.25 * yspan, max(ys) + 0.25 * yspan)
    for name, acc in sorted((floors or {}).items()):
        ax.axhline(acc, color="grey", ls="--", lw=1)
        ax.text(ax.get_xlim()[0], acc, f" image {name}: {acc:.1f}%", fontsize=7, color="dimgrey", va="bottom")
    if points:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    caption += " Whiskers: 95% intervals (those wider than the frame run off it); labels: the Pareto front."
    return _finish(fig, ax, xlabel=xlabel, ylabel="accuracy (%)", title=title, caption=caption, path=path)


def plot_published(series, *, title, caption, path):
    """series: {reducer: [(keep, accuracy_pct)]} of published rows, drawn hollow (not measured here)."""
    fig, ax = plt.subplots(figsize=(6.8, 4.8), dpi=120)
    for name, pts in sorted(series.items()):
        pts = sorted(pts)
        ax.plot([k for k, _ in pts], [a for _, a in pts], marker="o", mfc="none", ls="--", label=name)
    ax.legend(fontsize=7)
    return _finish(fig, ax, xlabel="visual tokens kept", ylabel="accuracy, mean over the reported benchmarks (%)",
                   title=title, caption=caption, path=path)
