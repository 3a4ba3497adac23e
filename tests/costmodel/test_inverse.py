"""The inverse questions (which keep reaches a target; from which keep a reducer pays), the
reducer's own cost in a prediction, and their one-line errors."""

import json

import numpy as np
import pytest

import costmodel as cm
import reducers
from vtc.cli import main


def test_target_saving_gives_the_largest_keep_that_reaches_it():
    answers = cm.solve_target("llava-1.5-7b", ["h100-sxm", "l40s"], ttft_saving=0.4, batch=[1, 8])
    assert [(a.gpu, a.batch) for a in answers] == [("h100-sxm", 1), ("h100-sxm", 8), ("l40s", 1), ("l40s", 8)]
    for a in answers:
        assert a.keep is not None and a.saving >= 0.4 and a.retention == pytest.approx(a.keep / 576)
        at = cm.predict("llava-1.5-7b", a.gpu, keep=a.keep, batch=a.batch)
        above = cm.predict("llava-1.5-7b", a.gpu, keep=a.keep + 1, batch=a.batch)
        assert at.savings["ttft_s"] >= 0.4 > above.savings["ttft_s"]


def test_target_ms_says_why_a_gpu_cannot_reach_it():
    answers = cm.solve_target("llava-1.5-7b", ["h100-sxm", "l40s"], ttft_ms=6)
    h100, l40s = answers
    assert h100.keep is not None and h100.ttft_s <= 0.006
    assert l40s.keep is None and "the LLM still reads every weight" in l40s.reason and "keep 1" in l40s.reason


def test_the_vision_tower_alone_can_exceed_the_target():
    with pytest.raises(cm.PredictError) as e:
        cm.solve_target("llava-1.5-7b", ["l40s"], ttft_ms=3)
    assert "the vision tower and projector alone take" in str(e.value) and "allowed: >= " in str(e.value)


def test_an_eager_host_floor_is_named():
    cal = cm.Calibration.load("h100-sxm")
    with pytest.raises(cm.PredictError, match=r"eager runtime's host floor .*try --cuda-graphs.*allowed: <= "):
        cm.solve_target("llava-1.5-7b", ["h100-sxm"], ttft_saving=0.5, calibration=cal)
    ok = cm.solve_target("llava-1.5-7b", ["h100-sxm"], ttft_saving=0.3, calibration=cal,
                         options=cm.Options(cuda_graphs=True))
    assert ok[0].keep is not None


@pytest.mark.parametrize("kw, message", [
    (dict(ttft_saving=1.0), "target TTFT saving 1.0 is out of range; allowed: 0 < saving < 1"),
    (dict(ttft_ms=-2), "target TTFT -2 ms is out of range; allowed: > 0 ms"),
    (dict(), "give one target"),
    (dict(ttft_saving=0.99), "is below the floor on every GPU and batch given"),
])
def test_bad_targets_are_named(kw, message):
    with pytest.raises(cm.PredictError) as e:
        cm.solve_target("llava-1.5-7b", ["h100-sxm"], **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_break_even_bounds_the_keeps_with_a_positive_net_saving():
    rows = cm.break_even("llava-1.5-7b", ["h100-sxm"], [reducers.get("random"), reducers.get("cluster-aggregate")])
    by = {r.reducer: r for r in rows}
    rnd, ca = by["random"], by["cluster-aggregate"]
    net = np.array([rnd.net_saving_s[k] for k in range(1, 577)])
    positive = np.flatnonzero(net[:-1] > 0) + 1
    assert rnd.smallest == positive[0] and rnd.largest == positive[-1] < 576 and rnd.contiguous
    assert list(positive) == list(range(rnd.smallest, rnd.largest + 1))
    assert net[rnd.largest] <= 0  # the next budget does not pay
    assert ca.smallest is None and all(v < 0 for k, v in ca.net_saving_s.items() if k < 576)  # K-means: eager launches


def test_the_reducers_own_time_is_in_ttft_and_energy():
    p = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, reducer=reducers.get("divprune"))
    bare = cm.predict("llava-1.5-7b", "h100-sxm", keep=64)
    r = p.reduced
    assert r.reducer_time_s > 0 and r.reducer_flops > 0
    assert r.ttft_s == pytest.approx(bare.reduced.ttft_s + r.reducer_time_s)
    assert r.request_energy_j > bare.reduced.request_energy_j
    gpu = cm.load_gpu("h100-sxm")
    c = reducers.get("divprune").cost(576, 4096, 64, batch=1, element_bytes=2, text_tokens=64)
    roof = max(c["flops"] / gpu.peak_ops_per_s["fp32"], c["bytes"] / gpu.memory_bandwidth_bytes_per_s)
    assert r.reducer_time_s == pytest.approx(roof + c["launches"] * gpu.launch_s, rel=1e-12)
    graphs = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, reducer=reducers.get("divprune"),
                        options=cm.Options(cuda_graphs=True))
    assert graphs.reduced.reducer_time_s == pytest.approx(roof + c["launches"] * gpu.graph_launch_s, rel=1e-12)


def test_a_pre_projector_reducer_shrinks_the_projector():
    p = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, reducer=reducers.get("visionzip"))
    assert p.reduced.projector_time_s < p.baseline.projector_time_s


def test_cli_reducer_json_break_even_and_target(capsys):
    assert main(["predict", "--reducer", "fastv", "--keep", "64", "--output-tokens", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reducer"] == "fastv" and out["reduced"]["stages"][0] == {"layers": [0, 1], "tokens": 640,
                                                                         "visual_tokens": 576}
    for k in ("reducer_time_s", "reducer_flops", "decode_time_s", "request_time_s", "request_energy_j"):
        assert k in out["reduced"]
    assert main(["predict", "--break-even", "--reducer", "random,fastv", "--gpu", "h100-sxm,l40s"]) == 0
    text = capsys.readouterr().out
    assert "h100-sxm: net > 0 at keep" in text and "l40s: net > 0 at keep" in text and "fastv" in text
    assert main(["predict", "--target-ttft-saving", "0.4", "--gpu", "l40s"]) == 0
    assert "largest keep" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--reducer", "fastvv", "--keep", "64"], "unknown reducer 'fastvv'; closest: fastv"),
    (["--reducer", "tome", "--reducer-param", "steps=1", "--keep", "100"],
     "keep = 100 is not defined by reducer 'tome' (ToMe cannot merge 476 tokens"),
    (["--reducer", "tome", "--reducer-param", "steps=1", "--keep", "100"], "allowed: keep 288..576"),
    (["--target-ttft-ms", "1"], "target TTFT 1 ms is below the floor on every GPU and batch given"),
    (["--break-even", "--keep", "64"], "--keep/--retention are what --break-even and --target-* find"),
    (["--reducer-param", "layer=3"], "--reducer-param needs --reducer"),
    (["--reducer", "fastv", "--compat", "llm-viewer", "--model", "llama2-7b", "--visual-tokens", "576"],
     "a reducer and --output-tokens are corrected-mode features"),
    (["--output-tokens", "8", "--stage", "decode"], "--output-tokens 8 needs stage 'prefill'"),
])
def test_cli_errors_are_one_line(capsys, argv, message):
    assert main(["predict", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
