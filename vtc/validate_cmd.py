"""``vtc validate``: predicted vs measured prefill, with a per-GPU calibration."""

from __future__ import annotations

import json

import rows as R
from costmodel.validation import validate
from reports.tables import ms, pct, text_table

HELP = "compare the cost model with a profile run; fit and save a per-GPU calibration"


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", help="JSON Lines files written by vtc profile")
    p.add_argument("--gpu", help="hardware spec to predict with (default: matched from the run's device name)")
    p.add_argument("--model", help="model spec (default: the run's preset)")
    p.add_argument("--calibration-out", metavar="JSON", help="save the fitted calibration here")
    p.add_argument("--json", action="store_true", help="one JSON object per condition")


def run(args) -> int:
    rows = [r for path in args.runs for r in R.read_rows(path)]
    reports, saved = validate(rows, gpu=args.gpu, model=args.model, calibration_out=args.calibration_out,
                              where=", ".join(args.runs))
    for rep in reports:
        if args.json:
            for c in rep.comparisons:
                print(json.dumps({"gpu": rep.gpu, "spec": rep.spec, "kind": c.row["kind"], "execution": c.label,
                                  "reducer": c.row.get("reducer"), "keep": c.row["keep"], "batch": c.row.get("batch", 1),
                                  "image": c.row.get("image"), "measured_prefill_s": c.measured_s,
                                  "predicted_prefill_s": c.predicted_prefill_s,
                                  "calibrated_prefill_s": c.calibrated_prefill_s,
                                  "measured_saving": c.measured_saving, "predicted_saving": c.predicted_saving}))
            continue
        print(f"{rep.spec} on {rep.gpu}: {len(rep.comparisons)} measured conditions")
        rows = []
        for c in sorted(rep.comparisons, key=lambda c: (c.row["kind"], c.label, c.row.get("batch", 1),
                                                        c.row.get("reducer") or "", c.row["keep"], c.row.get("image") or "")):
            m = c.measured_s
            rows.append([c.row.get("reducer", "(prefill only)"), c.row["keep"], c.row.get("batch", 1), c.label,
                         c.row.get("image", "(random)"), ms(m), ms(c.predicted_prefill_s),
                         pct((c.predicted_prefill_s - m) / m),
                         ms(c.calibrated_prefill_s),
                         pct(None if c.calibrated_prefill_s is None else (c.calibrated_prefill_s - m) / m),
                         ms(c.row.get("vision_time_s")), ms(c.predicted_vision_s),
                         pct(c.measured_saving), pct(c.predicted_saving)])
        print(text_table(["reducer", "keep", "batch", "execution", "image", "prefill measured (ms)", "predicted (ms)", "error (%)",
                          "calibrated (ms)", "error (%)", "vision measured (ms)", "vision predicted (ms)",
                          "saved measured (%)", "saved predicted (%)"], rows))
        cal = rep.calibration
        if cal is not None:
            e = cal.error
            print(f"\nprefill time error, median |rel|: roofline {e['before_median_abs_rel']:.1%} "
                  f"(max {e['before_max_abs_rel']:.1%}) -> calibrated {e['after_median_abs_rel']:.1%} "
                  f"(max {e['after_max_abs_rel']:.1%}), in-sample, n = {cal.n}")
            eff = lambda s: f"{1 / s:.1%}" if s > 1e-3 else "not identified by this run"  # noqa: E731
            print(f"calibration: overhead {cal.overhead_s * 1e3:.3f} ms, compute scale {cal.compute_scale:.3g} "
                  f"(efficiency {eff(cal.compute_scale)}), memory scale {cal.memory_scale:.3g} "
                  f"(efficiency {eff(cal.memory_scale)}), eager host floor {cal.host_s_per_layer * 1e3:.3f} ms per "
                  f"layer ({e.get('eager_points', 0)} eager and {e.get('graph_points', 0)} CUDA-graph points)")
            if cal.energy is not None:
                print(f"energy: first guess error {e['energy_before_median_abs_rel']:.1%} -> fitted "
                      f"{e['energy_after_median_abs_rel']:.1%} (n = {e['energy_n']}); static {cal.energy.static_w:.1f} W, "
                      f"{cal.energy.j_per_flop * 1e12:.3g} pJ/FLOP, {cal.energy.j_per_byte * 1e12:.3g} pJ/byte")
        for s in rep.skipped:
            print(f"note: {s}")
    for path in saved:
        print(f"calibration written to {path} (use: vtc predict --calibration {path})")
    return 0
