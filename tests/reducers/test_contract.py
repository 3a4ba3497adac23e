"""Every reducer: shapes, counts, bookkeeping consistent with the input, determinism."""

import pytest
import torch

import reducers

N, D = 576, 32


def signals_for(r, b, gen):
    pool = {
        "cls_attention": torch.rand(b, N, generator=gen),
        "vision_keys": torch.randn(b, N, 16, generator=gen),
        "saliency": torch.rand(b, N, generator=gen),
    }
    return {k: v for k, v in pool.items() if k in r.signals + r.optional_signals}


def check_consistent(red, x, keep, fixed):
    b, n, d = x.shape
    m = red.count
    assert red.features.shape == (b, m, d) and red.features.dtype == x.dtype
    assert red.positions.shape == (b, m) and red.kept_indices.shape == (b, m)
    assert red.assignment.shape == (b, n) and red.lengths.shape == (b,)
    assert int(red.lengths.max()) == m <= keep if fixed else m >= 1
    if fixed:
        assert torch.all(red.lengths == keep)
    xf = x.float()
    tol = dict(atol=1e-2, rtol=1e-2) if x.dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    for bi in range(b):
        length = int(red.lengths[bi])
        a = red.assignment[bi]
        assert int(a.max()) == length - 1 and int(a.min()) >= -1
        w = torch.ones(n) if red.weights is None else red.weights[bi].float()
        for j in range(m):
            members = (a == j).nonzero().flatten()
            if j >= length:  # padding
                assert members.numel() == 0 and torch.isnan(red.positions[bi, j])
                assert red.kept_indices[bi, j] == -1
                continue
            assert members.numel() >= 1
            ww = w[members]
            mean = (ww[:, None] * xf[bi, members]).sum(0) / ww.sum()
            torch.testing.assert_close(red.features[bi, j].float(), mean, **tol)
            pos = (ww * members.float()).sum() / ww.sum()
            assert abs(float(red.positions[bi, j]) - float(pos)) < 1e-3
            k = int(red.kept_indices[bi, j])
            if k >= 0:  # a token kept as is: its row, its index, alone in its group
                assert members.tolist() == [k]
                assert torch.equal(red.features[bi, j], x[bi, k])
                assert float(red.positions[bi, j]) == k


@pytest.mark.parametrize("name", reducers.available())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes_counts_and_bookkeeping(name, dtype):
    r = reducers.get(name)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, N, D, generator=gen).to(dtype)
    sig = signals_for(r, 2, gen)
    for keep in (1, 16, 64, 575, 576):
        red = r.reduce(x, keep, generator=torch.Generator().manual_seed(0), **sig)
        check_consistent(red, x, keep, r.fixed_count)


@pytest.mark.parametrize("name", reducers.available())
def test_deterministic_under_a_seed(name):
    r = reducers.get(name)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, N, D, generator=gen)
    sig = signals_for(r, 3, gen)
    a = r.reduce(x, 64, generator=torch.Generator().manual_seed(7), **sig)
    b = r.reduce(x, 64, generator=torch.Generator().manual_seed(7), **sig)
    assert torch.equal(a.features, b.features) and torch.equal(a.assignment, b.assignment)
    assert torch.equal(torch.nan_to_num(a.positions, nan=-1), torch.nan_to_num(b.positions, nan=-1))


def test_batch_rows_are_reduced_independently():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, N, D, generator=gen)
    att = torch.rand(2, N, generator=gen)
    r = reducers.get("fastervlm")
    both = r.reduce(x, 32, cls_attention=att)
    one = r.reduce(x[1:], 32, cls_attention=att[1:])
    assert torch.equal(both.features[1], one.features[0])


def test_random_depends_on_the_seed_and_keeps_order():
    x = torch.randn(1, N, D)
    r = reducers.get("random")
    a = r.reduce(x, 64, generator=torch.Generator().manual_seed(0)).kept_indices
    b = r.reduce(x, 64, generator=torch.Generator().manual_seed(1)).kept_indices
    assert not torch.equal(a, b) and torch.equal(a, a.sort(dim=1).values)
