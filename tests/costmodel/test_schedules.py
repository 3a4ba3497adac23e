"""In-LLM reducers are costed on their own per-layer schedule, taken from the reducer; decode
steps are summed exactly; the schedule is the one the forward path really runs."""

import numpy as np
import pytest
import torch

import costmodel as cm
import reducers
from costmodel import engine as E

L, H, d, h, I, V = 32, 32, 128, 4096, 11008, 32064  # LLaVA-1.5-7B's LLM (llava vocab)


def layer_flops(T):
    """One LLaMA decoder layer's prefill FLOPs at T tokens, eager attention, counted by hand."""
    proj = 2 * T * h * h * 4 + 2 * T * h * I * 3
    attention = 2 * 2 * H * T * T * d + 5 * H * T * T
    return proj + attention + 2 * 4 * T * h + 2 * T * h + 5 * T * I  # norms, residual adds, SiLU*up


def layer_ops_flops(pred, prefix=""):
    return sum(o.flops * o.layers for o in pred.reduced.per_op if o.layers > 1 and o.name.startswith(prefix))


def test_fastv_k2_keep64_flops_mix_the_two_lengths():
    fastv = reducers.get("fastv", layer=2)
    counts = fastv.layer_tokens(64, 576, L)
    K = counts.count(576)  # the layers that see all 640 tokens: layer K-1 scores, its output is pruned
    assert K == fastv.layer == 2 and counts[K:] == [64] * (L - K)
    p = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, reducer=fastv)
    full = cm.predict("llava-1.5-7b", "h100-sxm", keep=576)
    short = cm.predict("llava-1.5-7b", "h100-sxm", keep=64)
    want = K / L * layer_ops_flops(full) + (1 - K / L) * layer_ops_flops(short)
    assert layer_ops_flops(p) == pytest.approx(want, rel=1e-9)
    assert layer_ops_flops(full) == pytest.approx(L * layer_flops(640), rel=1e-12)
    assert p.reduced.stages == [{"layers": [0, 1], "tokens": 640, "visual_tokens": 576},
                                {"layers": [2, 31], "tokens": 128, "visual_tokens": 64}]
    # around the layers: rotary tables for the 640 input positions, the final norm on the 128 left
    ops = {o.name: o for o in p.reduced.per_op}
    assert ops["rotary_emb"].flops == 2 * (d / 2) * 640 and ops["final_norm"].flops == 128 * h * 4
    # each layer's KV cache at its own length
    assert p.reduced.kv_cache_bytes == 2 * 2 * H * d * (K * 640 + (L - K) * 128)


def test_sparsevlm_stages_with_recycled_tokens_and_flops_by_hand():
    sv = reducers.get("sparsevlm")
    # published schedule at 64: 66 / 30 / 17 kept from the outputs of layers 2 / 6 / 15; recycling
    # appends int(c / 10) + 1 merged tokens, c = int(0.3 x pruned) + 1 candidates: 576 -> 82 -> 32 -> 18
    assert sv.schedule(64, 576, L) == [(2, 576, 66, 66 + 16), (6, 82, 30, 30 + 2), (15, 32, 17, 17 + 1)]
    p = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, reducer=sv)
    assert [(s["layers"], s["tokens"]) for s in p.reduced.stages] == [
        ([0, 2], 640), ([3, 6], 82 + 64), ([7, 15], 32 + 64), ([16, 31], 18 + 64)]
    by_hand = 3 * layer_flops(640) + 4 * layer_flops(146) + 9 * layer_flops(96) + 16 * layer_flops(82)
    by_hand += 2 * (d / 2) * 640 + 4 * 82 * h + 2 * h * V  # rotary (input), final norm, LM head (last position)
    assert p.reduced.flops == pytest.approx(by_hand, rel=1e-12)
    assert p.reduced.tokens == 640 and p.savings["flops"] > 0.75


def test_a_stages_only_reducer_is_read_by_duck_typing():
    class TwoStage:
        hook = "in-llm"
        name = "two-stage"

        def stages(self, keep, n_visual, n_layers):
            return [(4, 300), (10, keep), (12, 500)]  # the last is not below the current count: skipped

    counts = cm.schedule.layer_counts(TwoStage(), 64, 576, L)  # read by reducers.in_llm's protocol
    assert counts == [576] * 5 + [300] * 6 + [64] * 21
    p = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, reducer=TwoStage())
    assert p.reduced.reducer_time_s == 0 and any("has no cost model" in a for a in p.assumptions)


