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
