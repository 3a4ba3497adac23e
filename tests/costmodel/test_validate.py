import json

import pytest

import costmodel as cm
import reducers
from costmodel.validation import ValidateError, validate
from rows import read_rows
from vtc.cli import main


def synthetic_run(path, *, overhead=0.002, scale=1.3, energy=True):
    """Rows as an H100 run of llava-1.5-7b would write them, with prefill = overhead + scale x roofline."""
    rows = []
    opts = cm.Options(flash_attention=True)
    for image in ("a", "b"):
        for reducer, keep in [("none", 576), ("random", 64), ("random", 128), ("cluster-aggregate", 192),
                              ("spatial", 288)]:
            sw = cm.sweep("llava-1.5-7b", ["h100-sxm"], keep=keep, text_tokens=64, options=opts)
            c = sw.components["reduced"]
            tc, tm = float(c["compute_time_s"][0, 0, 0]), float(c["memory_time_s"][0, 0, 0])
            prefill = overhead + scale * (tc + tm) / 2 * 1.0 + (0.0005 if image == "b" else 0)
            gpu_time = prefill + 0.0015
            row = {"kind": "profile", "status": "ok", "model": "preset:llava-1.5-7b", "spec": "llava-1.5-7b",
                   "gpu": "NVIDIA H100 80GB HBM3", "reducer": reducer, "keep": keep, "kept_tokens": keep,
                   "image": image, "dtype": "bfloat16", "attn_implementation": "sdpa", "text_tokens": 64,
                   "prefill_time_s": prefill, "vision_time_s": 0.0012, "gpu_time_s": gpu_time, "options": {}}
            if energy:
                row["energy_j"] = 90.0 * gpu_time + 4e-13 * float(c["flops"][0, 0, 0]) \
                    + 5e-11 * float(c["memory_access_bytes"][0, 0, 0])
            rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_validate_prints_predicted_vs_measured_and_calibrates(tmp_path, capsys):
    run = tmp_path / "run.jsonl"
    synthetic_run(run)
    cal_path = tmp_path / "cal.json"
    assert main(["validate", str(run), "--calibration-out", str(cal_path)]) == 0
    out = capsys.readouterr().out
    assert "prefill measured (ms)" in out and "predicted (ms)" in out and "error (%)" in out
    assert "llava-1.5-7b on h100-sxm: 10 measured conditions" in out
    cal = cm.Calibration.load(cal_path)
    assert cal.gpu == "h100-sxm" and cal.n == 10
    assert cal.error["after_median_abs_rel"] < cal.error["before_median_abs_rel"]
    assert cal.energy is not None and cal.error["energy_after_median_abs_rel"] < 0.05
    # the calibration is what predict applies
    capsys.readouterr()
    assert main(["predict", "--keep", "64", "--calibration", str(cal_path), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    raw = cm.predict("llava-1.5-7b", "h100-sxm", keep=64)
    assert pred["reduced"]["time_s"] != pytest.approx(raw.reduced.time_s)
    assert any("calibrated for h100-sxm" in a for a in pred["assumptions"])


def test_validate_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValidateError, match="no ok profile rows"):
        validate(list(read_rows(empty)))
    run = tmp_path / "run.jsonl"
    rows = synthetic_run(run)
    for r in rows:
        r["gpu"] = "Some Future GPU"
    run.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValidateError, match="no hardware spec matches device 'Some Future GPU'; give one with --gpu"):
        validate(list(read_rows(run)))
    reports, _ = validate(list(read_rows(run)), gpu="h200")
    assert reports[0].gpu == "h200"
    with pytest.raises(cm.SpecError, match="is neither a file nor a shipped calibration; shipped: "):
        cm.Calibration.load(tmp_path / "missing.json")


def test_in_llm_rows_are_predicted_with_their_exact_schedule(tmp_path):
    from vtc.validate_cmd import ReducerResolver

    rows = synthetic_run(tmp_path / "run.jsonl")
    fastv = {**rows[1], "reducer": "fastv", "hook": "in-llm", "options": {"reducer_params": {"layer": 3}},
             "kept_tokens": 64, "keep": 64}
    reports, _ = validate(rows + [fastv], reducer_for=ReducerResolver())
    comp = [c for c in reports[0].comparisons if c.row.get("reducer") == "fastv"][0]
    r = reducers.get("fastv", layer=3)
    sw = cm.sweep("llava-1.5-7b", ["h100-sxm"], keep=64, text_tokens=64, reducer=r,
                  options=cm.Options(flash_attention=True))
    assert sw.stages(0)[0]["layers"] == [0, 2]  # three layers see every token
    assert comp.predicted_prefill_s == pytest.approx(float(sw.reduced["time_s"][0, 0, 0] +
                                                           sw.reduced["reducer_time_s"][0, 0, 0]), rel=1e-12)
    assert comp.reducer_s > 0 and comp.calibrated_prefill_s is not None
    with pytest.raises(ValidateError, match="its schedule needs the reducer object"):
        validate(rows + [fastv])


def test_the_reducer_phase_fits_the_per_launch_times(tmp_path):
    from vtc.validate_cmd import ReducerResolver

    rows = synthetic_run(tmp_path / "run.jsonl")
    gpu = cm.load_gpu("h100-sxm")
    for name in ("random", "divprune", "cluster-aggregate", "visionzip"):
        for keep in (64, 128):
            c = reducers.get(name, **({"stage": "post-projector"} if name == "visionzip" else {})).cost(
                576, 4096, keep, batch=1, text_tokens=40, vision_hidden=1024, element_bytes=2)
            roof = max(c["flops"] / gpu.peak_ops_per_s["fp32"], c["bytes"] / gpu.memory_bandwidth_bytes_per_s)
            rows.append({"kind": "reducer-timing", "status": "ok", "reducer": name, "keep": keep, "visual_tokens": 576,
                         "hidden_size": 4096, "batch": 1, "dtype": "bfloat16", "gpu": "NVIDIA H100 80GB HBM3",
                         "eager_time_s": roof + c["launches"] * 30e-6, "graph_time_s": roof + c["launches"] * 2e-6,
                         "cuda_kernels": c["launches"]})
    out = tmp_path / "cal.json"
    reports, saved = validate(rows, reducer_for=ReducerResolver(), calibration_out=str(out))
    cal = cm.Calibration.load(out)
    assert cal.launch_s == pytest.approx(30e-6, rel=1e-6) and cal.graph_launch_s == pytest.approx(2e-6, rel=1e-6)
    assert len(reports[0].reducer_phase) == 16 + 0  # 8 rows x (eager, graph)
    p = cm.predict("llava-1.5-7b", "h100-sxm", keep=64, reducer=reducers.get("divprune"), calibration=cal)
    assert any("fitted by vtc validate" in a for a in p.assumptions)
