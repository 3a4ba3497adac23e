"""The report's measured sections: net gain, phases, accuracy, cost model vs measurement.
Every number carries its spread or interval and its n."""

from __future__ import annotations

from pathlib import Path

from . import figures as F
from .analysis import ReportError, break_even, net_gain, pareto_front, protocol
from .tables import markdown_table, write_csv


def _num(v, fmt):
    return "n/a" if v is None else fmt.format(v)


def _ci(v, ci, fmt="{:.1f}"):
    """'v [lo, hi]' or 'v' or 'n/a'."""
    if v is None:
        return "n/a"
    return f"{fmt.format(v)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else fmt.format(v)


def costmodel_section(rep, rows: list[dict], gpu_spec: str | None, calibration: str | None):
    prof = [r for r in rows if r.get("kind") == "profile" and r.get("status") == "ok"]
    # in-LLM rows need the reducer's own schedule object, which only vtc validate builds (a report
    # imports no reducer): they are left out here and said so
    in_llm = sorted({r["reducer"] for r in prof if r.get("hook") == "in-llm"})
    prof = [r for r in prof if r.get("hook") != "in-llm"]
    left = (f" Left out: the in-LLM reducers' rows ({', '.join(in_llm)}); `vtc validate` predicts them with their "
            "exact schedules.") if in_llm else ""
    if prof:
        from costmodel.validation import compare
        try:
            reports = compare(prof, gpu_spec, fit=False, gpu_flag="--gpu-spec", model_flag=None)  # a report fits nothing; it applies a given calibration
            cal = _calibration(calibration, reports)
            for c in (c for rp in reports for c in rp.comparisons):
                c.calibrated_prefill_s = None if cal is None else cal.time_s(c.compute_time_s, c.memory_time_s,
                                                                             c.layers, c.eager)
            pts = [{"predicted_ms": c.predicted_prefill_s * 1e3, "measured_ms": c.row["prefill_time_s"] * 1e3,
                    "calibrated_ms": None if c.calibrated_prefill_s is None else c.calibrated_prefill_s * 1e3,
                    "reducer": c.row["reducer"]} for rp in reports for c in rp.comparisons]
            note = _error_note(reports, cal)
            spec_note = f" Hardware spec: {Path(gpu_spec).name} (rough figures where it says so)." if gpu_spec else ""
            F.plot_measured_vs_predicted(pts, title=f"Measured vs. predicted prefill: {reports[0].spec} on {reports[0].gpu}",
                                         caption="Source: kind=profile rows against the cost model (vtc validate)."
                                                 + spec_note, path=rep.out / "fig2_measured_vs_predicted.png")
            rep.sections.append(("Cost model vs. measurement", note + spec_note + left, ["fig2_measured_vs_predicted.png"]))
        except ValueError as e:  # said in words; an empty figure would add nothing
            rep.sections.append(("Cost model vs. measurement", f"Not available: {e}.{left}", []))


def _calibration(calibration, reports):
    """A calibration given to the report (a file or a shipped GPU name); None when none was given."""
    if calibration is None:
        return None
    from costmodel import Calibration

    cal = Calibration.load(calibration)
    if reports and cal.gpu != reports[0].gpu:
        raise ReportError(f"--calibration is for GPU {cal.gpu!r}, the rows were measured on {reports[0].gpu!r}")
    return cal


def _error_note(reports, cal) -> str:
    import numpy as np

    comps = [c for rp in reports for c in rp.comparisons]
    meas = np.array([c.measured_s for c in comps])
    roof = np.median(np.abs(np.array([c.predicted_prefill_s for c in comps]) - meas) / meas)
    text = f"Prefill time error, median |relative|: roofline {roof:.1%}"
    if cal is not None:
        after = np.median(np.abs(np.array([c.calibrated_prefill_s for c in comps]) - meas) / meas)
        text += f", with the calibration ({cal.source}) {after:.1%}"
    return text + f" (n = {len(comps)})."


# ---------------------------------------------------------------------- net gain


NET_GAIN_HEADERS = ["model", "gpu", "batch", "reducer", "keep", "n images", "request time (ms), median [95% CI]",
                    "speedup (x) [95% CI]", "energy / request (J)", "energy saved (J, %)", "accuracy (%) [95% CI]",
                    "n samples", "accuracy change (pts) [95% CI]", "reducer overhead (ms)",
                    "overhead (% of saved time)", "net time saved (ms)"]


