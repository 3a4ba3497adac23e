"""Every reducer: shapes, counts, bookkeeping consistent with the input, determinism.
Post-projector reducers through ``reduce`` on projected tokens [B, N, D]; the pre-projector ones
(VisionZip, PruMerge+, ToMe, FasterVLM) both by default, on the vision tower's features with CLS
[B, 1+N, Dv] and the ``tower_*`` signals, and moved after the projector (``stage``); in-LLM ones
through ``stages`` and ``select`` on random q/k/hidden (they know no model)."""

import pytest
import torch

import reducers

N, D = 576, 32


def signals_for(r, b, gen, n=N):
    """Random signals of the right shapes; ``n`` counts the feature rows (1 + N with CLS)."""
    pool = {
        "cls_attention": torch.rand(b, n, generator=gen),
        "vision_keys": torch.randn(b, n, 16, generator=gen),
        "saliency": torch.rand(b, n, generator=gen),
        "tower_cls_attention": torch.rand(b, n, generator=gen).softmax(-1),
        "tower_keys": torch.randn(b, n, 16, generator=gen),
        "tower_last_q": torch.randn(b, n, 24, generator=gen),
        "tower_last_k": torch.randn(b, n, 24, generator=gen),
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
        if red.combination is not None:  # rows are not group means: features = combination @ x
            check_combination(red, bi, x, tol)
            continue
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


def check_combination(red, bi, x, tol):
    """A reduction that carries ``combination``: its rows are ``combination @ x`` exactly, every
    original sits in its assignment row, positions are the combination-weighted mean indices,
    rows past ``lengths`` are empty."""
    b, n, d = x.shape
    length, m = int(red.lengths[bi]), red.count
    comb = red.combination[bi]
    assert comb.shape == (m, n) and red.weights is None
    want = (comb.double() @ x[bi].double()).to(x.dtype).float()
    torch.testing.assert_close(red.features[bi].float(), want, **tol)
    mass = comb.sum(-1)
    assert torch.all(mass[:length] > 0) and torch.all(comb[length:] == 0)
    assert torch.all(torch.isnan(red.positions[bi, length:])) and torch.all(red.kept_indices[bi, length:] == -1)
    pos = (comb.double() @ torch.arange(n, dtype=torch.float64)) / mass.double()
    torch.testing.assert_close(red.positions[bi, :length].double(), pos[:length], atol=1e-3, rtol=0)
    a = red.assignment[bi]
    held = a >= 0
    assert torch.all(comb[a[held], held.nonzero().flatten()] > 0)  # each original is in its row
    assert torch.all(comb[:, ~held] == 0)  # a dropped original is in no row
    for j, k in enumerate(red.kept_indices[bi].tolist()):
        if k >= 0:  # a token kept as is: a one-hot row
            assert float(comb[j, k]) == 1.0 and float(mass[j]) == 1.0
            assert torch.equal(red.features[bi, j], x[bi, k])


POST = reducers.available("post-projector")
PRE = reducers.available("pre-projector")
IN_LLM = reducers.available("in-llm")
# every method that runs on the projected tokens: the post-projector ones, and the pre-projector
# ones moved after the projector
AFTER = [(name, {}) for name in POST] + [(name, {"stage": "post-projector"}) for name in PRE]
AFTER_IDS = [name + ("@post" if params else "") for name, params in AFTER]


def test_every_method_is_registered_once():
    assert len(reducers.available()) == 16 and len(set(reducers.available())) == 16
    assert sorted(IN_LLM) == ["dart", "fastv", "sparsevlm"]
    assert sorted(PRE) == ["fastervlm", "prumerge-plus", "tome", "visionzip"] and len(POST) == 9
    for name in PRE:  # hook follows the stage
        assert reducers.get(name).hook == "pre-projector"
        assert reducers.get(name, stage="post-projector").hook == "post-projector"


@pytest.mark.parametrize("name, params", AFTER, ids=AFTER_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes_counts_and_bookkeeping(name, params, dtype):
    r = reducers.get(name, **params)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, N, D, generator=gen).to(dtype)
    sig = signals_for(r, 2, gen)
    for keep in (1, 16, 64, 575, 576):
        red = r.reduce(x, keep, generator=torch.Generator().manual_seed(0), **sig)
        check_consistent(red, x, keep, r.fixed_count)


@pytest.mark.parametrize("name", PRE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pre_projector_calls_take_the_tower_features_with_cls(name, dtype):
    r = reducers.get(name)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, N + 1, D, generator=gen).to(dtype)  # CLS at index 0
    sig = signals_for(r, 2, gen, N + 1)
    for keep in (1, 16, 64, 576):
        red = r.reduce(x, keep, generator=torch.Generator().manual_seed(0), **sig)
        check_consistent(red, x, keep, r.fixed_count)
        if name == "visionzip":  # CLS is kept, first, as is
            assert torch.all(red.kept_indices[:, 0] == 0) and torch.all(red.assignment[:, 0] == 0)
        else:  # CLS is dropped (LLaVA's select_feature="patch")
            assert torch.all(red.assignment[:, 0] == -1)
    for params in ({"budget": "fixed"},) if name == "prumerge-plus" else ():
        fixed = reducers.get(name, **params)
        for keep in (1, 64, 576):
            check_consistent(fixed.reduce(x, keep, **sig), x, keep, True)


def keep_sets_the_count(name, params):
    """The method at ``params``, or at a fixed budget where its default picks its own count."""
    if not reducers.get(name, **params).count_from_keep():
        params = {**params, "budget": "fixed"}  # PruMerge+: the official count ignores keep
    return name, params


IDENTITY = [keep_sets_the_count(n, p) for n, p in AFTER + [(name, {}) for name in PRE]]


@pytest.mark.parametrize("name, params", IDENTITY, ids=[n + "".join(f"@{v}" for v in p.values()) for n, p in IDENTITY])
def test_keep_equal_to_the_token_count_is_the_identity_with_zero_work(name, params):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops.append(func.__name__)
            return func(*args, **(kwargs or {}))
    r = reducers.get(name, **params)
    n = N + 1 if r.hook == "pre-projector" else N
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, n, D, generator=gen)
    sig = signals_for(r, 2, gen, n)
    with Count():
        red = r.reduce(x, n, **sig)
    assert red.features is x and torch.equal(red.kept_indices[0], torch.arange(n))
    # the input checks and the index tensors only: no clustering, scoring, sorting or merging
    work = {"mm", "bmm", "matmul", "topk", "sort", "argsort", "softmax", "_softmax", "scatter", "gather", "index"}
    assert not [o for o in Count.ops if o.split(".")[0] in work], Count.ops


