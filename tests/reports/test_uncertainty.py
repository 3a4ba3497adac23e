"""Reports never mix sample sets, and say where a difference is within noise (issue 14)."""

import json

import pytest

from reports.analysis import break_even, conditions, net_gain
from reports.build import build_report


def sample(reducer, keep, sid, score, kind=None):
    r = {"kind": "eval", "status": "ok", "summary": False, "model": "m", "benchmark": "jsonl", "reducer": reducer,
         "keep": keep, "sample_id": str(sid), "score": score, "options": {"max_new_tokens": 8}, "prediction": "x"}
    if kind:
        r["question_kind"] = kind
    return r


def prof(reducer, keep, t, ci, energy=None):
    return {"kind": "profile", "status": "ok", "model": "m", "gpu": "cpu", "reducer": reducer, "keep": keep,
            "image": "a", "batch": 1, "request_time_s": t, "gpu_time_s": t, "prefill_time_s": t / 2,
            "reducer_time_s": 0.0 if reducer == "none" else 0.0001, "options": {"reps": 30, "warmup": 10},
            "stats": {"request": {"ci95": list(ci)}, "gpu": {"ci95": list(ci)}}, "energy_j": energy,
            "energy_unavailable_reason": "not measured on the CPU"}


def test_a_rerun_with_another_limit_is_compared_on_the_shared_samples_only():
    # the baseline was run with --limit 5, the reducer with --limit 200: compare on the 5 shared samples
    rows = [sample("none", 64, i, 1.0) for i in range(5)]
    rows += [sample("random", 16, i, 1.0 if i < 4 else 0.0) for i in range(200)]
    c = {k[2]: v for k, v in conditions(rows).items()}
    assert c["none"].accuracy_n == 5 and c["random"].accuracy_n == 5
    assert c["random"].accuracy == pytest.approx(0.8)  # not 4/200
    assert "compared on the 5 samples every condition has (this one has 200)" in c["random"].accuracy_note
    lo, hi = c["random"].accuracy_ci
    assert lo < 0.8 < hi and hi - lo > 0.3  # n = 5: a wide interval


def test_differences_inside_their_intervals_are_marked_within_noise():
    rows = [prof("none", 64, 0.020, (0.018, 0.023)), prof("random", 16, 0.019, (0.017, 0.022)),
            prof("spatial", 16, 0.010, (0.0095, 0.0105))]
    rows += [sample("none", 64, i, 1.0 if i % 10 else 0.0) for i in range(100)]
    rows += [sample("random", 16, i, 1.0 if i % 9 else 0.0) for i in range(100)]  # 1 point apart: noise
    rows += [sample("spatial", 16, i, 1.0 if i % 2 else 0.0) for i in range(100)]  # 40 points apart: a finding
    gains = {g["reducer"]: g for g in net_gain(conditions(rows))}
    assert gains["random"]["within_noise"] is True and gains["spatial"]["within_noise"] is False
    assert gains["random"]["accuracy_change_within_noise"] is True
    assert gains["spatial"]["accuracy_change_within_noise"] is False
    assert gains["spatial"]["speedup_ci"][0] > 1.0
    assert "within noise" in break_even(list(gains.values()))["random"]


def test_the_report_states_the_protocol_and_intervals(tmp_path):
    rows = [prof("none", 64, 0.020, (0.018, 0.023)), prof("random", 16, 0.019, (0.017, 0.022))]
    rows += [sample("none", 64, i, 1.0, kind="count" if i % 2 else "color") for i in range(20)]
    rows += [sample("random", 16, i, float(i % 3 > 0), kind="count" if i % 2 else "color") for i in range(20)]
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report([f], tmp_path / "rep")
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "Protocol: 1 image(s) x 30 timed repetitions after 10 warm-up runs" in md
    assert "19.0 [17.0, 22.0]" in md and "within noise" in md
    assert "Accuracy by question kind" in md and "count (%)" in md


def test_net_gain_table_reads_well(tmp_path):
    """Shared columns said once, unmeasured columns left out and named, an in-LLM reducer's
    missing overhead with its reason, and 'within noise' only at the budgets where it holds."""
    from reports.sections import net_gain_table
    fastv = prof("fastv", 16, 0.015, (0.014, 0.016))
    fastv.update(reducer_time_s=None, reducer_time_s_unavailable_reason="in-LLM method: its cost is inside prefill_time_s")
    rows = [prof("none", 64, 0.020, (0.019, 0.021)), fastv, prof("random", 16, 0.019, (0.017, 0.022)),
            prof("random", 32, 0.010, (0.0095, 0.0105))]
    gains = net_gain(conditions(rows))
    md = net_gain_table(gains)
    assert md.startswith("All rows: model m, gpu cpu, batch 1.")
    header = md.splitlines()[2]
    assert "| model |" not in header and "accuracy" not in header
    left_out = md.split("Not in these rows (columns left out): ")[1]
    assert "accuracy (%) [95% CI]; n samples; accuracy change" in left_out
    assert "energy / request (J) (not measured on the CPU)" in left_out and "energy" not in header
    # the overhead column has measured values: FastV's cell says why it has none, as note [1]
    assert "not measured [1]" in md and "[1] in-LLM method: its cost is inside prefill_time_s" in md
    text = break_even(gains)["random"]
    assert not text.startswith("within noise") and "interval includes 1.0 at keep = 16" in text


def test_fidelity_is_the_mean_over_samples_not_the_median():
    # 7 of 10 first tokens agree: a median of the 0/1 values would read 100%
    rows = [sample("none", 64, i, 1.0) for i in range(10)]
    for i in range(10):
        r = sample("random", 16, i, 1.0)
        r.update(top1_agree=float(i < 7), answer_agree=float(i < 6), kl_first_token=0.3 if i >= 7 else 0.0)
        rows.append(r)
    c = next(c for c in conditions(rows).values() if c.reducer == "random")
    assert c.top1_agree == pytest.approx(0.7) and c.answer_agree == pytest.approx(0.6)
    assert c.kl_first_token == pytest.approx(0.09)
