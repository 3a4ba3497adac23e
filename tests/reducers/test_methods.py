"""Each method's documented behaviour on small inputs whose right answer is known by hand."""

import math

import numpy as np
import pytest
import torch

import reducers
from reducers.sampling import spatial_indices


def blobs(sizes, d=8, spread=0.01, seed=0, interleave=False):
    """Well-separated blobs: blob i sits at 10 * e_i. Returns x [1, N, d] and labels [N]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    if interleave:
        labels = labels[torch.randperm(len(labels), generator=g)]
    centers = torch.eye(d)[: len(sizes)] * 10
    x = centers[labels] + spread * torch.randn(len(labels), d, generator=g)
    return x.unsqueeze(0), labels


def test_spatial_is_a_uniform_2d_stride():
    r = reducers.get("spatial")
    x = torch.arange(576.0).view(1, 576, 1).expand(1, 576, 4).contiguous()
    out = r.reduce(x, 4)
    # 2x2 sub-grid at the centres of the four 12x12 quadrants: rows/cols 6 and 18
    assert out.kept_indices.tolist() == [[6 * 24 + 6, 6 * 24 + 18, 18 * 24 + 6, 18 * 24 + 18]]
    assert out.kept_indices[0].tolist() == spatial_indices(24, 24, 4)
    assert r.reduce(x, 144).kept_indices[0].tolist() == [y * 24 + c for y in range(1, 24, 2) for c in range(1, 24, 2)]
    assert r.reduce(x, 576).kept_indices[0].tolist() == list(range(576))
    with pytest.raises(reducers.ReducerError, match="not a square grid"):
        r.reduce(torch.randn(1, 10, 4), 3)
    assert reducers.get("spatial", grid=(2, 5)).reduce(torch.randn(1, 10, 4), 2).kept_indices.tolist() == [[6, 8]]


def test_algorithm1_matches_a_hand_computation():
    keys = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],      # head 0: 3 visual keys, d = 2
                          [[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]]]])    # head 1
    queries = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]],               # head 0: 2 text queries
                             [[1.0, 1.0], [1.0, -1.0]]]])            # head 1
    got = reducers.saliency_scores(keys, queries)
    k, q = keys[0].numpy(), queries[0].numpy()
    expect = []
    for v in range(3):
        per_head = []
        for h in range(2):
            logits = q[h] @ k[h, v] / math.sqrt(2)
            per_head.append(np.exp(logits) / np.exp(logits).sum())  # softmax over text
        expect.append(np.max(per_head, axis=0).mean())  # max over heads, mean over text
    np.testing.assert_allclose(got[0].numpy(), expect, rtol=1e-6)


def _layer0(d=8, heads=2):
    eye = torch.eye(d)
    return {"q_weight": eye, "k_weight": eye, "norm_weight": torch.ones(d), "norm_eps": 1e-6,
            "num_heads": heads, "num_kv_heads": heads}


def test_saliency_keeps_the_token_that_draws_a_peaked_text_attention():
    # Algorithm 1 averages a softmax over the text, so one head alone always scores 1/T; the
    # max over heads is what separates tokens. Head 1 (dims 4..7) is empty: flat, 1/3 per text
    # token. In head 0 every visual token is orthogonal to the text (flat too) except token 7,
    # which matches text token 0 and so gets a peaked distribution.
    d = 8
    x = torch.zeros(1, 10, d)
    x[0, :, 3] = 1.0
    x[0, 7] = torch.eye(d)[0]
    text = torch.eye(d)[[0, 1, 2]].unsqueeze(0)
    r = reducers.get("saliency")
    out = r.reduce(x, 1, text_embeds=text, layer0=_layer0(d))
    assert out.kept_indices.tolist() == [[7]]
    k, q = reducers.first_layer_qk(x, text, _layer0(d))
    s = reducers.saliency_scores(k, q)[0]
    assert torch.allclose(s[torch.arange(10) != 7], torch.full((9,), 1 / 3))
    assert s[7] > 0.5
    k_rope, q_rope = reducers.first_layer_qk(torch.randn(1, 10, d), text, _layer0(d), rope=True)
    k_flat, q_flat = reducers.first_layer_qk(torch.randn(1, 10, d), text, _layer0(d))
    assert k_rope.shape == k_flat.shape and not torch.allclose(q_rope, q_flat)


def test_cluster_saliency_static_takes_the_top_share_of_each_blob():
    x, labels = blobs([8, 4], interleave=True)
    sal = torch.arange(12.0).unsqueeze(0)  # higher index = more salient
    out = reducers.get("cluster-saliency-static", k=2).reduce(x, 6, saliency=sal,
                                                              generator=torch.Generator().manual_seed(0))
    kept = out.kept_indices[0].tolist()
    big = [i for i in range(12) if labels[i] == 0]
    small = [i for i in range(12) if labels[i] == 1]
    assert sorted(kept) == sorted(big[-4:] + small[-2:])  # 6 * 8/12 = 4 and 6 * 4/12 = 2


def test_cluster_saliency_keys_clusters_on_keys_not_embeddings():
    keys, labels = blobs([6, 6], interleave=True, seed=1)
    x = torch.randn(1, 12, 8, generator=torch.Generator().manual_seed(5))  # no structure
    sal = torch.arange(12.0).unsqueeze(0)
    out = reducers.get("cluster-saliency-keys", k=2).reduce(x, 2, saliency=sal, vision_keys=keys,
                                                            generator=torch.Generator().manual_seed(0))
    expect = sorted(max(i for i in range(12) if labels[i] == c) for c in (0, 1))
    assert out.kept_indices[0].tolist() == expect


def test_cluster_saliency_dynamic_favours_the_salient_blob():
    x, labels = blobs([10, 10])
    sal = torch.where(labels == 0, 5.0, 0.0).unsqueeze(0)  # blob 0 far more salient
    r = reducers.get("cluster-saliency-dynamic", k=2, lambda_=1.0)
    out = r.reduce(x, 20, saliency=sal, generator=torch.Generator().manual_seed(0))
    w0 = math.exp(5) / (math.exp(5) + 1)
    expect = math.ceil(w0 * 10 - 1e-6) + math.ceil((1 - w0) * 10 - 1e-6)  # 10 + 1
    assert int(out.lengths[0]) == expect
    kept = out.kept_indices[0][: expect].tolist()
    assert sum(labels[i] == 0 for i in kept) == 10
    # with lambda solved from the budget the count never exceeds keep
    out = reducers.get("cluster-saliency-dynamic", k=2).reduce(x, 7, saliency=sal,
                                                              generator=torch.Generator().manual_seed(0))
    assert 1 <= int(out.lengths[0]) <= 7


def test_cluster_saliency_aggregate_keeps_top_tokens_and_one_mean_per_blob():
    x, labels = blobs([6, 6])
    sal = torch.arange(12.0).unsqueeze(0)
    out = reducers.get("cluster-saliency-aggregate", k=2).reduce(x, 4, saliency=sal,
                                                                generator=torch.Generator().manual_seed(0))
    assert int(out.lengths[0]) == 4  # 2 selected (one per blob) + 2 aggregates
    kept = [i for i in out.kept_indices[0].tolist() if i >= 0]
    assert sorted(kept) == [5, 11]
    for c, top in ((0, 5), (1, 11)):
        rest = [i for i in range(12) if labels[i] == c and i != top]
        row = (out.positions[0] - float(np.mean(rest))).abs().argmin()
        torch.testing.assert_close(out.features[0, row], x[0, rest].mean(0))


@pytest.mark.parametrize("order", ["position", "random"])
def test_cluster_aggregate_returns_the_blob_means(order):
    x, labels = blobs([5, 7, 3])
    out = reducers.get("cluster-aggregate", order=order).reduce(x, 3, generator=torch.Generator().manual_seed(0))
    means = torch.stack([x[0, labels == c].mean(0) for c in range(3)])
    got = out.features[0]
    for c in range(3):
        assert torch.cdist(got, means[c:c + 1]).min() < 1e-5
    if order == "position":
        assert out.positions[0].tolist() == sorted(out.positions[0].tolist())


def test_fastervlm_and_visionzip_keep_a_planted_high_attention_token():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 576, 16, generator=g)
    att = torch.rand(1, 576, generator=g) * 0.01
    att[0, 300] = 1.0
    assert 300 in reducers.get("fastervlm").reduce(x, 1, cls_attention=att).kept_indices[0].tolist()
    keys = torch.randn(1, 576, 8, generator=g)
    vz = reducers.get("visionzip").reduce(x, 64, cls_attention=att, vision_keys=keys)
    assert 300 in vz.kept_indices[0, :54].tolist()          # dominant part: 54 of 64
    assert torch.all(vz.kept_indices[0, 54:] == -1)        # contextual part: 10 merged tokens
    assert int((vz.assignment[0] >= 54).sum()) == 576 - 54  # every other patch is in a context group


def test_prumerge_plus_keeps_iqr_outliers_and_weights_by_attention():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 576, 16, generator=g)
    att = torch.rand(1, 576, generator=g) * 0.01
    att[0, [17, 400]] = 1.0  # two outliers
    keys = torch.randn(1, 576, 8, generator=g)
    out = reducers.get("prumerge-plus").reduce(x, 32, cls_attention=att, vision_keys=keys)
    rows = out.assignment[0, [17, 400]]
    for r, i in zip(rows.tolist(), (17, 400)):
        members = (out.assignment[0] == r).nonzero().flatten()
        w = att[0, members]
        torch.testing.assert_close(out.features[0, r], (w[:, None] * x[0, members]).sum(0) / w.sum())
        assert i in members.tolist()


def test_tome_merges_identical_tokens_first():
    x, labels = blobs([4, 4], spread=0.0, interleave=True)
    out = reducers.get("tome", metric="features").reduce(x, 2)
    got = sorted(out.features[0].tolist(), key=lambda v: v.index(max(v)))
    torch.testing.assert_close(torch.tensor(got), torch.eye(8)[:2] * 10)
    assert sorted(int((out.assignment[0] == j).sum()) for j in range(2)) == [4, 4]


def test_divprune_picks_one_token_per_direction():
    x, labels = blobs([5, 5, 5], spread=0.05)
    out = reducers.get("divprune").reduce(x, 3)
    assert sorted(labels[out.kept_indices[0]].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("rows, cols", [(24, 24), (10, 10), (2, 5), (7, 13), (1, 9), (30, 17)])
def test_spatial_indices_computed_on_the_device_are_the_listed_ones(rows, cols):
    from reducers.sampling import spatial_index_tensor
    for keep in range(1, rows * cols + 1):
        assert spatial_index_tensor(rows, cols, keep).tolist() == spatial_indices(rows, cols, keep), keep


def _dynamic_quota_by_bisection(w, sizes, keep, k, n):
    """Variant 2's lambda as it was solved before issue 13: 60 bisection steps."""
    def quota(lam):
        return torch.minimum(torch.ceil(lam * w * sizes - 1e-6), sizes)
    lo = torch.zeros(w.shape[0], 1)
    hi = torch.full_like(lo, float(k) * n)
    for _ in range(60):
        mid = (lo + hi) / 2
        fits = quota(mid).sum(1, keepdim=True) <= keep
        lo, hi = torch.where(fits, mid, lo), torch.where(fits, hi, mid)
    q = quota(lo)
    cluster_rank = torch.argsort(torch.argsort(w, dim=1, descending=True, stable=True), dim=1)
    fallback = ((cluster_rank < keep) & (sizes > 0)).to(q.dtype)
    return torch.where(q.sum(1, keepdim=True) == 0, fallback, q)


