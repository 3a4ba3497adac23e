"""Figures, each with units on its axes and its data source in the caption."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SAVINGS_LABELS = {
    "flops": "FLOPs",
    "memory_access_bytes": "memory access (bytes)",
    "activation_memory_bytes": "activation memory (bytes)",
    "kv_cache_bytes": "KV cache (bytes)",
    "time_s": "LLM prefill time (s)",
    "ttft_s": "time to first token, whole VLM (s)",
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
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _caption(fig, text):
    fig.text(0.01, 0.01, text, fontsize=7, color="dimgrey", wrap=True)


def _finish(fig, ax, *, xlabel, ylabel, title, caption, path, grid="both"):
    """Axis labels (with units), title, grid, source caption, then write the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis=grid)
    _caption(fig, caption)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
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
        lim = [0, max(p.max(), m.max(), *(x["calibrated_ms"] for x in cal)) * 1.1]
        ax.plot(lim, lim, color="grey", lw=1, ls="--", label="measured = predicted")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
    return _finish(fig, ax, xlabel="predicted LLM prefill time (ms)", ylabel="measured LLM prefill time (ms)", title=title, caption=caption, path=path)


PHASE_COLORS = {"preprocess": "#9e9e9e", "vision": "#1f77b4", "projector": "#17becf", "reducer": "#d62728",
                "prefill": "#2ca02c", "decode": "#bcbd22"}


def plot_phases(labels, phases, *, title, caption, path):
    """Stacked bars: labels [str], phases {phase: [ms or None per label]}."""
    fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(labels) + 2), 4.8), dpi=120)
    bottom = np.zeros(len(labels))
    for phase, vals in phases.items():
        v = np.array([0.0 if x is None else x for x in vals])
        if not v.any():
            continue
        ax.bar(labels, v, bottom=bottom, label=phase, color=PHASE_COLORS.get(phase))
        bottom += v
    ax.tick_params(axis="x", rotation=75, labelsize=7)
    ax.legend(fontsize=8)
    return _finish(fig, ax, xlabel="reducer@visual tokens kept", ylabel="time per request (ms), median over images",
                   title=title, caption=caption, path=path, grid="y")


def plot_accuracy_vs_cost(points, front, *, xlabel, title, caption, path, missing: str | None = None):
    """points: dicts with cost, accuracy_pct, label; front: indices on the Pareto front."""
    fig, ax = plt.subplots(figsize=(6.8, 5.0), dpi=120)
    if missing:
        ax.text(0.5, 0.5, missing, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=9)
    else:
        for i, p in enumerate(points):
            on = i in front
            ax.scatter(p["cost"], p["accuracy_pct"], s=40 if on else 16, color="tab:red" if on else "tab:blue",
                       zorder=3 if on else 2)
            ax.annotate(p["label"], (p["cost"], p["accuracy_pct"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        if front:
            f = sorted((points[i]["cost"], points[i]["accuracy_pct"]) for i in front)
            ax.step([x for x, _ in f], [y for _, y in f], where="post", color="tab:red", lw=1, label="Pareto front")
            ax.legend(fontsize=8)
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
