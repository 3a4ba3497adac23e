import csv
import json

import pytest

from reports.analysis import ReportError, conditions, net_gain, pareto_front
from reports.build import build_report


def prof(reducer, keep, request, prefill, reducer_s, image="a", energy=None, model="m", gpu="cpu"):
    r = {"kind": "profile", "status": "ok", "model": model, "spec": "llava-tiny", "gpu": gpu, "reducer": reducer,
         "keep": keep, "image": image, "request_time_s": request, "gpu_time_s": request - 0.001,
         "prefill_time_s": prefill, "reducer_time_s": reducer_s, "vision_time_s": 0.002, "projector_time_s": 0.0005,
         "preprocess_time_s": 0.001, "energy_j": energy, "text_tokens": 32, "dtype": "float32",
         "attn_implementation": "sdpa", "kept_tokens": keep}
    if energy is None:
        r["energy_unavailable_reason"] = "not measured on the CPU: NVML reads NVIDIA GPUs only"
    return r


def ev(reducer, keep, acc, model="m"):
    return {"kind": "eval", "summary": True, "status": "ok", "model": model, "benchmark": "toy", "reducer": reducer,
            "keep": keep, "accuracy": acc, "n": 10, "top1_agree": 0.9, "kl_first_token": 0.01}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [prof("none", 64, 0.020, 0.012, 0.0), prof("random", 16, 0.014, 0.007, 0.0005),
        prof("random", 8, 0.013, 0.006, 0.0005), prof("cluster-aggregate", 16, 0.019, 0.007, 0.006),
        ev("none", 64, 0.90), ev("random", 16, 0.80), ev("random", 8, 0.70), ev("cluster-aggregate", 16, 0.85)]


def test_pareto_front_on_a_planted_example():
    pts = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (2.5, 0.9), (4.0, 0.9), (1.0, 0.4)]
    assert pareto_front(pts) == [0, 1, 3]  # (3, .6) is beaten by (2.5, .9); (4, .9) by (2.5, .9); (1, .4) by (1, .5)


def test_net_gain_numbers_equal_the_input_rows(tmp_path):
    gains = {(g["reducer"], g["keep"]): g for g in net_gain(conditions(ROWS))}
    g = gains[("random", 16)]
    assert g["speedup"] == pytest.approx(0.020 / 0.014)
    assert g["accuracy_change_pts"] == pytest.approx(-10.0)
    saved = (0.019 - 0.0) - (0.013 - 0.0005)
    assert g["net_saved_ms"] == pytest.approx((saved - 0.0005) * 1e3)
    assert g["overhead_pct_of_saved"] == pytest.approx(100 * 0.0005 / saved)
    assert g["energy_saved_j"] is None and g["energy_note"].startswith("not measured (not measured on the CPU")

    rep = build_report([write(tmp_path / "r.jsonl", ROWS)], tmp_path / "rep")
    with open(rep.files["net_gain.csv"]) as f:
        table = {(r["reducer"], r["keep"]): r for r in csv.DictReader(f)}
    assert float(table[("random", "16")]["request_time_ms"]) == pytest.approx(14.0)
    assert float(table[("cluster-aggregate", "16")]["accuracy_pct"]) == pytest.approx(85.0)
    md = (tmp_path / "rep" / "summary.md").read_text()
    # never a 0 for energy: a column nothing in it measured is left out, with its reason
    assert "energy / request (J) (not measured on the CPU: NVML reads NVIDIA GPUs only)" in md
    assert "| energy / request (J) |" not in md


def test_every_figure_is_in_the_offline_html_page(tmp_path):
    pred = {"kind": "prediction", "status": "ok", "model": "llava-1.5-7b", "gpu": "h100-sxm", "batch": 1,
            "mode": "corrected", "stage": "prefill", "keep": 64, "retention": 64 / 576, "time_s": 0.004,
            **{f"saved_{k}": 0.5 for k in ("flops", "memory_access_bytes", "activation_memory_bytes",
                                              "kv_cache_bytes", "time_s", "ttft_s", "energy_j")}, "ttft_s": 0.005}
    pub = {"kind": "published", "status": "ok", "model": "llava-1.5-7b", "reducer": "random", "keep": 128,
           "benchmark": "pope", "accuracy": 0.8092, "mme_total": None, "source": "paper, Table 3", "summary": True}
    build_report([write(tmp_path / "r.jsonl", ROWS + [pred, pub])], tmp_path / "rep",
                       gpu_spec="costmodel/data/cpu-generic.toml")
    page = (tmp_path / "rep" / "report.html").read_text()
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert len(pngs) >= 5
    assert "fig4_accuracy_vs_energy.png is left out: not measured" in (tmp_path / "rep" / "summary.md").read_text()
    from reports.figures import CAPTIONS
    for name in pngs:  # each figure embedded, captioned with its title and source, not its file name
        assert CAPTIONS[name] in page.replace("&#x27;", "'") and f"<figcaption>{name}</figcaption>" not in page
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_bad_inputs(tmp_path):
    src = write(tmp_path / "r.jsonl", ROWS)
    before = src.read_text()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ReportError, match="has no rows"):
        build_report([empty], tmp_path / "o1")
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps({"hello": 1}) + "\n" + json.dumps({"hello": 2}) + "\n")
    with pytest.raises(ReportError, match="not a row of this suite"):
        build_report([foreign], tmp_path / "o2")
    mixed = write(tmp_path / "mixed.jsonl", ROWS + [prof("none", 64, 0.02, 0.01, 0.0, model="other")])
    with pytest.raises(ReportError, match="different models are mixed .*--group-by model"):
        build_report([mixed], tmp_path / "o3")
    build_report([src], tmp_path / "o4")
    with pytest.raises(ReportError, match="exists; pass --force"):
        build_report([src], tmp_path / "o4")
    build_report([src], tmp_path / "o4", force=True)
    assert src.read_text() == before  # inputs never modified


def test_in_llm_rows_are_left_out_of_the_cost_model_comparison_and_said(tmp_path):
    fastv = prof("fastv", 16, 0.012, 0.006, 0.0004)
    fastv["hook"] = "in-llm"
    build_report([write(tmp_path / "r.jsonl", ROWS + [fastv])], tmp_path / "rep",
                 gpu_spec="costmodel/data/cpu-generic.toml")
    md = (tmp_path / "rep" / "summary.md").read_text()
    section = md.split("## Cost model vs. measurement")[1].split("##")[0]
    assert "Prefill time error" in section and "Left out: the in-LLM reducers' rows (fastv)" in section
    assert "reducer_for" not in md
