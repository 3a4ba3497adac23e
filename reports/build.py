"""``vtc report``: rows (predictions, profiles, evaluations, published numbers) -> a report folder.

The folder holds ``summary.md`` (tables with units, n, median and spread), CSV tables, PNG
figures with their data source in each caption, and ``report.html``, one self-contained page
(figures embedded, no external link) that opens offline. A value that was not measured shows
as "not measured (reason)", never as 0. Input files are only read.
"""

from __future__ import annotations

import base64
import html
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rows import RowError, read_rows

from . import figures as F
from . import sections as S
from .analysis import ReportError, check_rows, conditions
from .tables import markdown_table, write_csv


@dataclass
class Report:
    out: Path
    files: dict = field(default_factory=dict)  # name -> path
    headline: str = ""
    sections: list = field(default_factory=list)  # (title, markdown, [figure names])
    notes: list = field(default_factory=list)     # what was left out, and why


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


_write_csv = write_csv


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
        S.net_gain_section(rep, conds)
        S.phases_section(rep, conds)
        S.accuracy_section(rep, conds)
    S.costmodel_section(rep, rows, gpu_spec, calibration)


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
        t2 = st["trend2_across_prompts"].get(kind)
        if t2 is None:
            md.append(f"Trend 2 ({kind}): not computed ({'; '.join(st.get('notes', [])) or 'one prompt'}).")
            continue
        md.append(f"Trend 2 ({kind}), across prompts: Spearman {t2['prompt_pairs']['spearman']:.3f}, Kendall "
                  f"{t2['prompt_pairs']['kendall']:.3f}; " + "; ".join(
                      f"top-{k} overlap {t2['prompt_pairs'][f'top{k}']:.3f} (pairwise chance {k / st['visual_tokens']:.3f}), "
                      f"shared by all prompts {t2[f'top{k}_shared_by_all_prompts']:.3f}" for k in ks))
    figs = []
    for i, png in enumerate(sorted(folder.glob("heatmap_*.png"))[:3]):
        name = f"fig5_saliency_{i}.png"
        shutil.copy(png, rep.out / name)
        F.CAPTIONS[name] = (f"Saliency maps over the image ({png.stem.replace('heatmap_', '')}): each panel one score "
                            "at one LLM layer, brighter = more important (colour bar per panel); from vtc saliency.")
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
            cap = F.CAPTIONS.get(fig, fig)
            parts.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _inline(text: str) -> str:
    """Escaped text with Markdown's **bold**, *emphasis* and `code`."""
    import re

    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", text)


def _td(cell: str) -> str:
    """A table cell: numbers (and n/a) right-aligned, words left-aligned."""
    import re

    numeric = cell in ("n/a", "") or re.match(r"^[-+]?[\d.]", cell) or cell.startswith("not measured")
    return f"<td>{_inline(cell)}</td>" if numeric else f"<td style='text-align:left'>{_inline(cell)}</td>"


def _md_to_html(md: str) -> str:
    """The report's Markdown subset: tables, '- ' lists, paragraphs, inline bold/emphasis/code."""
    out, table, items = [], [], []

    def flush():
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in body)
                       + "</table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                table.append(cells)
            continue
        if line.startswith("- "):
            if table:
                flush()
            items.append(line[2:])
            continue
        flush()
        if line.strip():
            out.append(f"<p>{_inline(line)}</p>")
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
    if rep.notes:
        intro += " Left out: " + "; ".join(rep.notes) + "."
    md = [f"# {title}", "", intro, ""]
    for sec_title, body, figs in rep.sections:
        md += [f"## {sec_title}", "", body, ""] + [f"![{f}]({f})" for f in figs] + [""]
    (out / "summary.md").write_text("\n".join(md))
    rep.sections.insert(0, ("Inputs", intro, []))
    (out / "report.html").write_text(_html(rep, title))
    rep.files.update({"summary.md": out / "summary.md", "report.html": out / "report.html"})
    return rep