def _t(v) -> str:
    """A time or energy: one decimal from 10 up, three significant digits below (8.00, not 8)."""
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:#.3g}"


def _tci(v, ci) -> str:
    if v is None:
        return "n/a"
    return f"{_t(v)} [{_t(ci[0])}, {_t(ci[1])}]" if ci else _t(v)


def _net_gain_cells(g: dict, note) -> list:
    per_req = None if g["energy_j"] is None else g["energy_j"] / g["batch"]
    energy = _t(per_req) if per_req is not None else note(g["energy_note"][14:-1])
    saved = "n/a" if g["energy_saved_j"] is None else f"{_t(g['energy_saved_j'] / g['batch'])} ({g['energy_saved_pct']:.1f}%)"
    if g["energy_j"] is None and g["reducer"] != "none":
        saved = energy
    rt = _tci(g["request_time_ms"], g["request_time_ci_ms"]) if g["request_time_ms"] is not None \
        else note("no profile row for this condition")
    speed = _ci(g["speedup"], g["speedup_ci"], "{:.2f}")
    if g["within_noise"]:
        speed += " within noise"
    change = _ci(g["accuracy_change_pts"], g["accuracy_change_ci_pts"], "{:+.1f}")
    if g["accuracy_change_within_noise"]:
        change += " within noise"
    overhead = _t(g["reducer_overhead_ms"]) if g["reducer_overhead_ms"] is not None else \
        (note(g["reducer_overhead_note"][14:-1]) if g.get("reducer_overhead_note") else "n/a")
    return [g["model"], g["gpu"] or "n/a", g["batch"], g["reducer"], g["keep"], g["n_images"] or "n/a", rt, speed,
            energy, saved,
            _ci(g["accuracy_pct"], g["accuracy_ci_pct"]), g["accuracy_n"] or "n/a", change, overhead,
            "no time saved" if g.get("nothing_saved") else _pct(g["overhead_pct_of_saved"]),
            "n/a" if g["net_saved_ms"] is None else _t(g["net_saved_ms"])]


def _pct(v) -> str:
    """A share in percent: one decimal below 100, whole numbers above (248%, not 248.7)."""
    return "n/a" if v is None else (f"{v:.1f}" if abs(v) < 100 else f"{v:,.0f}")


HOISTED = ("model", "gpu", "batch")  # said once above the table when every row shares them


class _Unmeasured(str):
    """A cell that was not measured, with its reason (numbered as a note once the columns are known)."""


def net_gain_table(gains: list[dict]) -> str:
    """The net-gain table for people: columns every row shares are said once above it, columns
    with nothing measured are left out and named below it (with the reason, when one is known),
    notes numbered over the cells that stay."""
    table = [_net_gain_cells(g, _Unmeasured) for g in gains]
    headers = list(NET_GAIN_HEADERS)

    def blank(cell):
        return cell in ("n/a", None) or isinstance(cell, _Unmeasured)

    keep = [i for i in range(len(headers)) if not all(blank(r[i]) for r in table)]
    empty = []
    for i in (i for i in range(len(headers)) if i not in keep):
        reasons = sorted({str(r[i]) for r in table if isinstance(r[i], _Unmeasured)})
        empty.append(headers[i] + (f" ({'; '.join(reasons)})" if reasons else ""))
    shared = [i for i in keep if headers[i] in HOISTED and len({str(r[i]) for r in table}) == 1]
    keep = [i for i in keep if i not in shared]
    notes: list[str] = []

    def show(cell):
        if not isinstance(cell, _Unmeasured):
            return cell
        if str(cell) not in notes:
            notes.append(str(cell))
        return f"not measured [{notes.index(str(cell)) + 1}]"

    md = ""
    if table and shared:
        md += "All rows: " + ", ".join(f"{headers[i]} {table[0][i]}" for i in shared) + ".\n\n"
    md += markdown_table([headers[i] for i in keep], [[show(r[i]) for i in keep] for r in table])
    if notes:
        md += "\n\n" + "\n".join(f"[{i + 1}] {t}" for i, t in enumerate(notes))
    if empty:
        md += "\n\nNot in these rows (columns left out): " + "; ".join(empty) + "."
    return md


def _device_word(gains) -> str:
    """What ran the model: 'GPU', 'CPU', or 'device' when the rows mix them."""
    kinds = {"CPU" if str(g["gpu"]).lower() == "cpu" else "GPU" for g in gains if g["gpu"]}
    return kinds.pop() if len(kinds) == 1 else "device"


