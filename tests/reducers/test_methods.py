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
    post = {"stage": "post-projector"}
    assert 300 in reducers.get("fastervlm", **post).reduce(x, 1, cls_attention=att).kept_indices[0].tolist()
    keys = torch.randn(1, 576, 8, generator=g)
    vz = reducers.get("visionzip", **post).reduce(x, 64, cls_attention=att, vision_keys=keys)
    assert 300 in vz.kept_indices[0, :54].tolist()          # dominant part: 54 of 64
    assert torch.all(vz.kept_indices[0, 54:] == -1)        # contextual part: 10 merged tokens
    assert int((vz.assignment[0] >= 54).sum()) == 576 - 54  # every other patch is in a context group
    # pre-projector (the default): CLS at index 0 of the features and of the signals
    xc = torch.cat([torch.randn(1, 1, 16, generator=g), x], 1)
    attc = torch.cat([torch.full((1, 1), 5.0), att], 1)  # CLS attends most to itself
    keysc = torch.cat([torch.randn(1, 1, 8, generator=g), keys], 1)
    fv = reducers.get("fastervlm").reduce(xc, 1, tower_cls_attention=attc)
    assert fv.kept_indices.tolist() == [[301]] and int(fv.assignment[0, 0]) == -1  # CLS is never kept
    vz = reducers.get("visionzip").reduce(xc, 64, tower_cls_attention=attc, tower_keys=keysc)
    assert vz.kept_indices[0, 0] == 0 and torch.equal(vz.features[0, 0], xc[0, 0])  # CLS first, as is
    assert 301 in vz.kept_indices[0, 1:54].tolist()         # CLS + 53 patches
    # a contextual token is its target plus the mean of the tokens that joined it
    comb = vz.combination[0, 54:]
    for row in comb:
        members = (row > 0).nonzero().flatten()
        target = members[row[members] == 1.0]
        others = members[row[members] < 1.0]
        assert len(target) == 1 and torch.allclose(row[others], torch.full((len(others),), 1 / max(1, len(others))))
    torch.testing.assert_close(vz.features[0], vz.combination[0] @ xc[0])


def test_prumerge_plus_follows_the_official_count_and_merge():
    g = torch.Generator().manual_seed(0)
    n = 576
    x = torch.randn(1, n, 16, generator=g)
    att = torch.rand(1, n, generator=g) * 0.01
    att[0, 17], att[0, 400] = 1.0, 0.9  # two IQR outliers: ratio 2/576
    keys = torch.randn(1, n, 8, generator=g)
    r = reducers.get("prumerge-plus", stage="post-projector")
    out = r.reduce(x, 64, cls_attention=att, vision_keys=keys)  # keep is ignored: the count is the method's
    # top int(576 * 2/576) = 2 by attention, then range(0, 575, int(int(576 / 2) / 3) = 96) in order
    kept = [17, 400, 0, 96, 192, 288, 384, 480]
    assert int(out.lengths[0]) == len(kept) + 1 == out.count
    kn = torch.nn.functional.normalize(keys[0], dim=-1)
    for row, i in enumerate(kept):
        sim = kn @ kn[i]
        sim[i] = -float("inf")
        nb = sim.topk(32).indices  # 32 nearest other patches, kept or not
        want = x[0, i] + (att[0, nb, None] * x[0, nb]).sum(0)  # unnormalised attention weights
        torch.testing.assert_close(out.features[0, row], want)
        assert int(out.assignment[0, i]) == row
    rest = torch.ones(n, dtype=torch.bool)
    rest[kept] = False
    torch.testing.assert_close(out.features[0, -1], (att[0, rest, None] * x[0, rest]).sum(0))  # the extra token
    assert torch.all(out.assignment[0, rest] == len(kept))
    # a fixed budget: exactly keep tokens, the top ones first, the rest at a uniform 1-D stride
    fixed = reducers.get("prumerge-plus", budget="fixed", stage="post-projector")
    out = fixed.reduce(x, 32, cls_attention=att, vision_keys=keys)
    assert out.count == 32 and fixed.fixed_count and not r.fixed_count
    rows = [int((out.assignment[0] == j).nonzero()[0]) for j in range(31)]
    others = [i for i in range(n) if i not in (17, 400)]
    assert rows == [17, 400] + [others[p * 574 // 29] for p in range(29)]


def test_tome_one_step_merges_the_best_matches_and_keeps_tomes_order():
    e = torch.eye(4)
    a = [e[0], e[1] + 0.3 * e[0], e[2] + 0.1 * e[3], e[3] + 0.5 * e[0]]  # best scores 1.0, .958, .995, .894
    b = [e[2], e[0], e[3], e[1]]
    x = torch.stack([t for pair in zip(a, b) for t in pair]).unsqueeze(0)  # A = even, B = odd positions
    out = reducers.get("tome", steps=1, stage="post-projector").reduce(x, 6, vision_keys=x)
    # A0 and A2 (the two best) merge into B1 and B0; unmerged A by descending score, then all B
    assert out.assignment[0].tolist() == [3, 2, 0, 3, 2, 4, 1, 5]
    torch.testing.assert_close(out.features[0, 2], (x[0, 1] + x[0, 4]) / 2)
    assert out.kept_indices[0].tolist() == [2, 6, -1, -1, 5, 7]
    # pre-projector: CLS is protected, unmerged A tokens come by index, CLS is dropped from the output
    xc = torch.cat([torch.ones(1, 1, 4), x], 1)
    out = reducers.get("tome", steps=1).reduce(xc, 6, tower_keys=xc)
    assert out.count == 6 and int(out.assignment[0, 0]) == -1
    kept = [k for k in out.kept_indices[0].tolist() if k >= 0]
    unmerged_a = [k for k in kept if k % 2 == 0]
    assert unmerged_a == sorted(unmerged_a)


def test_divprune_picks_one_token_per_direction():
    x, labels = blobs([5, 5, 5], spread=0.05)
    out = reducers.get("divprune").reduce(x, 3)
    assert sorted(labels[out.kept_indices[0]].tolist()) == [0, 1, 2]


def test_fastv_select_is_the_official_rule_and_fastv_uses_it():
    # heads averaged, the last row, the image span, the top ones, sorted
    attn = torch.tensor([[[.5, .1, .2, .05, .15, 0.], [.5, .3, 0., .1, .1, 0.]]])  # [1, 2 heads, 6 positions]
    # image = positions 1..4: mean attention .2, .1, .075, .125
    assert reducers.fastv_select(attn, 1, 4, 2).tolist() == [[0, 3]]
    assert reducers.fastv_select(attn.expand(3, 2, 6), 1, 4, 1).tolist() == [[0]] * 3  # batched
    with pytest.raises(reducers.ReducerError, match="keep = 5 is out of range; allowed: 1..4"):
        reducers.fastv_select(attn, 1, 4, 5)
    with pytest.raises(reducers.ReducerError, match="does not fit the 6 positions"):
        reducers.fastv_select(attn, 3, 4, 1)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 90, 8, generator=g), torch.randn(2, 4, 90, 8, generator=g)
    from reducers.in_llm import last_row_attention
    kept, _, _ = reducers.get("fastv").select(q, k, None, slice(5, 69), 16)
    assert torch.equal(kept, reducers.fastv_select(last_row_attention(q, k), 5, 64, 16))


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
