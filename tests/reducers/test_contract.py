"""Every reducer: shapes, counts, bookkeeping consistent with the input, determinism.
Post-projector reducers through ``reduce``; in-LLM ones through ``stages`` and ``select`` on
random q/k/hidden (they know no model)."""

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


POST = reducers.available("post-projector")
IN_LLM = reducers.available("in-llm")


def test_every_method_is_registered_once():
    assert len(reducers.available()) == 16 and len(set(reducers.available())) == 16
    assert sorted(IN_LLM) == ["dart", "fastv", "sparsevlm"] and len(POST) == 13


@pytest.mark.parametrize("name", POST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes_counts_and_bookkeeping(name, dtype):
    r = reducers.get(name)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, N, D, generator=gen).to(dtype)
    sig = signals_for(r, 2, gen)
    for keep in (1, 16, 64, 575, 576):
        red = r.reduce(x, keep, generator=torch.Generator().manual_seed(0), **sig)
        check_consistent(red, x, keep, r.fixed_count)


@pytest.mark.parametrize("name", POST)
def test_keep_equal_to_the_token_count_is_the_identity_with_zero_work(name):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops.append(func.__name__)
            return func(*args, **(kwargs or {}))
    r = reducers.get(name)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, N, D, generator=gen)
    sig = signals_for(r, 2, gen)
    with Count():
        red = r.reduce(x, N, **sig)
    assert red.features is x and torch.equal(red.kept_indices[0], torch.arange(N))
    # the input checks and the index tensors only: no clustering, scoring, sorting or merging
    work = {"mm", "bmm", "matmul", "topk", "sort", "argsort", "softmax", "_softmax", "scatter", "gather", "index"}
    assert not [o for o in Count.ops if o.split(".")[0] in work], Count.ops


@pytest.mark.parametrize("name", POST)
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


def qkh(b=2, h=4, t=90, d=8, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, t, d, generator=g), torch.randn(b, h, t, d, generator=g), torch.randn(b, t, dim, generator=g)


@pytest.mark.parametrize("name", IN_LLM)
def test_in_llm_select_contract(name):
    r = reducers.get(name)
    q, k, hidden = qkh()
    vis = slice(5, 69)  # 64 visual tokens, 5 before, 21 after
    stages = r.stages(16, 64, 32)
    assert stages and all(1 <= layer < 32 and 1 <= c <= 64 for layer, c in stages)
    for count in (1, 16, 63):
        kept, rec_h, rec_idx = r.select(q, k, hidden, vis, count)
        assert kept.shape == (2, count) and kept.dtype == torch.long
        assert torch.equal(kept, kept.sort(dim=1).values) and int(kept.min()) >= 0 and int(kept.max()) < 64
        assert all(len(set(row.tolist())) == count for row in kept)
        if rec_h is not None:
            assert rec_h.shape[0] == 2 and rec_h.shape[2] == 32 and rec_idx.shape == rec_h.shape[:2]
        again = r.select(q, k, hidden, vis, count)[0]
        assert torch.equal(kept, again)  # deterministic
    # batch rows are independent
    one = r.select(q[1:], k[1:], hidden[1:], vis, 16)[0]
    assert torch.equal(r.select(q, k, hidden, vis, 16)[0][1], one[0])
    # keep = N: no stage prunes (the forward path skips stages whose count is not below the block)
    assert all(c >= 64 for _, c in r.stages(64, 64, 32)) or name == "sparsevlm"
    with pytest.raises(reducers.ReducerError, match="keep = 0 is out of range; allowed: 1..64"):
        r.stages(0, 64, 32)