def net_gain_section(rep, conds: dict):
    gains = net_gain(conds)
    rep.files["net_gain.csv"] = write_csv(rep.out / "net_gain.csv", gains)
    be = break_even(gains)
    md = net_gain_table(gains)
    md += ("\n\nRequest time: preprocess + vision tower + projector + reducer + prefill (+ decode) of one call (a "
           "batch of `batch` requests), median over images of each condition's median over repetitions, with its "
           "bootstrap 95% interval. A speedup whose interval includes 1.0, and an accuracy change whose interval "
           "includes 0, are marked *within noise*: not a finding. Accuracy is compared on the samples every "
           "condition shares (n beside it), with a Wilson 95% interval; its change against all tokens is paired "
           "per sample. Energy is per request (the call's energy / batch). Net time saved: the "
           f"{_device_word(gains)} time the reduction saves downstream minus the reducer's own time. "
           + protocol(conds))
    if be:
        same: dict[str, list[str]] = {}
        for red, text in sorted(be.items()):  # reducers with the same finding on one line
            same.setdefault(text, []).append(red)
        md += "\n\nBreak-even (where the reducer's own cost eats the time it saves):\n\n" + "\n".join(
            f"- **{', '.join(reds)}**: {text}" for text, reds in sorted(same.items(), key=lambda kv: kv[1]))
    rep.headline = md
    rep.sections.append(("Net gain: time and energy per request against accuracy", md, []))


# ---------------------------------------------------------------------- phases


def phases_section(rep, conds: dict):
    measured = [c for c in conds.values() if c.phases_s is not None]
    smallest = min((c.batch for c in measured), default=1)
    measured = [c for c in measured if c.batch == smallest]  # one batch size per figure
    if not measured:
        return
    measured.sort(key=lambda c: (c.reducer != "none", c.reducer, c.keep))
    labels = [f"{c.reducer}@{c.keep}" for c in measured]
    phases = {p: [None if c.phases_s.get(p) is None else c.phases_s[p] * 1e3 for c in measured] for p in F.PHASE_COLORS}
    ci = [None if not c.request_time_ci_s else [x * 1e3 for x in c.request_time_ci_s] for c in measured]
    model, gpu = measured[0].model, measured[0].gpu
    device_word = "CPU" if gpu == "cpu" else "GPU"
    F.plot_phases(labels, phases, ci, title=f"Time per phase: {model} on {gpu}, batch {smallest}",
                  caption=f"Source: kind=profile rows measured on the {device_word}, median over {measured[0].n_images} "
                          "image(s) of each condition's median over repetitions; whiskers: 95% interval of the "
                          "request time. The reducer's own cost is the red segment (in-LLM methods: their scoring "
                          "inside the layer loop).", path=rep.out / "fig3_phases.png")
    shown = [p for p in F.PHASE_COLORS if any(v is not None for v in phases[p])]
    ph_rows = [[c.reducer, c.keep] + ["n/a" if phases[p][i] is None else _t(phases[p][i]) for p in shown]
               + [_tci(c.request_time_s * 1e3 if c.request_time_s else None, ci[i])]
               for i, c in enumerate(measured)]
    rep.files["phases.csv"] = write_csv(rep.out / "phases.csv", [
        {"reducer": c.reducer, "keep": c.keep, **{f"{p}_ms": phases[p][i] for p in F.PHASE_COLORS}}
        for i, c in enumerate(measured)])
    left_out = [p for p in F.PHASE_COLORS if p not in shown]
    note = f"\n\nNot measured in these rows: {', '.join(left_out)}." if left_out else ""
    rep.sections.append(("Time per phase (ms)", markdown_table(
        ["reducer", "keep"] + [f"{p} (ms)" for p in shown] + ["request (ms) [95% CI]"], ph_rows) + note,
        ["fig3_phases.png"]))


# ---------------------------------------------------------------------- accuracy


def _acc_points(acc, cost_key: str) -> list[dict]:
    scale = 1e3 if cost_key == "request_time_s" else 1.0
    out = []
    for c in acc:
        cost = getattr(c, cost_key)
        if cost is None or c.ablation:
            continue
        ci = c.request_time_ci_s if cost_key == "request_time_s" else None
        out.append({"cost": cost * scale, "cost_ci": None if not ci else [x * scale for x in ci],
                    "accuracy_pct": 100 * c.accuracy, "accuracy_ci": None if not c.accuracy_ci else
                    [100 * x for x in c.accuracy_ci], "label": f"{c.reducer}@{c.keep}", "reducer": c.reducer})
    return out


