"""``vtc report``: rows (predictions, profiles, evaluations, published numbers) -> a report folder.

The folder holds ``summary.md`` (tables with units, n, median and spread), CSV tables, PNG
figures with their data source in each caption, and ``report.html``, one self-contained page
(figures embedded, no external link) that opens offline. A value that was not measured shows
as "not measured (reason)", never as 0. Input files are only read.
"""

from __future__ import annotations

import base64
import csv
import html
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rows import RowError, read_rows

from . import figures as F
from .analysis import ReportError, break_even, check_rows, conditions, net_gain, pareto_front
from .tables import markdown_table


@dataclass
class Report:
    out: Path
    files: dict = field(default_factory=dict)  # name -> path
    headline: str = ""
    sections: list = field(default_factory=list)  # (title, markdown, [figure names])


def _num(v, fmt):
    return "n/a" if v is None else fmt.format(v)


def read_all(paths) -> list[dict]:
    rows = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise ReportError(f"input {str(p)!r} does not exist")
        try:
            got = list(read_rows(p))
        except RowError as e:
            raise ReportError(str(e)) from None
        if not got:
            raise ReportError(f"input {str(p)!r} has no rows")
        rows += got
    return rows


def _write_csv(path: Path, rows: list[dict]) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in keys})
    return path


def _prediction_section(rep: Report, rows: list[dict]):
    preds = [r for r in rows if r.get("kind") == "prediction"]
    if not preds:
        return
    groups = defaultdict(list)
    for r in preds:
        groups[(r["model"], r["gpu"], r["batch"], r["mode"], r["stage"])].append(r)
    md, figs, table = [], [], []
    for i, ((model, gpu, batch, mode, stage), rs) in enumerate(sorted(groups.items())):
        rs = sorted(rs, key=lambda r: r["keep"])
        for r in rs:
            table.append({"model": model, "gpu": gpu, "batch": batch, "mode": mode, "stage": stage, "keep": r["keep"],
                          "retention": r["retention"], **{f"saved_{k}": r.get(f"saved_{k}") for k in
                                                         ("flops", "memory_access_bytes", "activation_memory_bytes",
                                                          "kv_cache_bytes", "time_s", "ttft_s", "energy_j")},
                          "time_ms": r["time_s"] * 1e3, "ttft_ms": r.get("ttft_s") and r["ttft_s"] * 1e3})
        name = f"fig1_predicted_savings_{i}.png"
        F.plot_predicted_savings(
            [r["retention"] for r in rs],
            {k: [r.get(f"saved_{k}") for r in rs] for k in F.SAVINGS_LABELS if rs[0].get(f"saved_{k}") is not None},
            title=f"Predicted savings vs. retention: {model} on {gpu} ({stage}, batch {batch})",
            caption=f"Source: kind=prediction rows (vtc predict, {mode} roofline model). Predictions, not measurements.",
            path=rep.out / name)
        figs.append(name)
        md.append(f"**{model} on {gpu}**, {stage}, batch {batch}, {mode} mode:\n\n" + markdown_table(
            ["keep", "kept (%)", "FLOPs saved (%)", "memory access saved (%)", "activation memory saved (%)",
             "KV cache saved (%)", "LLM time (ms)", "LLM time saved (%)", "TTFT saved (%)", "energy saved (%)"],
            [[r["keep"], _num(100 * r["retention"], "{:.1f}"), _num(100 * r["saved_flops"], "{:.1f}"),
              _num(100 * r["saved_memory_access_bytes"], "{:.1f}"),
              _num(100 * r["saved_activation_memory_bytes"], "{:.1f}"), _num(100 * r["saved_kv_cache_bytes"], "{:.1f}"),
              _num(r["time_s"] * 1e3, "{:.3f}"), _num(100 * r["saved_time_s"], "{:.1f}"),
              _num(None if r.get("saved_ttft_s") is None else 100 * r["saved_ttft_s"], "{:.1f}"),
              _num(None if r.get("saved_energy_j") is None else 100 * r["saved_energy_j"], "{:.1f}")] for r in rs]))
    rep.files["predictions.csv"] = _write_csv(rep.out / "predictions.csv", table)
    rep.sections.append(("Predicted savings (roofline model)", "\n\n".join(md), figs))


def _measured_sections(rep: Report, rows: list[dict], gpu_spec: str | None, calibration: str | None = None):
    conds = conditions(rows)
    if conds:
        _net_gain_section(rep, conds)
        _phases_section(rep, conds)
        _accuracy_section(rep, conds)
    _costmodel_section(rep, rows, gpu_spec, calibration)


