"""Every reducer's cost model (``cost()`` beside its definition) against one real call on the
CPU: launches against the dispatched aten ops that launch a kernel (``bench_reducers.py``'s
op counter: views and allocations excluded), matrix-product FLOPs against
``torch.utils.flop_counter.FlopCounterMode``.

Tolerance: launches within 3% (or 1), matrix-product FLOPs within 1e-6 relative (both exact on
the float32 CPU path today: the formulas follow the code op by op); all FLOPs and bytes >= 0
and FLOPs at least the products'. In-LLM methods: ``select_cost`` against one ``select`` call
(LLaVA-shaped q/k/hidden), and ``cost()`` = the schedule's stages.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import reducers
from benchmarks.bench_reducers import OpCounter, features, in_llm_inputs, reducer_calls, signals

#: dispatched ops that launch no kernel besides views: allocations and re-labellings
NO_KERNEL_OPS = {"empty", "empty_like", "empty_strided", "lift_fresh", "_unsafe_view", "alias", "detach"}


class KernelCounter(OpCounter):
    """bench_reducers.py's op counter, also counting the ops that launch a kernel."""

    def __init__(self):
        super().__init__()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.__name__.split(".")[0] not in NO_KERNEL_OPS:
            self.kernels += 1
        return super().__torch_dispatch__(func, types, args, kwargs)

CASES = [  # name, parameters, budgets
    ("random", {}, (1, 64, 300)), ("spatial", {}, (16, 64, 128)), ("saliency", {}, (64,)),
    ("saliency", {"rope": True}, (64,)),
    ("cluster-saliency-static", {}, (64,)), ("cluster-saliency-keys", {}, (64,)),
    ("cluster-saliency-dynamic", {}, (64, 200)), ("cluster-saliency-dynamic", {"lambda_": 2.0}, (64,)),
    ("cluster-saliency-aggregate", {}, (16, 64)), ("cluster-saliency-aggregate", {"x": 0.1}, (64,)),
    ("cluster-aggregate", {}, (16, 64)), ("cluster-aggregate", {"order": "position"}, (32,)),
    ("visionzip", {}, (1, 5, 64, 192)), ("visionzip", {"stage": "post-projector"}, (1, 64)),
    ("prumerge-plus", {}, (64,)), ("prumerge-plus", {"stage": "post-projector"}, (64,)),
    ("prumerge-plus", {"budget": "fixed"}, (16, 64)),
    ("prumerge-plus", {"budget": "fixed", "stage": "post-projector"}, (64,)),
    ("tome", {}, (64, 300)), ("tome", {"stage": "post-projector"}, (64,)), ("tome", {"steps": 2}, (400,)),
    ("fastervlm", {}, (64,)), ("fastervlm", {"stage": "post-projector"}, (64,)), ("divprune", {}, (16, 64)),
]
IN_LLM = ["fastv", "dart", "sparsevlm"]
CTX = {"text_tokens": 40, "heads": 32, "kv_heads": 32, "vision_hidden": 1024}  # bench_reducers.py's shapes


def tower(batch=1):
    """Pre-projector inputs: the tower's hidden state [B, 1 + 576, 1024] with CLS and its signals."""
    g = torch.Generator().manual_seed(3000)
    x = torch.randn(batch, 577, 1024, generator=g)
    return x, {"tower_cls_attention": torch.rand(batch, 577, generator=g).softmax(-1),
               "tower_keys": torch.randn(batch, 577, 64, generator=g),
               "tower_last_k": torch.randn(batch, 577, 1024, generator=g),
               "tower_last_q": torch.randn(batch, 577, 1024, generator=g)}


def measured(fn):
    with KernelCounter() as c:
        fn()
    with FlopCounterMode(display=False) as f:
        fn()
    return c.kernels, f.get_total_flops()


