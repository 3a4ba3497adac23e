"""predict() evaluates one configuration on Python floats (no per-op table unless read); the
same numbers as sweep()'s numpy pass, to 1e-12, on many configurations."""

import itertools

import numpy as np
import pytest

import costmodel as cm
import reducers

CAL = cm.Calibration.load("h100-sxm")

CONFIGS = [
    dict(model="llava-1.5-7b", gpu="h100-sxm"),
    dict(model="llava-1.5-13b", gpu="a100-80gb", options=cm.Options(flash_attention=True)),
    dict(model="llava-next-7b", gpu="l40s", options=cm.Options(w_bits=4, kv_bits=8)),
    dict(model="llama3-8b", gpu="h200", visual_tokens=576, text_tokens=100),
    dict(model="llava-1.5-7b", gpu="rtx-4090", options=cm.Options(all_logits=True, a_bits=32, w_bits=32)),
    dict(model="llava-1.5-7b", gpu="h100-sxm", calibration=CAL),
    dict(model="llava-1.5-7b", gpu="h100-sxm", calibration=CAL, options=cm.Options(cuda_graphs=True)),
    dict(model="llava-1.5-7b", gpu="h100-pcie", options=cm.Options(stage="decode")),
    dict(model="llama2-7b", gpu="h100-sxm", visual_tokens=576, options=cm.Options(compat="llm-viewer")),
    dict(model="llama2-7b", gpu="a100-40gb", visual_tokens=576,
         options=cm.Options(compat="llm-viewer", flash_attention=True, stage="decode")),
]
REQUESTS = [dict(), dict(output_tokens=200), dict(reducer="fastv"), dict(reducer="sparsevlm", output_tokens=33),
            dict(reducer="visionzip"), dict(reducer="cluster-aggregate")]


def _check(cfg, req, keep, batch):
    kw = {k: v for k, v in cfg.items() if k not in ("model", "gpu")}
    if req.get("reducer"):
        kw["reducer"] = reducers.get(req["reducer"])
    if req.get("output_tokens"):
        kw["output_tokens"] = req["output_tokens"]
    p = cm.predict(cfg["model"], cfg["gpu"], keep=keep, batch=batch, **kw)
    sw = cm.sweep(cfg["model"], [cfg["gpu"]], keep=[keep], batch=[batch], **kw)
    for part, d in (("baseline", sw.baseline), ("reduced", sw.reduced)):
        cost = getattr(p, part)
        for key, arr in d.items():
            got, want = float(getattr(cost, key)), float(arr[0, 0, 0])
            assert got == pytest.approx(want, rel=1e-12, abs=1e-300), (part, key)
    assert set(p.savings) == set(sw.savings)
    for key, arr in sw.savings.items():
        assert p.savings[key] == pytest.approx(float(arr[0, 0, 0]), rel=1e-12, abs=1e-15), key
    return p


@pytest.mark.parametrize("ci", range(len(CONFIGS)))
def test_fast_path_equals_the_sweep(ci):
    cfg = CONFIGS[ci]
    corrected_prefill = not (cfg.get("options") and (cfg["options"].compat or cfg["options"].stage != "prefill"))
    reqs = REQUESTS if corrected_prefill and cfg["model"].startswith("llava") else REQUESTS[:1]
    V = cfg.get("visual_tokens") or cm.load_model(cfg["model"]).visual_tokens
    n = 0
    for req, keep, batch in itertools.product(reqs, (1, 64, V // 3, V), (1, 3)):
        _check(cfg, req, keep, batch)
        n += 1
    assert n >= 8


def test_the_per_op_table_is_built_only_when_read_and_matches_the_totals():
    p = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, reducer=reducers.get("fastv"))
    assert p.reduced._tables[0]._tables is None  # nothing built yet
    ops = p.reduced.per_op
    assert sum(o.flops * o.layers for o in ops) == pytest.approx(p.reduced.flops, rel=1e-12)
    assert sum(o.time_s * o.layers for o in ops) == pytest.approx(p.reduced.time_s, rel=1e-12)
    assert {o.name.split(".")[0] for o in ops if o.layers > 1} == {"L0-1", "L2-31"}


def test_sweep_keeps_schedules_per_budget():
    sv = reducers.get("sparsevlm")
    keeps = np.array([16, 64, 128, 192, 400, 576])
    sw = cm.sweep("llava-1.5-7b", ["h100-sxm", "l40s"], keep=keeps, batch=[1, 8], reducer=sv)
    for ki, k in enumerate(keeps):
        p = cm.predict("llava-1.5-7b", "l40s", keep=int(k), batch=8, reducer=sv)
        assert sw.stages(ki) == p.reduced.stages
        assert float(sw.reduced["ttft_s"][1, 1, ki]) == pytest.approx(p.reduced.ttft_s, rel=1e-12)