def _net_gain_table(gains: list[dict]) -> str:
    headers = ["model", "gpu", "batch", "reducer", "keep", "n images", "request time (ms), median [IQR]", "speedup (x)",
               "energy / request (J)", "energy saved (J, %)", "accuracy (%)", "accuracy change (pts)",
               "reducer overhead (ms)", "overhead (% of saved time)", "net time saved (ms)"]
    table, notes = [], []

    def note(text):
        if text not in notes:
            notes.append(text)
        return f"not measured [{notes.index(text) + 1}]"

    for g in gains:
        per_req = None if g["energy_j"] is None else g["energy_j"] / g["batch"]
        energy = _num(per_req, "{:.4g}") if g["energy_j"] is not None else note(g["energy_note"][14:-1])
        saved = "n/a" if g["energy_saved_j"] is None else \
            f"{g['energy_saved_j'] / g['batch']:.4g} ({g['energy_saved_pct']:.1f}%)"
        if g["energy_j"] is None and g["reducer"] != "none":
            saved = energy
        rt = "n/a" if g["request_time_ms"] is None else (
            f"{g['request_time_ms']:.3f} [{g['request_time_iqr_ms']:.3f}]" if g["request_time_iqr_ms"] is not None
            else f"{g['request_time_ms']:.3f}")
        if g["request_time_ms"] is None:
            rt = note("no profile row for this condition")
        table.append([g["model"], g["gpu"], g["batch"], g["reducer"], g["keep"], g["n_images"], rt, _num(g["speedup"], "{:.2f}"),
                      energy, saved, _num(g["accuracy_pct"], "{:.1f}"), _num(g["accuracy_change_pts"], "{:+.1f}"),
                      _num(g["reducer_overhead_ms"], "{:.3f}"), _num(g["overhead_pct_of_saved"], "{:.1f}"),
                      _num(g["net_saved_ms"], "{:.3f}")])
    md = markdown_table(headers, table)
    if notes:
        md += "\n\n" + "\n".join(f"[{i + 1}] {t}" for i, t in enumerate(notes))
    return md


def _net_gain_section(rep: Report, conds: dict):
    gains = net_gain(conds)
    rep.files["net_gain.csv"] = _write_csv(rep.out / "net_gain.csv", gains)
    be = break_even(gains)
    md = _net_gain_table(gains)
    md += ("\n\nRequest time: preprocess + vision tower + projector + reducer + prefill (+ decode) of one call "
           "(a batch of `batch` requests), median over images of each condition's median over repetitions, "
           "[IQR over images]. Energy is per request (the call's energy / batch). Net time saved: the GPU time "
           "the reduction saves downstream minus the reducer's own time.")
    if be:
        md += "\n\nBreak-even (where the reducer's own cost eats the time it saves):\n\n" + "\n".join(
            f"- **{red}**: {text}" for red, text in sorted(be.items()))
    rep.headline = md
    rep.sections.append(("Net gain: time and energy per request against accuracy", md, []))


def _phases_section(rep: Report, conds: dict):
    measured = [c for c in conds.values() if c.phases_s is not None]
    smallest = min((c.batch for c in measured), default=1)
    measured = [c for c in measured if c.batch == smallest]  # one batch size per figure
    if measured:
        measured.sort(key=lambda c: (c.reducer != "none", c.reducer, c.keep))
        labels = [f"{c.reducer}@{c.keep}" for c in measured]
        phases = {p: [None if c.phases_s.get(p) is None else c.phases_s[p] * 1e3 for c in measured] for p in F.PHASE_COLORS}
        model, gpu = measured[0].model, measured[0].gpu
        F.plot_phases(labels, phases, title=f"Time per phase: {model} on {gpu}, batch {smallest}",
                      caption=f"Source: kind=profile rows, median over {measured[0].n_images} image(s) of each "
                              "condition's median over repetitions; the reducer's own cost is the red segment.",
                      path=rep.out / "fig3_phases.png")
        ph_rows = [[c.reducer, c.keep] + [_num(v, "{:.3f}") for v in (phases[p][i] for p in F.PHASE_COLORS)]
                   for i, c in enumerate(measured)]
        rep.files["phases.csv"] = _write_csv(rep.out / "phases.csv", [
            {"reducer": c.reducer, "keep": c.keep, **{f"{p}_ms": phases[p][i] for p in F.PHASE_COLORS}}
            for i, c in enumerate(measured)])
        rep.sections.append(("Time per phase (ms)", markdown_table(
            ["reducer", "keep"] + [f"{p} (ms)" for p in F.PHASE_COLORS], ph_rows), ["fig3_phases.png"]))