@pytest.mark.parametrize("name, params", AFTER + [(name, {}) for name in PRE],
                         ids=AFTER_IDS + [name + "@pre" for name in PRE])
def test_deterministic_under_a_seed(name, params):
    r = reducers.get(name, **params)
    n = N + 1 if r.hook == "pre-projector" else N
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, n, D, generator=gen)
    sig = signals_for(r, 3, gen, n)
    a = r.reduce(x, 64, generator=torch.Generator().manual_seed(7), **sig)
    b = r.reduce(x, 64, generator=torch.Generator().manual_seed(7), **sig)
    assert torch.equal(a.features, b.features) and torch.equal(a.assignment, b.assignment)
    assert torch.equal(torch.nan_to_num(a.positions, nan=-1), torch.nan_to_num(b.positions, nan=-1))


@pytest.mark.parametrize("name, params", [(name, {}) for name in PRE] + [("fastervlm", {"stage": "post-projector"}),
                                                                          ("divprune", {})])
def test_batch_rows_are_reduced_independently(name, params):
    r = reducers.get(name, **params)
    n = N + 1 if r.hook == "pre-projector" else N
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, n, D, generator=gen)
    sig = signals_for(r, 2, gen, n)
    both = r.reduce(x, 32, **sig)
    one = r.reduce(x[1:], 32, **{k: v[1:] for k, v in sig.items()})
    length = int(one.lengths[0])
    assert int(both.lengths[1]) == length and torch.equal(both.assignment[1], one.assignment[0])
    torch.testing.assert_close(both.features[1, :length], one.features[0, :length], atol=1e-6, rtol=1e-6)


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
    # the protocol of reducers.in_llm: a stage (l, count) scores with layer l's q/k and prunes its
    # output; select gets the layer's output, the final norm and what prepare returned
    r = reducers.get(name)
    q, k, hidden = qkh()
    out = hidden.flip(1) + 1  # stands for the layer's output
    vis = slice(5, 69)  # 64 visual tokens, 5 before, 21 after
    stages = r.stages(16, 64, 32)
    assert stages and all(0 <= layer < 32 and 1 <= c <= 64 for layer, c in stages)
    ctx = dict(hidden_out=out, final_norm=lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6),
               prepared=r.prepare(hidden, vis))
    for count in (1, 16, 63):
        kept, rec_h, rec_idx = r.select(q, k, hidden, vis, count, **ctx)
        assert kept.shape == (2, count) and kept.dtype == torch.long
        assert torch.equal(kept, kept.sort(dim=1).values) and int(kept.min()) >= 0 and int(kept.max()) < 64
        assert all(len(set(row.tolist())) == count for row in kept)
        if rec_h is not None:
            assert rec_h.shape[0] == 2 and rec_h.shape[2] == 32 and rec_idx.shape == rec_h.shape[:2]
        again = r.select(q, k, hidden, vis, count, **ctx)[0]
        assert torch.equal(kept, again)  # deterministic
    # batch rows are independent
    ctx1 = dict(ctx, hidden_out=out[1:], prepared=r.prepare(hidden[1:], vis))
    one = r.select(q[1:], k[1:], hidden[1:], vis, 16, **ctx1)[0]
    assert torch.equal(r.select(q, k, hidden, vis, 16, **ctx)[0][1], one[0])
    # keep = N: no stage prunes (the forward path skips stages whose count is not below the block)
    assert all(c >= 64 for _, c in r.stages(64, 64, 32))
    with pytest.raises(reducers.ReducerError, match="keep = 0 is out of range; allowed: 1..64"):
        r.stages(0, 64, 32)
