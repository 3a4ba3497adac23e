"""Inputs and cases shared by the recorder of the pre-issue-13 outputs
(``tests/data/record_reducers_before_issue13.py``) and ``test_same_results.py``.

Each case is run on seeded fp32 inputs with signals, batch 2, keep 16 and 64, on two shapes:
``gram`` (N <= D: K-means reads every distance off the Gram matrix, LLaVA's case) and
``direct`` (N > D: K-means computes distances to the centroids). One thread, so the recorded
GEMM results do not depend on how many cores the machine has.
"""

from __future__ import annotations

import torch

import reducers

KEEPS = (16, 64)
#: (N, D); square grids for spatial. ``dup``: only 10 distinct points, so K-means++ runs out of
#: distinct seeds and Lloyd meets empty clusters
SHAPES = {"gram": (100, 112), "direct": (576, 32), "dup": (100, 112)}
POST_CASES = [
    ("random", {}), ("spatial", {}), ("saliency", {}), ("saliency", {"rope": True}),
    ("cluster-saliency-static", {}), ("cluster-saliency-keys", {}), ("cluster-saliency-dynamic", {}),
    ("cluster-saliency-dynamic", {"lambda_": 2.0}), ("cluster-saliency-aggregate", {}),
    ("cluster-saliency-aggregate", {"x": 0.05}), ("cluster-aggregate", {}), ("cluster-aggregate", {"order": "position"}),
]
IN_LLM_CASES = ("fastv", "dart", "sparsevlm")
FIELDS = ("features", "positions", "kept_indices", "assignment", "lengths", "weights")


def case_key(*parts) -> str:
    return "/".join(str(p) for p in parts)


def post_inputs(shape: str, batch: int = 2, seed: int = 0):
    """Features with cluster structure (12 latent parts plus noise, so Lloyd iterates; for
    ``dup`` 10 distinct points, no noise) and the signals every post-projector method of the
    paper may take."""
    n, d = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    n_parts, noise = (10, 0.0) if shape == "dup" else (12, 2.5)
    parts = torch.randn(batch, n_parts, d, generator=g)
    which = torch.randint(n_parts, (batch, n), generator=g)
    x = torch.gather(parts, 1, which.unsqueeze(-1).expand(batch, n, d)) + noise * torch.randn(batch, n, d, generator=g)
    heads, kv, hd = 4, 2, 8
    layer0 = {"q_weight": torch.randn(heads * hd, d, generator=g), "k_weight": torch.randn(kv * hd, d, generator=g),
              "norm_weight": 1 + 0.1 * torch.randn(d, generator=g), "norm_eps": 1e-5, "num_heads": heads,
              "num_kv_heads": kv}
    sig = {"text_embeds": torch.randn(batch, 12, d, generator=g), "layer0": layer0,
           "vision_keys": torch.randn(batch, n, 16, generator=g)}
    return x, sig


def run_post(name: str, params: dict, x, sig, keep: int, seed: int = 0) -> dict:
    r = reducers.get(name, **params)
    s = {k: v for k, v in sig.items() if k in r.signals + r.optional_signals}
    red = r.reduce(x, keep, generator=torch.Generator().manual_seed(seed), **s)
    return {f: getattr(red, f) for f in FIELDS if getattr(red, f) is not None}


def in_llm_inputs(seed: int = 0):
    """q, k [2, 4, 200, 16], hidden [2, 200, 64]; the visual block is 20..180 (160 tokens)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, 200, 16, generator=g)
    k = torch.randn(2, 4, 200, 16, generator=g)
    hidden = torch.randn(2, 200, 64, generator=g)
    return q, k, hidden, slice(20, 180)


def run_in_llm(name: str, q, k, hidden, vis, count: int) -> dict:
    kept, rec_h, rec_idx = reducers.get(name).select(q, k, hidden, vis, count)
    out = {"kept": kept}
    if rec_h is not None:
        out.update(recycled=rec_h, recycled_index=rec_idx)
    return out


def run_kmeans(x, k: int, seed: int = 0) -> dict:
    r = reducers.kmeans(x, k, generator=torch.Generator().manual_seed(seed))
    return {"labels": r.labels, "centroids": r.centroids, "inertia": r.inertia}


def record(in_llm: bool = True) -> dict:
    """Every case's outputs, keyed by :func:`case_key` (``in_llm``: the in-LLM selections too, as
    recorded before issue 12 changed their algorithms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for shape in SHAPES:
            x, sig = post_inputs(shape)
            for name, params in POST_CASES:
                if shape == "dup" and "cluster" not in name:
                    continue  # duplicates only matter to K-means
                for keep in KEEPS:
                    out[case_key("post", shape, name, sorted(params.items()), keep)] = run_post(name, params, x, sig, keep)
            for k in KEEPS:
                out[case_key("kmeans", shape, k)] = run_kmeans(x, k)
                for b in range(2):  # one sample alone: convergence cannot depend on the other one
                    out[case_key("kmeans", shape, k, "sample", b)] = run_kmeans(x[b:b + 1], k)
        q, k, hidden, vis = in_llm_inputs()
        for name in IN_LLM_CASES if in_llm else ():
            for count in KEEPS:
                out[case_key("in-llm", name, count)] = run_in_llm(name, q, k, hidden, vis, count)
        return out
    finally:
        torch.set_num_threads(threads)
