import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from reducers import ReducerError, kmeans


def data(n=300, d=64, k_true=12, seed=0, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k_true, d, generator=g) * 3
    return centers[torch.randint(k_true, (n,), generator=g)] + noise * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("shape", [(300, 64), (200, 512)])  # N > D (direct) and N < D (Gram path)
def test_inertia_within_2_percent_of_sklearn(shape):
    n, d = shape
    ratios = []
    for seed in range(4):
        x = data(n, d, seed=seed)
        ours = float(kmeans(x.unsqueeze(0), 16, generator=torch.Generator().manual_seed(seed)).inertia[0])
        ref = KMeans(16, init="k-means++", n_init=1, random_state=seed).fit(x.numpy().astype(np.float64)).inertia_
        ratios.append(ours / ref)
    assert np.median(ratios) <= 1.02, ratios


def test_inertia_is_the_sum_of_squared_distances():
    x = data(100, 8).unsqueeze(0)
    r = kmeans(x, 5, generator=torch.Generator().manual_seed(0))
    manual = ((x[0] - r.centroids[0][r.labels[0]]) ** 2).sum()
    assert float(r.inertia[0]) == pytest.approx(float(manual), rel=1e-5)
    for c in range(5):
        torch.testing.assert_close(r.centroids[0, c], x[0, r.labels[0] == c].mean(0))


def test_batched_equals_one_by_one_and_is_seeded():
    x = torch.stack([data(120, 16, seed=s) for s in range(3)])
    a = kmeans(x, 6, generator=torch.Generator().manual_seed(1))
    b = kmeans(x, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.labels, b.labels) and torch.equal(a.inertia, b.inertia)
    assert a.labels.shape == (3, 120)


def test_duplicate_points_leave_no_cluster_empty():
    x = torch.cat([torch.zeros(10, 4), torch.ones(10, 4)]).unsqueeze(0)  # only 2 distinct points
    r = kmeans(x, 5, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.bincount(r.labels[0], minlength=5).tolist())[0] >= 1


def test_bad_k():
    with pytest.raises(ReducerError, match="k = 11 clusters is out of range; allowed: 1..10"):
        kmeans(torch.randn(1, 10, 4), 11)
    with pytest.raises(ReducerError, match="max_iter = 0"):
        kmeans(torch.randn(1, 10, 4), 2, max_iter=0)


def _fill_empty_sequential(labels, dists, k):
    """The re-seeding rule as it was written before issue 13 (a loop with host syncs): the
    reference for the vectorised one."""
    b, n = labels.shape
    counts = torch.zeros(b, k, dtype=torch.long).scatter_add_(1, labels, torch.ones_like(labels))
    labels = labels.clone()
    own = torch.gather(dists, 2, labels.unsqueeze(-1)).squeeze(-1)
    order = torch.argsort(own, dim=1, descending=True, stable=True)
    for bi in range(b):
        empty = (counts[bi] == 0).nonzero().flatten()
        taken = 0
        for pt in order[bi].tolist():
            if taken == empty.numel():
                break
            src = int(labels[bi, pt])
            if counts[bi, src] <= 1:
                continue
            counts[bi, src] -= 1
            labels[bi, pt] = empty[taken]
            counts[bi, empty[taken]] += 1
            taken += 1
    return labels


@pytest.mark.parametrize("seed", range(30))
def test_empty_clusters_are_refilled_as_the_sequential_rule_does(seed):
    from reducers.kmeans import _EmptyClusterFill

    g = torch.Generator().manual_seed(seed)
    b, n, k = 3, int(torch.randint(5, 40, (1,), generator=g)), int(torch.randint(2, 12, (1,), generator=g))
    k = min(k, n)
    used = int(torch.randint(1, k + 1, (1,), generator=g))  # only `used` clusters get points: k - used empty
    labels = torch.randint(used, (b, n), generator=g)
    dists = torch.randint(0, 6, (b, n, k), generator=g).float()  # small integers: many ties
    own = torch.gather(dists, 2, labels.unsqueeze(-1)).squeeze(-1)
    got = _EmptyClusterFill(b, n, k, "cpu")(labels, own)
    assert torch.equal(got, _fill_empty_sequential(labels, dists, k))
    assert all(torch.bincount(row, minlength=k).min() >= 1 for row in got)


@pytest.mark.parametrize("shape", [(400, 16), (120, 200)])  # direct path, Gram path
def test_a_converged_sample_keeps_its_labels(shape):
    # Lloyd runs max_iter iterations whatever happens (no host sync decides to stop); a sample
    # that converged keeps its labels, so stopping at its own n_iter gives the same result
    n, d = shape
    x = torch.stack([data(n, d, seed=s, noise=2.0) for s in range(3)])
    full = kmeans(x, 10, generator=torch.Generator().manual_seed(0), max_iter=60)
    assert full.n_iter.shape == (3,) and int(full.n_iter.max()) < 60
    for b in range(3):
        early = kmeans(x, 10, generator=torch.Generator().manual_seed(0), max_iter=int(full.n_iter[b]))
        assert torch.equal(early.labels[b], full.labels[b])


@pytest.mark.parametrize("shape", [(400, 16), (120, 200)])
def test_no_host_sync_and_labels_as_kmeans(shape):
    from benchmarks.bench_reducers import count_ops
    from reducers.kmeans import kmeans_labels

    x = data(*shape).unsqueeze(0)
    c = count_ops(lambda: kmeans(x, 8, generator=torch.Generator().manual_seed(0), validate=False))
    assert c.syncs == 0, c.sync_names
    labels = kmeans_labels(x, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels, kmeans(x, 8, generator=torch.Generator().manual_seed(0)).labels)