def _accuracy_section(rep: Report, conds: dict):
    acc = [c for c in conds.values() if c.accuracy is not None]
    figs = []
    for cost_key, xlabel, name in (("request_time_s", "time per request (ms)", "fig4_accuracy_vs_time.png"),
                                   ("energy_j", "GPU energy per request (J)", "fig4_accuracy_vs_energy.png")):
        pts = [{"cost": getattr(c, cost_key) * (1e3 if cost_key == "request_time_s" else 1),
                "accuracy_pct": 100 * c.accuracy, "label": f"{c.reducer}@{c.keep}"}
               for c in acc if getattr(c, cost_key) is not None]
        missing = None
        if not pts:
            reason = next((c.energy_reason for c in conds.values() if c.energy_reason), "no rows") \
                if cost_key == "energy_j" else "no condition has both a profile and an accuracy"
            missing = f"not measured ({reason})"
        front = pareto_front([(p["cost"], p["accuracy_pct"]) for p in pts])
        F.plot_accuracy_vs_cost(pts, front, xlabel=xlabel, missing=missing,
                                title=f"Accuracy vs. {xlabel.split(' (')[0]} (measured; red: Pareto front)",
                                caption="Source: kind=eval summaries joined with kind=profile rows of the same model, "
                                        "reducer and budget. Measured on this machine.", path=rep.out / name)
        figs.append(name)
    if acc:
        rows_acc = sorted(acc, key=lambda c: (c.reducer != "none", c.reducer, c.keep))
        rep.files["accuracy.csv"] = _write_csv(rep.out / "accuracy.csv", [
            {"model": c.model, "reducer": c.reducer, "keep": c.keep, "accuracy": c.accuracy, "n": c.accuracy_n,
             "top1_agree": c.top1_agree, "kl_first_token": c.kl_first_token} for c in rows_acc])
        rep.sections.append(("Accuracy and fidelity to the unreduced model", markdown_table(
            ["model", "reducer", "keep", "n samples", "accuracy (%)", "top-1 agreement (%)", "KL first token (nats)"],
            [[c.model, c.reducer, c.keep, c.accuracy_n, _num(100 * c.accuracy, "{:.1f}"),
              _num(None if c.top1_agree is None else 100 * c.top1_agree, "{:.1f}"),
              _num(c.kl_first_token, "{:.4f}")] for c in rows_acc]), figs))


def _costmodel_section(rep: Report, rows: list[dict], gpu_spec: str | None, calibration: str | None):
    prof = [r for r in rows if r.get("kind") == "profile" and r.get("status") == "ok"]
    if prof:
        from costmodel.validation import compare
        try:
            reports = compare(prof, gpu_spec, fit=False, gpu_flag="--gpu-spec")  # a report fits nothing; it applies a given calibration
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
            rep.sections.append(("Cost model vs. measurement", note + spec_note, ["fig2_measured_vs_predicted.png"]))
        except ValueError as e:
            F.plot_measured_vs_predicted([], title="Measured vs. predicted prefill",
                                         caption=f"not available: {e}", path=rep.out / "fig2_measured_vs_predicted.png")
            rep.sections.append(("Cost model vs. measurement", f"Not available: {e}", ["fig2_measured_vs_predicted.png"]))


def _published_section(rep: Report, rows: list[dict]):
    pub = [r for r in rows if r.get("kind") == "published"]
    if not pub:
        return
    rep.files["published.csv"] = _write_csv(rep.out / "published.csv", pub)
    by = defaultdict(dict)
    benches = []
    for r in pub:
        key = (r["model"], r["reducer"], r["keep"], r.get("source", "").split(", ")[-1])
        v = r["mme_total"] if r["benchmark"] == "mme" else (None if r["accuracy"] is None else 100 * r["accuracy"])
        by[key][r["benchmark"]] = v
        if r["benchmark"] not in benches:
            benches.append(r["benchmark"])
    table = [[m, red, "n/a" if k is None else k, src] + [_num(vals.get(b), "{:.2f}") for b in benches]
             for (m, red, k, src), vals in sorted(by.items(), key=lambda x: (x[0][0], x[0][3], str(x[0][1]), x[0][2] or 0))]
    series = defaultdict(list)
    for (m, red, k, src), vals in by.items():
        if m == "llava-1.5-7b" and k is not None:
            accs = [v for b, v in vals.items() if b != "mme" and v is not None]
            if accs and src == "Table 3":
                series[red].append((k, sum(accs) / len(accs)))
    figs = []
    if series:
        F.plot_published(series, title="Published accuracy, LLaVA-1.5-7B (not measured here)",
                         caption="Source: kind=published rows, the paper's Table 3 (mean of SQA-IMG, TextVQA, POPE, "
                                 "MMBench, MMVet, GQA). Drawn hollow and dashed: published numbers.",
                         path=rep.out / "fig4_published_accuracy.png")
        figs.append("fig4_published_accuracy.png")
    rep.sections.append(("Published numbers (labelled, not measured here)", markdown_table(
        ["model", "reducer", "keep", "source"] + [f"{b} ({'score' if b == 'mme' else '%'})" for b in benches], table),
        figs))


