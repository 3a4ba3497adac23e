"""The README's "Measured on <card>" tables, from a committed results folder.

    python scripts/gpu_tables.py results/h100-sxm

Reads profile.jsonl (vtc profile rows), graphs.jsonl (eager vs CUDA-graph prefill),
reducers.jsonl (reducer timings), calibration.json, and autograd-on/profile-run{1,2}.jsonl (two
earlier runs of the same conditions on two machines, for the run-to-run spread); prints
Markdown. Every number is computed from those rows; nothing is typed in.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import costmodel as cm  # noqa: E402

KEEPS = (64, 128, 192)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def table(headers, body) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in r) + " |" for r in body])


def ms(x, digits=1):
    return "n/a" if x is None else f"{x * 1e3:.{digits}f}"


def ci_ms(stats: dict) -> str:
    lo, hi = stats["ci95"]
    return f"{stats['median'] * 1e3:.1f} [{lo * 1e3:.1f}, {hi * 1e3:.1f}]"


def predicted_saving(keep: int, batch: int, cal=None, graphs=False) -> float:
    p = cm.predict("llava-1.5-7b", "h100-sxm", keep=keep, batch=batch, calibration=cal,
                   options=cm.Options(flash_attention=True, cuda_graphs=graphs))
    return p.baseline.time_s / p.reduced.time_s


def regimes(folder: Path, cal) -> str:
    """The same LLM prefill three ways: eager batch 1, CUDA graph batch 1, batch 16."""
    g = [r for r in rows(folder / "graphs.jsonl") if r["part"] == "llm-prefill" and r["status"] == "ok"]
    by = {(r["batch"], r["keep"]): r for r in g}
    body = []
    for batch in sorted({r["batch"] for r in g}):
        for label, key, graphs in (("eager (transformers)", "eager_time_s", False), ("CUDA graph", "graph_time_s", True)):
            t = {k: by.get((batch, k), {}).get(key) for k in (576, *KEEPS)}
            if t[576] is None:
                continue
            sp = t[576] / t[64] if t[64] else None
            st = {k: by.get((batch, k), {}).get(key.replace("time_s", "stats")) for k in (576, 64)}
            rng = (f" [{st[576]['ci95'][0] / st[64]['ci95'][1]:.2f}, {st[576]['ci95'][1] / st[64]['ci95'][0]:.2f}]"
                   if st[576] and st[64] else "")
            body.append([label, batch] + [ms(t[k]) for k in (576, *KEEPS)] + [
                f"{sp:.2f}x{rng}" if sp else "n/a", f"{predicted_saving(64, batch):.2f}x",
                f"{predicted_saving(64, batch, cal, graphs):.2f}x"])
    return table(["execution", "batch", "all 576 (ms)", "keep 64 (ms)", "keep 128 (ms)", "keep 192 (ms)",
                  "speedup at 64, measured [95% CI]", "roofline", "calibrated"], body)


def per_reducer(folder: Path) -> str:
    prof = [r for r in rows(folder / "profile.jsonl") if r["status"] == "ok" and r.get("batch", 1) == 1]
    base = next(r for r in prof if r["reducer"] == "none")
    by = defaultdict(dict)
    for r in prof:
        if r["reducer"] != "none":
            by[r["reducer"]][r["keep"]] = r
    body = [["none (all 576)", "", ci_ms(base["stats"]["prefill"]), "", "", ms(base["gpu_time_s"]), "1.00x",
             f"{base['energy_j']:.1f}"]]
    for red in sorted(by):
        for k in KEEPS:
            r = by[red].get(k)
            if r is None:
                continue
            rt = r.get("reducer_time_s")
            body.append([red if k == KEEPS[0] else "", k, ci_ms(r["stats"]["prefill"]),
                         ms(rt) if rt is not None else "inside prefill", "", ms(r["gpu_time_s"]),
                         f"{base['gpu_time_s'] / r['gpu_time_s']:.2f}x",
                         "n/a" if r.get("energy_j") is None else f"{r['energy_j']:.1f}"])
    for b in body:
        del b[4]
    return table(["reducer", "keep", "prefill (ms), median [95% CI]", "reducer (ms)", "vision to prefill (ms)",
                  "speedup", "energy / request (J)"], body)


def overhead(folder: Path) -> str:
    """Reducer time (eager and replayed) as a share of the prefill time it saves."""
    g = {(r["batch"], r["keep"]): r for r in rows(folder / "graphs.jsonl") if r["part"] == "llm-prefill"}
    saved = {k: (g[(1, 576)]["graph_time_s"] - g[(1, k)]["graph_time_s"]) for k in KEEPS if g.get((1, k))}
    saved16 = {k: (g[(16, 576)]["graph_time_s"] - g[(16, k)]["graph_time_s"]) for k in KEEPS if g.get((16, k))}
    red = rows(folder / "reducers.jsonl")
    body = []
    for name in dict.fromkeys(r["reducer"] for r in red):
        for k in KEEPS:
            r = next((x for x in red if x["reducer"] == name and x["keep"] == k and x["status"] == "ok"), None)
            if r is None:
                continue
            e, gr = r["eager_time_s"], r.get("graph_time_s")
            body.append([name if k == KEEPS[0] else "", k, r["dispatched_ops"], r["host_syncs"], r.get("cuda_kernels"),
                         ms(e, 2), ms(gr, 2) if gr else "not capturable", f"{100 * e / saved[k]:.0f}%",
                         f"{100 * gr / saved[k]:.1f}%" if gr else "", f"{100 * e / saved16[k]:.1f}%"])
    head = ["reducer", "keep", "ops", "host syncs", "CUDA kernels", "eager (ms)", "CUDA graph (ms)",
            "eager / saved, batch 1", "graph / saved, batch 1", "eager / saved, batch 16"]
    note = (f"Saved prefill time (CUDA-graph prefill, all 576 minus keep): batch 1 "
            f"{', '.join(f'{k}: {v * 1e3:.1f} ms' for k, v in saved.items())}; batch 16 "
            f"{', '.join(f'{k}: {v * 1e3:.1f} ms' for k, v in saved16.items())} (the reducer then runs on 16 "
            "images; its batch-1 time is the lower bound used here).")
    return table(head, body) + "\n\n" + note


def energy(folder: Path) -> str:
    prof = [r for r in rows(folder / "profile.jsonl") if r["status"] == "ok" and r["reducer"] in ("none", "random")]
    body = []
    for r in sorted(prof, key=lambda r: (r.get("batch", 1), -r["keep"])):
        body.append([r.get("batch", 1), r["reducer"], r["keep"], f"{r['energy_j'] / r.get('batch', 1):.2f}",
                     f"{r['power_w']:.0f}", ms(r["gpu_time_s"])])
    return table(["batch", "reducer", "keep", "energy / request (J)", "mean power (W)", "GPU time / call (ms)"], body)


def spread(folder: Path) -> str:
    a = {(r["reducer"], r["keep"]): r for r in rows(folder / "autograd-on" / "profile-run1.jsonl")
         if r["status"] == "ok" and r.get("batch", 1) == 1}
    b = {(r["reducer"], r["keep"], r["image"]): r for r in rows(folder / "autograd-on" / "profile-run2.jsonl")
         if r["status"] == "ok" and r.get("batch", 1) == 1}
    pairs = [(a[k[:2]], r) for k, r in b.items() if k[:2] in a and k[2] == a[k[:2]]["image"]]
    if not pairs:
        return "(no repeated conditions)"
    out = []
    for phase in ("prefill", "vision", "reducer", "gpu"):
        d = [abs(y[f"{phase}_time_s"] - x[f"{phase}_time_s"]) / x[f"{phase}_time_s"] for x, y in pairs
             if x.get(f"{phase}_time_s") and y.get(f"{phase}_time_s")]
        if d:
            out.append([phase, len(d), f"{100 * statistics.median(d):.1f}%", f"{100 * max(d):.1f}%"])
    e = [abs(y["energy_j"] - x["energy_j"]) / x["energy_j"] for x, y in pairs if x.get("energy_j") and y.get("energy_j")]
    out.append(["energy", len(e), f"{100 * statistics.median(e):.1f}%", f"{100 * max(e):.1f}%"])
    return table(["time of", "conditions", "median abs(run 2 - run 1) / run 1", "max"], out)


def main() -> int:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "results" / "h100-sxm")
    cal = cm.Calibration.load(folder / "calibration.json")
    for title, text in (("The same LLM prefill three ways (LLaVA-1.5-7B, 64 text tokens)", regimes(folder, cal)),
                        ("Every reducer, batch 1, eager (vtc profile)", per_reducer(folder)),
                        ("Reducer cost against the prefill time it saves", overhead(folder)),
                        ("Energy per request", energy(folder)),
                        ("Run-to-run spread (two runs on two machines, same conditions)", spread(folder))):
        print(f"### {title}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
