"""``vtc saliency``: where the attention-based importance scores point, layer by layer and prompt by prompt.

For an image and a prompt, the full (unreduced) sequence is run once with hidden states kept;
at each requested LLM layer l the scores of every visual token are computed from that layer's
own weights and input rows:

* ``saliency``: :func:`reducers.saliency.cross_modal_saliency`, the very function the saliency
  reducers select with, with the same options (``rope``, ``text``; defaults the paper's: no
  rotary positions, every non-image token as a query). At layer 0 its ranking is the reducer's;
* ``fastv``: the last token's attention to each visual token, heads averaged, with RoPE at the
  tokens' real positions (as FastV ranks inside the LLM);
* ``cls``: the vision tower's CLS attention at the feature layer (one map, layer-independent).

Trend statistics (definitions in :func:`rank_stats`): Trend 1 compares the rankings of every
pair of layers, Trend 2 those of every pair of prompts on the same image, and both are set
against a spatially uniform ranking and a random one, as references.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

import reducers

from vlm import LoadedModel, Runner, identity_reduction, make_request, read_image, template_prompt
from vlm.layerwise import rotated_qk
from vlm.signals import layer_weights, text_rows

SCORES = ("saliency", "fastv", "cls")


class SaliencyError(ValueError):
    pass


def rank_stats(a, b, ks=(64, 128)) -> dict:
    """Agreement of two score vectors over the same tokens.

    spearman: Spearman's rank correlation; kendall: Kendall's tau-b; top{k}: |top-k(a) and
    top-k(b) in common| / k (1 = the same k tokens, k/N expected by chance).
    """
    from scipy.stats import kendalltau, spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"spearman": float(spearmanr(a, b).statistic), "kendall": float(kendalltau(a, b).statistic)}
    for k in ks:
        ta, tb = set(np.argsort(-a, kind="stable")[:k]), set(np.argsort(-b, kind="stable")[:k])
        out[f"top{k}"] = len(ta & tb) / k
    return out


def topk_shared_by_all(score_lists, k) -> float:
    """Share of the top-k that is the same whatever the prompt: |intersection of all top-k| / k."""
    sets = [set(np.argsort(-np.asarray(s, float), kind="stable")[:k]) for s in score_lists]
    return len(set.intersection(*sets)) / k


def reference_rankings(n: int, grid: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Reference scores: ``spatial`` ranks tokens in farthest-point order over the grid (the
    centre first, then always the cell farthest from those already ranked: any top-k is spread
    uniformly); ``random`` ranks them at random."""
    rows, cols = grid
    yx = np.stack(np.divmod(np.arange(n), cols), 1).astype(float)
    centre = np.array([(rows - 1) / 2, (cols - 1) / 2])
    order = [int(np.argmin(((yx - centre) ** 2).sum(1)))]
    nearest = ((yx - yx[order[0]]) ** 2).sum(1)
    for _ in range(n - 1):
        nearest[order[-1]] = -1
        nxt = int(np.argmax(nearest))
        order.append(nxt)
        nearest = np.minimum(nearest, ((yx - yx[nxt]) ** 2).sum(1))
    spatial = np.empty(n)
    spatial[order] = np.arange(n, 0, -1, dtype=float)
    rng = np.random.default_rng(seed)
    return {"spatial": spatial, "random": rng.random(n)}


