"""Compat mode reproduces LLM-Viewer (main @472f71f) on its own reference outputs."""

import json

import pytest

import costmodel as cm
from tests.conftest import DATA

REF = json.loads((DATA / "llm_viewer_llama2_7b_h100.json").read_text())
TOTALS = {  # our name -> LLM-Viewer's
    "flops": "OPs", "memory_access_bytes": "memory_access", "time_s": "inference_time",
    "activation_memory_bytes": "memory_consumption_tmp_act", "weight_bytes": "memory_consumption_weight",
    "kv_cache_bytes": "memory_consumption_kv_cache",
}
PER_OP = {
    "flops": "OPs", "memory_access_bytes": "memory_access", "arithmetic_intensity": "arithmetic_intensity",
    "time_s": "inference_time", "load_weight_bytes": "load_weight", "load_act_bytes": "load_act",
    "store_act_bytes": "store_act", "load_kv_bytes": "load_kv_cache", "store_kv_bytes": "store_kv_cache",
}


def _predict(seq_len, flash, stage="prefill", model="llama2-7b", **kw):
    # the reference's seq_len counts all tokens: split it as visual + 64 text, keep them all
    return cm.predict(model, "h100-sxm", visual_tokens=seq_len - 64, text_tokens=64,
                      options=cm.Options(compat="llm-viewer", flash_attention=flash, stage=stage, **kw))


@pytest.mark.parametrize("case", REF["cases"], ids=lambda c: f"{c['stage']}-L{c['seq_len']}-flash{c['flash']}")
def test_totals_and_per_op_match_reference(case):
    pred = _predict(case["seq_len"], case["flash"], case["stage"])
    cost = pred.baseline
    for ours, theirs in TOTALS.items():
        assert getattr(cost, ours) == pytest.approx(case["totals"][theirs], rel=1e-3), ours
    ops = {o.name: o for o in cost.per_op}
    assert set(ops) == set(case["per_op"])
    for name, ref in case["per_op"].items():
        for ours, theirs in PER_OP.items():
            assert getattr(ops[name], ours) == pytest.approx(ref[theirs], rel=1e-3), (name, ours)
        assert ops[name].bound == ref["bound"], name


def test_hardware_figures_are_llm_viewers():
    lv = cm.load_gpu("h100-sxm").llm_viewer
    for key, value in REF["hardware_nvidia_H100"].items():
        assert getattr(lv, key) == value


def _lv_decode_expect(L, flash):
    """LLM-Viewer's decode formulas evaluated by hand for LLaMA-2-7B, batch 1, 16-bit."""
    h, H, d, I, V, a = 4096, 32, 128, 11008, 32000, 2
    exp = {
        "q_proj": dict(flops=h * h * 2, load_weight_bytes=h * h * a, load_act_bytes=h * a, store_act_bytes=h * a),
        "k_proj": dict(flops=h * h * 2, store_act_bytes=0, store_kv_bytes=h * a),
        "gate_proj": dict(flops=h * I * 2, store_act_bytes=I * a),
        "attn_norm": dict(flops=h * 7, load_act_bytes=h * a),
        "mlp_act": dict(flops=h * 2, load_act_bytes=2 * h * a, store_act_bytes=h * a),
        "lm_head": dict(flops=h * V, load_weight_bytes=h * V * a, load_act_bytes=h * a, store_act_bytes=V * a),
    }
    if flash:
        exp["fused_attention"] = dict(flops=4 * L * d * H + 5 * H * L, load_act_bytes=d * H * a,
                                      store_act_bytes=2 * L * H * a, load_kv_bytes=L * d * H * a * 2)
    else:
        exp["qk_matmul"] = dict(flops=2 * L * d * H, load_act_bytes=d * H * a, store_act_bytes=L * H * a,
                                load_kv_bytes=L * d * H * a)
        exp["softmax"] = dict(flops=5 * H * L, load_act_bytes=H * L * a, store_act_bytes=H * L * a)
        exp["sv_matmul"] = dict(flops=2 * L * d * H, load_act_bytes=L * H * a, store_act_bytes=d * H * a,
                                load_kv_bytes=L * d * H * a)
    return exp


@pytest.mark.parametrize("flash", [False, True])
def test_decode_matches_llm_viewer_formulas(flash):
    L = 640
    pred = _predict(L, flash, "decode")
    ops = {o.name: o for o in pred.baseline.per_op}
    for name, fields in _lv_decode_expect(L, flash).items():
        for k, v in fields.items():
            assert getattr(ops[name], k) == pytest.approx(v, rel=1e-9), (name, k)
    # totals: per-layer ops x 32 layers + LM head once; KV footprint of the 640 prefilled tokens
    layer = sum(o.flops for o in pred.baseline.per_op if o.layers == 32)
    assert pred.baseline.flops == pytest.approx(layer * 32 + 4096 * 32000)
    assert pred.baseline.kv_cache_bytes == 2 * 4096 * L * 2 * 32
    assert pred.baseline.activation_memory_bytes == sum(o.store_act_bytes for o in pred.baseline.per_op
                                                        if o.layers == 32)


def test_int8_uses_int8_peak_and_gqa_sizes_kv_by_kv_heads():
    pred = cm.predict("llama3-8b", "h100-sxm", visual_tokens=576, text_tokens=64,
                      options=cm.Options(compat="llm-viewer", w_bits=8, a_bits=8))
    ops = {o.name: o for o in pred.baseline.per_op}
    assert ops["k_proj"].store_kv_bytes == 640 * 4096 * 8 / 32 * 1
    q = ops["q_proj"]
    assert q.time_s == pytest.approx(max(q.flops / 1979e12, q.memory_access_bytes / 3072e9))


def test_compat_refuses_gpus_llm_viewer_lacks():
    with pytest.raises(cm.PredictError, match="LLM-Viewer has no hardware entry for h200"):
        cm.predict("llama2-7b", "h200", visual_tokens=576, options=cm.Options(compat="llm-viewer"))