@pytest.mark.parametrize("calibrated", [False, True])
@pytest.mark.parametrize("flash", [False, True])
def test_decode_closed_form_equals_the_sum_of_steps(calibrated, flash):
    llm = cm.load_model("llava-1.5-7b").llm
    opts = cm.Options(flash_attention=flash)
    cal = cm.Calibration.load("h100-sxm") if calibrated else None
    hw = E.hardware([cm.load_gpu("h100-sxm")], opts, cal)
    segs = [(0, 2, 640.0), (2, 30, 128.0)]
    steps = 37
    closed = E.decode_cost(llm, segs, 4.0, hw, opts, steps)
    step_opts = cm.Options(stage="decode", flash_attention=flash)
    loop = [E.llm_cost(llm, [(s, n, t + i) for s, n, t in segs], 4.0, hw, step_opts) for i in range(steps)]
    assert closed["time_s"] == pytest.approx(sum(x["time_s"] for x in loop), rel=1e-9)
    assert closed["flops"] == pytest.approx(sum(x["flops"] for x in loop), rel=1e-9)
    assert closed["memory_access_bytes"] == pytest.approx(sum(x["memory_access_bytes"] for x in loop), rel=1e-9)


def test_sum_max_affine_crossing_both_ways():
    for a0, a1, b0, b1 in [(0.0, 1.0, 5.0, 0.0), (10.0, -1.0, 2.0, 0.5), (1.0, 0.0, 1.0, 0.0), (3.0, 2.0, 1.0, 2.0),
                           (1.0, 2.0, 3.0, 2.0), (-1.0, 0.0, 0.5, 0.0), (9.0, 0.1, 0.0, 0.0)]:
        want = sum(max(a0 + a1 * i, b0 + b1 * i) for i in range(23))
        assert E.sum_max_affine(a0, a1, b0, b1, 23) == pytest.approx(want, rel=1e-12)
        arr = E.sum_max_affine(np.array([a0]), np.array([a1]), np.array([b0]), np.array([b1]), 23)
        assert float(arr[0]) == pytest.approx(want, rel=1e-12)


def test_output_tokens_shrink_every_decode_step_with_the_kv_cache():
    fastv = reducers.get("fastv")
    p = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, reducer=fastv, output_tokens=256)
    b, r = p.baseline, p.reduced
    assert 0 < r.decode_time_s < b.decode_time_s
    assert r.request_time_s == pytest.approx(r.ttft_s + r.decode_time_s)
    assert p.savings["request_time_s"] < p.savings["ttft_s"]  # decode reads the weights every step
    one = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, output_tokens=1)
    assert one.reduced.decode_time_s == 0 and "decode_time_s" not in cm.predict(
        "llava-1.5-7b", "h100-sxm", keep=64).to_dict()["reduced"]


def _recorded_lengths(tiny, pixel_values, reducer, keep):
    """The sequence length each decoder layer of the tiny LLaVA really ran on."""
    from vlm import Runner, make_request, synthetic_prompt

    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=1), pixel_values[:1])
    layers = tiny.model.model.language_model.layers
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args, kw: seen.append((args[0] if args else
                                                                               kw["hidden_states"]).shape[1]),
                                             with_kwargs=True) for layer in layers]
    try:
        Runner(tiny).run(req, reducer, keep=keep, generator=torch.Generator().manual_seed(0))
    finally:
        for hk in hooks:
            hk.remove()
    return seen, req.input_ids.shape[1] - tiny.visual_tokens, len(layers)


@pytest.mark.parametrize("name, params, keep", [("fastv", {"layer": 2}, 8), ("sparsevlm", {"layers": [1, 2, 3]}, 16),
                                                ("dart", {"layer": 1}, 12)])
def test_the_schedule_is_the_one_the_forward_path_runs(name, params, keep):
    from vlm.images import load_images
    from vlm.loading import build_preset

    tiny = build_preset("tiny", seed=0)
    pixel_values = tiny.preprocess([im for _, im in load_images(limit=1)])
    r = reducers.get(name, **params)
    seen, text, n_layers = _recorded_lengths(tiny, pixel_values, r, keep)
    assert seen == [c + text for c in r.layer_tokens(keep, tiny.visual_tokens, n_layers)]