def ks_for(n: int) -> tuple[int, ...]:
    ks = tuple(k for k in (64, 128) if k < n)
    return ks or (max(1, n // 4), max(1, n // 2))


class SaliencyProbe:
    """Scores of every visual token at chosen LLM layers. ``rope`` and ``text`` are the saliency
    score's options, as the saliency reducers take them."""

    def __init__(self, lm: LoadedModel, rope: bool = False, text: str = "all"):
        if lm.tokenizer is None:
            raise SaliencyError("saliency needs a model with a tokenizer (prompts are text); "
                                "use a checkpoint folder (--model-path)")
        if text not in reducers.saliency_score.TEXT_CHOICES:
            raise SaliencyError(f"text = {text!r} is not allowed; use one of {', '.join(reducers.saliency_score.TEXT_CHOICES)}")
        self.lm, self.runner = lm, Runner(lm)
        self.lang = lm.model.model.language_model
        self.rope, self.text = bool(rope), text

    def _check(self, prompt, layers, kinds):
        if not prompt or not prompt.strip():
            raise SaliencyError("the prompt is empty; give a question about the image")
        n_layers = len(self.lang.layers)
        bad = [l for l in layers if not 0 <= l < n_layers]
        if bad:
            raise SaliencyError(f"layer {bad[0]} is out of range; allowed: 0..{n_layers - 1} for this "
                                f"{n_layers}-layer LLM")
        unknown = [k for k in kinds if k not in SCORES]
        if unknown:
            raise SaliencyError(f"unknown score {unknown[0]!r}; allowed: {', '.join(SCORES)}")

    @torch.no_grad()
    def scores(self, image, prompt: str, layers: list[int], kinds=("saliency", "fastv", "cls")) -> dict:
        self._check(prompt, layers, kinds)
        lm = self.lm
        req = make_request(lm, [template_prompt(lm, prompt)], lm.preprocess([image]))
        feats, sig = self.runner.features(req, ("cls_attention",) if "cls" in kinds else ())
        embeds, mask, pos = self.runner.assemble(req, identity_reduction(feats))
        out = self.lang(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                        output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states  # [0] = embeddings = input of layer 0
        start, n = int(torch.argmax(req.image_mask[0].to(torch.int8))), lm.visual_tokens
        vis = slice(start, start + n)
        order, valid, text_pos, visual_start = text_rows(req)
        cos_sin = self.lang.rotary_emb(embeds, pos)
        result = {}
        for l in layers:
            if "saliency" in kinds:
                rows = hidden[l]
                result[("saliency", l)] = reducers.cross_modal_saliency(
                    rows[:, vis], rows[0, order[0]][None], layer_weights(self.lang, l), valid, rope=self.rope,
                    text=self.text, text_positions=text_pos, visual_start=visual_start)[0].cpu().numpy()
            if "fastv" in kinds:
                layer = self.lang.layers[l]
                q, k = rotated_qk(layer.self_attn, layer.input_layernorm(hidden[l]), cos_sin, self.lang.config)
                d = q.shape[-1]
                att = (q[:, :, -1:].float() @ k.float().transpose(-1, -2) / math.sqrt(d)).softmax(-1)
                result[("fastv", l)] = att[0, :, 0, vis].mean(0).cpu().numpy()
        if "cls" in kinds:
            result[("cls", -1)] = sig["cls_attention"][0].float().cpu().numpy()
        return result


def heatmap(image, maps: list[tuple[str, np.ndarray]], grid: tuple[int, int], path: Path, title: str) -> Path:
    """One PNG: the image, then each score map over the token grid overlaid on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(image.convert("RGB"))
    n = len(maps) + 1
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), dpi=120, squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(arr)
    axes[0].set_title("image", fontsize=9)
    for ax, (label, m) in zip(axes[1:], maps):
        g = m.reshape(grid)
        ax.imshow(arr)
        im = ax.imshow(g, cmap="inferno", alpha=0.6, extent=(0, arr.shape[1], arr.shape[0], 0), interpolation="nearest")
        ax.set_title(label, fontsize=9)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.ax.tick_params(labelsize=7)
        cb.formatter.set_useOffset(False)  # full values, no "1e-5+1.224e-1" over the title
        cb.update_ticks()
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def run_saliency(lm: LoadedModel, images: list[str], prompts: list[str], layers: list[int], out: str | Path,
                 kinds=("saliency", "fastv", "cls"), seed: int = 0, rope: bool = False, text: str = "all") -> dict:
    """Scores, heatmaps and trend statistics for every image x prompt x layer, into ``out``.
    Trend 2 (across prompts) needs at least two prompts; with one it is left out, with a note."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not prompts or any(not p.strip() for p in prompts):
        raise SaliencyError("a prompt is empty; give non-empty questions")
    loaded = [(Path(p).name, read_image(p)) for p in images]  # fails on a non-image before any model work
    all_scores = _score_all(SaliencyProbe(lm, rope=rope, text=text), loaded, prompts, layers, kinds, out)
    n = lm.visual_tokens
    ks = ks_for(n)
    refs = reference_rankings(n, lm.grid, seed)
    kinds_ranked = [k for k in kinds if k != "cls"]
    trend1 = {kind: _trend1(all_scores, kind, layers, ks, refs) for kind in kinds_ranked}
    stats = {"images": len(loaded), "prompts": len(prompts), "layers": layers, "visual_tokens": n,
             "grid": list(lm.grid), "ks": list(ks), "saliency_options": {"rope": bool(rope), "text": text},
             "trend1_across_layers": trend1, "definitions": DEFINITIONS}
    if len(prompts) >= 2:
        stats["trend2_across_prompts"] = {kind: _trend2(all_scores, kind, [i for i, _ in loaded], layers, len(prompts),
                                                        ks, n) for kind in kinds_ranked}
    else:
        stats["trend2_across_prompts"] = {}
        stats["notes"] = ["Trend 2 (agreement across prompts) needs at least two prompts; one was given"]
    (out / "trends.json").write_text(json.dumps(stats, indent=2))
    return stats


DEFINITIONS = {"spearman": "Spearman rank correlation of two score vectors, mean over pairs",
               "kendall": "Kendall's tau-b, mean over pairs",
               "topk": "|top-k of a and top-k of b in common| / k, mean over pairs (chance: k/N)",
               "topk_shared_by_all_prompts": "|intersection of every prompt's top-k| / k, mean over images and layers",
               "vs_spatial / vs_random": "the same statistics against a spatially uniform ranking and a random one"}


def _score_all(probe: SaliencyProbe, loaded, prompts, layers, kinds, out: Path) -> dict:
    """Every image x prompt scored, written to scores.csv, with one heatmap per pair."""
    import csv

    grid = probe.lm.grid
    all_scores = {}
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "prompt", "score", "layer", "token", "row", "col", "value"])
        for iname, im in loaded:
            for pi, prompt in enumerate(prompts):
                s = probe.scores(im, prompt, layers, kinds)
                all_scores[(iname, pi)] = s
                for (kind, layer), v in s.items():
                    for t, val in enumerate(v):
                        w.writerow([iname, prompt, kind, layer, t, t // grid[1], t % grid[1], f"{val:.6g}"])
                maps = [(f"{kind} L{layer}" if layer >= 0 else kind, v)
                        for (kind, layer), v in sorted(s.items(), key=lambda x: (x[0][0], x[0][1]))]
                heatmap(im, maps, grid, out / f"heatmap_{Path(iname).stem}_p{pi}.png", f"{iname}: {prompt}")
    return all_scores


def _mean_stats(pairs, ks) -> dict:
    stats = [rank_stats(a, b, ks) for a, b in pairs]
    return {k: float(np.mean([s[k] for s in stats])) for k in stats[0]} if stats else {}


def _trend1(all_scores: dict, kind: str, layers, ks, refs) -> dict:
    """Across layers (same image and prompt), and against the spatial and random references."""
    matrix = {f"{la}-{lb}": _mean_stats([(s[(kind, la)], s[(kind, lb)]) for s in all_scores.values()], ks)
              for la, lb in combinations(layers, 2)}
    return {"layer_pairs": matrix,
            "vs_spatial": _mean_stats([(s[(kind, la)], refs["spatial"]) for s in all_scores.values() for la in layers], ks),
            "vs_random": _mean_stats([(s[(kind, la)], refs["random"]) for s in all_scores.values() for la in layers], ks)}


def _trend2(all_scores: dict, kind: str, image_names, layers, n_prompts: int, ks, n: int) -> dict:
    """Across prompts (same image and layer)."""
    pair_stats, shared = [], {k: [] for k in ks}
    for iname in image_names:
        for layer in layers:
            per_prompt = [all_scores[(iname, pi)][(kind, layer)] for pi in range(n_prompts)]
            pair_stats += list(combinations(per_prompt, 2))
            for k in ks:
                shared[k].append(topk_shared_by_all(per_prompt, k))
    return {"prompt_pairs": _mean_stats(pair_stats, ks),
            **{f"top{k}_shared_by_all_prompts": float(np.mean(v)) for k, v in shared.items()},
            "random_expectation": {f"top{k}": k / n for k in ks}}