def _accuracy_figures(rep, conds, acc) -> list[str]:
    floors = {c.ablation: 100 * c.accuracy for c in acc if c.ablation}
    figs = []
    for cost_key, xlabel, name in (("request_time_s", "time per request (ms)", "fig4_accuracy_vs_time.png"),
                                   ("energy_j", "GPU energy per request (J)", "fig4_accuracy_vs_energy.png")):
        pts = _acc_points(acc, cost_key)
        if not pts:
            reason = next((c.energy_reason for c in conds.values() if c.energy_reason), "no rows") \
                if cost_key == "energy_j" else "no condition has both a profile and an accuracy"
            rep.notes.append(f"{name} is left out: not measured ({reason})")
            continue
        front = pareto_front([(p["cost"], p["accuracy_pct"]) for p in pts])
        F.plot_accuracy_vs_cost(pts, front, floors=floors, xlabel=xlabel,
                                title=f"Accuracy vs. {xlabel.split(' (')[0]} (measured; red: Pareto front)",
                                caption="Source: kind=eval rows (accuracy on the shared samples, Wilson 95% interval) "
                                        "joined with kind=profile rows of the same model, reducer and budget (95% "
                                        "interval of the time)." + (" Dashed: the image ablations, what the model "
                                                                    "gets without looking." if floors else ""),
                                path=rep.out / name)
        figs.append(name)
    return figs


def _by_kind_table(acc) -> str | None:
    kinds = sorted({k for c in acc for k in c.by_kind})
    if not kinds:
        return None
    rows = []
    for c in sorted(acc, key=lambda c: (c.ablation is not None, c.reducer != "none", c.reducer, -c.keep)):
        rows.append([c.reducer, c.keep] + [_ci(100 * c.by_kind[k][0], [100 * x for x in c.by_kind[k][1]])
                                           if k in c.by_kind else "n/a" for k in kinds])
    n = {k: max(c.by_kind[k][2] for c in acc if k in c.by_kind) for k in kinds}
    return ("Accuracy by question kind (%), [Wilson 95% interval]; n per kind: "
            + ", ".join(f"{k} {n[k]}" for k in kinds) + "\n\n"
            + markdown_table(["reducer", "keep"] + [f"{k} (%)" for k in kinds], rows))


def accuracy_section(rep, conds: dict):
    acc = [c for c in conds.values() if c.accuracy is not None]
    if not acc:
        return
    figs = _accuracy_figures(rep, conds, acc)
    rows_acc = sorted(acc, key=lambda c: (c.ablation is not None, c.reducer != "none", c.reducer, -c.keep))
    rep.files["accuracy.csv"] = write_csv(rep.out / "accuracy.csv", [
        {"model": c.model, "reducer": c.reducer, "keep": c.keep, "kept_tokens": c.kept_tokens, "accuracy": c.accuracy, "n": c.accuracy_n,
         "accuracy_ci_low": c.accuracy_ci and c.accuracy_ci[0], "accuracy_ci_high": c.accuracy_ci and c.accuracy_ci[1],
         "top1_agree": c.top1_agree, "kl_first_token": c.kl_first_token, "answer_agree": c.answer_agree,
         "note": c.accuracy_note} for c in rows_acc])
    md = markdown_table(
        ["model", "reducer", "keep", "tokens kept (mean)", "n samples", "accuracy (%) [95% CI]",
         "top-1 agreement (%, mean)", "same answer (%)", "KL first token (nats, mean)", "note"],
        [[c.model, c.reducer, c.keep, _num(c.kept_tokens, "{:.1f}"), c.accuracy_n, _ci(100 * c.accuracy, c.accuracy_ci and [100 * x for x in c.accuracy_ci]),
          _num(None if c.top1_agree is None else 100 * c.top1_agree, "{:.1f}"),
          _num(None if c.answer_agree is None else 100 * c.answer_agree, "{:.1f}"),
          _num(None if c.kl_first_token is None else abs(c.kl_first_token) if c.kl_first_token < 1e-12 else c.kl_first_token,
               "{:.4f}"), c.accuracy_note or ""] for c in rows_acc])
    kinds = _by_kind_table(acc)
    if kinds:
        md += "\n\n" + kinds
    rep.sections.append(("Accuracy and fidelity to the unreduced model", md, figs))