def _saliency_section(rep: Report, folder: str | Path):
    import json as _json

    folder = Path(folder)
    path = folder / "trends.json"
    if not path.is_file():
        raise ReportError(f"saliency folder {str(folder)!r} has no trends.json (write it with vtc saliency)")
    st = _json.loads(path.read_text())
    ks = st["ks"]
    md = [f"{st['images']} images x {st['prompts']} prompts, layers {st['layers']}, {st['visual_tokens']} visual "
          f"tokens; statistics are means over pairs (definitions in trends.json)."]
    for kind, t in st["trend1_across_layers"].items():
        rows = [[pair] + [f"{v[x]:.3f}" for x in ["spearman", "kendall"] + [f"top{k}" for k in ks]]
                for pair, v in t["layer_pairs"].items()]
        rows += [[f"vs {ref} ranking"] + [f"{t[f'vs_{ref}'][x]:.3f}" for x in ["spearman", "kendall"] +
                                          [f"top{k}" for k in ks]] for ref in ("spatial", "random")]
        md.append(f"Trend 1 ({kind}), rankings across layers:\n\n" + markdown_table(
            ["layer pair", "Spearman", "Kendall"] + [f"top-{k} overlap" for k in ks], rows))
        t2 = st["trend2_across_prompts"][kind]
        md.append(f"Trend 2 ({kind}), across prompts: Spearman {t2['prompt_pairs']['spearman']:.3f}, Kendall "
                  f"{t2['prompt_pairs']['kendall']:.3f}; " + "; ".join(
                      f"top-{k} overlap {t2['prompt_pairs'][f'top{k}']:.3f} (pairwise chance {k / st['visual_tokens']:.3f}), "
                      f"shared by all prompts {t2[f'top{k}_shared_by_all_prompts']:.3f}" for k in ks))
    figs = []
    for i, png in enumerate(sorted(folder.glob("heatmap_*.png"))[:3]):
        name = f"fig5_saliency_{i}.png"
        shutil.copy(png, rep.out / name)
        figs.append(name)
    rep.sections.append((f"Saliency characterization ({folder.name})", "\n\n".join(md), figs))


def _html(rep: Report, title: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for sec_title, md, figs in rep.sections:
        parts.append(f"<h2>{html.escape(sec_title)}</h2>")
        parts.append(_md_to_html(md))
        for fig in figs:
            data = base64.b64encode((rep.out / fig).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(fig)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(fig)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_to_html(md: str) -> str:
    out, table = [], []

    def flush():
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                table.append(cells)
            continue
        flush()
        if line.strip():
            text = html.escape(line.lstrip("- "))
            text = text.replace("**", "")
            out.append(f"<p>{text}</p>")
    flush()
    return "\n".join(out)


def build_report(paths, out: str | Path, *, force: bool = False, group_by: str | None = None,
                 gpu_spec: str | None = None, title: str = "Visual-token compression report",
                 saliency: list | None = None, calibration: str | None = None) -> Report:
    out = Path(out)
    rows = read_all(paths)
    check_rows(rows, group_by)
    if out.exists():
        if not force:
            raise ReportError(f"output folder {str(out)!r} exists; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rep = Report(out=out)
    _measured_sections(rep, rows, gpu_spec, calibration)
    _prediction_section(rep, rows)
    _published_section(rep, rows)
    for folder in saliency or []:
        _saliency_section(rep, folder)
    counts = defaultdict(int)
    for r in rows:
        counts[r.get("kind")] += 1
    intro = (f"Inputs: {', '.join(str(p) for p in paths)}; rows: "
             + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".")
    md = [f"# {title}", "", intro, ""]
    for sec_title, body, figs in rep.sections:
        md += [f"## {sec_title}", "", body, ""] + [f"![{f}]({f})" for f in figs] + [""]
    (out / "summary.md").write_text("\n".join(md))
    rep.sections.insert(0, ("Inputs", intro, []))
    (out / "report.html").write_text(_html(rep, title))
    rep.files.update({"summary.md": out / "summary.md", "report.html": out / "report.html"})
    return rep


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