@pytest.mark.parametrize("seed", range(40))
def test_cluster_saliency_dynamic_solves_lambda_as_the_bisection_did(seed):
    from reducers.saliency import cluster_sizes, rank_within_clusters
    g = torch.Generator().manual_seed(seed)
    n, k = 120, int(torch.randint(2, 25, (1,), generator=g))
    keep = int(torch.randint(1, n, (1,), generator=g))
    x = torch.randn(2, n, 16, generator=g)
    sal = torch.rand(2, n, generator=g) ** int(torch.randint(1, 6, (1,), generator=g))
    r = reducers.get("cluster-saliency-dynamic", k=k)
    out = r.reduce(x, keep, saliency=sal, generator=torch.Generator().manual_seed(seed))
    # the same clusters, then the quota the old solver gave
    labels = r._clusters(x, torch.Generator().manual_seed(seed))
    sizes = cluster_sizes(labels, k).float()
    mean_sal = (torch.zeros_like(sizes).scatter_add_(1, labels, sal) / sizes.clamp(min=1)).masked_fill(sizes == 0, -math.inf)
    q = _dynamic_quota_by_bisection(mean_sal.softmax(-1), sizes, keep, k, n)
    mask = rank_within_clusters(labels, sal, k) < torch.gather(q.long(), 1, labels)
    for b in range(2):
        length = int(out.lengths[b])
        assert out.kept_indices[b, :length].tolist() == mask[b].nonzero().flatten().tolist()
        assert torch.all(out.kept_indices[b, length:] == -1) and out.count == keep


def test_cluster_saliency_dynamic_ties_fall_back_to_the_heaviest_clusters():
    # four equal blobs, equal saliency: every cluster's first token enters at the same lambda, so
    # no lambda keeps 2 of them; the best token of each of the 2 heaviest clusters is kept
    x, labels = blobs([5, 5, 5, 5])
    out = reducers.get("cluster-saliency-dynamic", k=4).reduce(x, 2, saliency=torch.ones(1, 20),
                                                              generator=torch.Generator().manual_seed(0))
    kept = out.kept_indices[0].tolist()
    assert int(out.lengths[0]) == 2 and len({int(labels[i]) for i in kept}) == 2
