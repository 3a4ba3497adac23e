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