def check(est, kernels, flops):
    assert abs(est["launches"] - kernels) <= max(1, 0.03 * kernels), (est["launches"], kernels)
    assert est["matmul_flops"] == pytest.approx(flops, rel=1e-6, abs=1), (est["matmul_flops"], flops)
    assert est["flops"] >= est["matmul_flops"] - 1 and est["bytes"] > 0


@pytest.fixture(scope="module")
def post_inputs():
    return features(0, "cpu"), signals(0, "cpu")


@pytest.mark.parametrize("name, params, keeps", CASES, ids=lambda v: str(v))
def test_cost_model_matches_one_real_call(name, params, keeps, post_inputs):
    r = reducers.get(name, **params)
    if r.hook == "pre-projector":
        x, sig = tower()
    else:
        x, sig = post_inputs
    s = {k: v for k, v in sig.items() if k in r.signals + r.optional_signals and k != "saliency"}
    for keep in keeps:
        out = {}

        def call():
            out["r"] = r.reduce(x, keep, generator=torch.Generator().manual_seed(0), **s)
        kernels, flops = measured(call)
        # a method that sets its own count is costed at the count it chose
        costed = keep if r.count_from_keep() else out["r"].count
        check(r.cost(x.shape[1], x.shape[2], costed, batch=1, **CTX), kernels, flops)


@pytest.mark.parametrize("name", ["random", "cluster-aggregate", "visionzip", "divprune"])
def test_batch_scales_the_work_not_the_launches(name):
    r = reducers.get(name)
    one, two = r.cost(577, 1024, 64, batch=1, **CTX), r.cost(577, 1024, 64, batch=2, **CTX)
    assert one["launches"] == two["launches"] and two["matmul_flops"] == pytest.approx(2 * one["matmul_flops"])
    if name == "visionzip":
        x, sig = tower(batch=2)
        s = {k: v for k, v in sig.items() if k in r.signals}
        check(two, *measured(lambda: r.reduce(x, 64, **s)))


@pytest.mark.parametrize("name", IN_LLM)
def test_in_llm_select_cost_matches_one_select_call(name):
    """``select`` as bench_reducers.py calls it (with ``hidden_out``, a final norm, ``prepared``)."""
    r = reducers.get(name)
    inputs = in_llm_inputs(0, "cpu")
    q, k, hidden, vis = inputs
    b, heads, seq, _ = q.shape
    n = vis.stop - vis.start
    for keep in (2, 16, 64, 192, 575):
        call, _ = reducer_calls(name, keep, "cpu", torch.float32, (None, None, inputs))
        kernels, flops = measured(call)
        est = r.select_cost(b, seq, n, seq - vis.stop, keep, hidden.shape[-1], heads).result()
        check(est, kernels, flops)
    if name == "sparsevlm":  # prepare(), once per request
        kernels, flops = measured(lambda: r.prepare(hidden, vis))
        check(r.prepare_cost(b, n, seq - vis.stop, hidden.shape[-1]).result(), kernels, flops)


def test_in_llm_cost_is_the_forward_paths_work_plus_select_per_stage():
    from reducers.in_llm_costs import forward_work

    sv = reducers.get("sparsevlm")
    text, d = 64, 4096
    total = sv.cost(576, d, 64, batch=1, text_tokens=text, heads=32, kv_heads=32, layers=32)
    want = sv.prepare_cost(1, 576, text - 35, d).launches
    for _, before, count, after in sv.schedule(64, 576, 32):
        want += forward_work(1, before + text, after + text, d, 32, 32, after > count).launches
        want += sv.select_cost(1, before + text, before, text - 35, count, d, 32).launches
    assert total["launches"] == want and total["work_dtype"] == "model" and total["capturable"] is False
    assert sv.cost(576, d, 576, text_tokens=text)["launches"] == 0  # keep = N: every stage is skipped


def test_keep_out_of_range_is_refused():
    with pytest.raises(reducers.ReducerError, match="keep = 0 is out of range; allowed: 1..576"):
        reducers.get("random").cost(576, 4096, 0)
