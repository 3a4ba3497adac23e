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


class ReducerResolver:
    """``reducer_for(row)`` for :func:`costmodel.validation.validate`: the row's reducer object,
    built with ``reducers.get(name, **params)`` from the parameters and hook the row recorded
    (values recorded as text, e.g. ``"[2, 6, 15]"``, read as JSON; parameters the current class
    does not have are dropped, and said)."""

    def __init__(self):
        self.notes: set[str] = set()
        self._cache: dict[str, object] = {}

    def __call__(self, row: dict):
        import reducers

        name = row.get("reducer")
        if not name or name == "none":
            return None
        known = reducers.parameters(name)
        params = {}
        for k, v in (row.get("options", {}).get("reducer_params") or {}).items():
            if isinstance(v, str) and v[:1] in "[{":
                v = json.loads(v)
            if k in known:
                params[k] = v
            else:
                self.notes.add(f"reducer {name!r}: parameter {k!r} in the rows is not one of the current class's "
                               f"({', '.join(known) or 'none'}); its default is used")
        hook = row.get("hook") or ("post-projector" if row.get("kind") == "reducer-timing" else None)
        if "stage" in known and hook in ("pre-projector", "post-projector"):
            params["stage"] = hook
        key = json.dumps([name, params], sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = reducers.get(name, **params)
        return self._cache[key]


def run(args) -> int:
    rows = [r for path in args.runs for r in R.read_rows(path)]
    resolver = ReducerResolver()
    reports, saved = validate(rows, gpu=args.gpu, model=args.model, calibration_out=args.calibration_out,
                              where=", ".join(args.runs), reducer_for=resolver)
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
        if not rep.comparisons:
            _print_reducer_phase(rep)
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
        _print_reducer_phase(rep)
        for s in rep.skipped:
            print(f"note: {s}")
    for note in sorted(resolver.notes):
        print(f"note: {note}")
    for path in saved:
        print(f"calibration written to {path} (use: vtc predict --calibration {path})")
    return 0


def _print_reducer_phase(rep) -> None:
    comps = rep.reducer_phase
    if not comps:
        return
    print(f"\nreducer phase on {rep.gpu}: {len(comps)} measurements (the reducer's cost model: max(FLOPs / peak, "
          "bytes / bandwidth) + launches x per-launch time)")
    rows = []
    for c in sorted(comps, key=lambda c: (c.row["kind"], c.reducer, c.keep, c.batch, c.execution)):
        m = c.measured_s
        rows.append([c.reducer, c.keep, c.batch, c.execution, c.row["kind"], f"{c.launches:.0f}",
                     "" if c.kernels is None else c.kernels, ms(m),
                     ms(c.predicted_s), pct((c.predicted_s - m) / m), ms(c.calibrated_s),
                     pct(None if c.calibrated_s is None else (c.calibrated_s - m) / m)])
    print(text_table(["reducer", "keep", "batch", "execution", "rows", "launches", "kernels measured", "measured (ms)",
                      "predicted (ms)", "error (%)", "calibrated (ms)", "error (%)"], rows))
    cal = rep.calibration
    if cal is not None and (cal.launch_s is not None or cal.graph_launch_s is not None):
        e = cal.error
        us = lambda t: "not fitted" if t is None else f"{t * 1e6:.2f} us"  # noqa: E731
        parts = []
        for kind in ("eager", "graph"):
            before, after = e.get(f"reducer_{kind}_before_median_abs_rel"), e.get(f"reducer_{kind}_after_median_abs_rel")
            if before is not None and before == before:  # no points of a kind: say nothing rather than "nan%"
                parts.append(f"{kind} {before:.1%} -> " + ("not fitted" if after is None else f"{after:.1%}"))
        print(f"per-launch time fitted: eager {us(cal.launch_s)}, CUDA graph {us(cal.graph_launch_s)}"
              + (f"; median |error| {', '.join(parts)} (in-sample)" if parts else ""))
