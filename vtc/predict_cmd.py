"""``vtc predict``: roofline savings of keeping N visual tokens, for a model on a GPU."""

from __future__ import annotations

import json

import numpy as np

import costmodel as cm
from rows import append_rows, prediction_rows
from reports.tables import ms, pct, si, text_table

from .cli import comma_list

HELP = ("predict FLOPs, memory, KV cache, prefill and request time saved by keeping N visual tokens (with a "
        "reducer's own schedule and cost); which keep reaches a target; where a reducer pays for itself")


def add_arguments(p) -> None:
    p.add_argument("--model", default="llava-1.5-7b", help="catalog name or spec file (default: llava-1.5-7b)")
    p.add_argument("--gpu", default="h100-sxm", help="catalog name(s), comma-separated, or a spec file")
    p.add_argument("--visual-tokens", type=int, help="visual tokens before reduction (default: the VLM preset's)")
    p.add_argument("--text-tokens", type=int, default=64, help="text and system tokens (default: 64)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keep", help="visual tokens kept, e.g. 64 or 64,128,192")
    g.add_argument("--retention", help="fraction of visual tokens kept, in (0, 1], e.g. 0.11 or 0.05,0.11,0.25")
    p.add_argument("--stage", choices=cm.STAGES, default="prefill")
    p.add_argument("--flash-attention", action="store_true", help="fused attention kernel (FlashAttention-2)")
    p.add_argument("--batch", default="1", help="batch size(s), comma-separated")
    p.add_argument("--w-bits", type=int, default=16)
    p.add_argument("--a-bits", type=int, default=16)
    p.add_argument("--kv-bits", type=int, default=None, help="default: --a-bits")
    p.add_argument("--compat", choices=["llm-viewer"], help="reproduce LLM-Viewer (main @472f71f) exactly")
    p.add_argument("--all-logits", action="store_true", help="LM head on every position, not only the last")
    p.add_argument("--breakdown", action="store_true", help="per-op table (one configuration only)")
    p.add_argument("--json", action="store_true", help="JSON: one object, or one line per configuration")
    p.add_argument("--plot", metavar="PNG", help="write the savings-vs-retention figure here")
    p.add_argument("--out", metavar="JSONL", help="append one prediction row per configuration here")
    p.add_argument("--calibration", metavar="JSON|GPU",
                   help="apply a calibration: a file written by vtc validate, or a GPU name with a shipped "
                        "calibration (" + ", ".join(cm.shipped_calibrations()) + ")")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="with a calibration: a runtime that replays CUDA graphs (no eager host floor)")
    p.add_argument("--reducer", metavar="NAME",
                   help="a reducer (vtc reducers): its own per-layer schedule (in-LLM methods) and its own cost; "
                        "with --break-even a comma-separated list or 'all' (the default there)")
    p.add_argument("--reducer-param", action="append", default=[], metavar="KEY=VALUE",
                   help="a reducer parameter (JSON value), e.g. layer=3; repeatable")
    p.add_argument("--output-tokens", type=int, default=0, metavar="N",
                   help="tokens the request generates: the prefill's, then N - 1 decode steps (request time)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--break-even", action="store_true",
                   help="per reducer, GPU and batch: the keeps at which the time saved, net of the reducer's own "
                        "time, is positive")
    g.add_argument("--target-ttft-saving", type=float, metavar="F",
                   help="the largest keep whose time to first token is at least F (e.g. 0.4) shorter")
    g.add_argument("--target-ttft-ms", type=float, metavar="MS", help="the largest keep whose TTFT is at most MS")
    p.add_argument("--list", action="store_true", help="list the model and GPU catalogs and exit")


def _list() -> int:
    names = cm.model_names()
    print("VLM presets:     " + ", ".join(names["vlm"]))
    print("LLMs:            " + ", ".join(names["llm"]))
    print("vision encoders: " + ", ".join(names["vision"]))
    rows = []
    for key in cm.gpu_names():
        g = cm.load_gpu(key)
        rows.append([key, g.name, si(g.peak_ops_per_s.get("bf16")), si(g.memory_bandwidth_bytes_per_s),
                     si(g.memory_bytes), f"{g.tdp_w:g}", "yes" if g.llm_viewer else "no"])
    print()
    print(text_table(["gpu", "name", "bf16 dense (FLOP/s)", "bandwidth (B/s)", "memory (B)", "TDP (W)",
                      "llm-viewer entry"], rows))
    print(f"\nspec files beside the catalog: {cm.specs.DATA_DIR / 'cpu-generic.toml'} (a generic CPU, for validating "
          "CPU runs: --gpu FILE); any TOML or JSON file with the catalog's fields is accepted wherever a name is")
    cals = cm.shipped_calibrations()
    print(f"calibrations shipped (--calibration NAME): {', '.join(cals) or 'none'}")
    return 0


def _reducer_params(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--reducer-param {item!r} is not KEY=VALUE (e.g. layer=3)")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _reducers(args, many: bool) -> list:
    """The reducer objects named by --reducer (None: no reducer); ``many``: a list or 'all'."""
    import reducers

    params = _reducer_params(args.reducer_param)
    names = args.reducer or ("all" if many else None)
    if names is None:
        if params:
            raise ValueError("--reducer-param needs --reducer")
        return [None]
    names = reducers.available() if names == "all" and many else [n.strip() for n in names.split(",") if n.strip()]
    if not many and len(names) != 1:
        raise ValueError(f"--reducer {args.reducer!r}: give one reducer (several only with --break-even)")
    return [reducers.get(n, **params) for n in names]


def run(args) -> int:
    if args.list:
        return _list()
    opts = cm.Options(stage=args.stage, w_bits=args.w_bits, a_bits=args.a_bits, kv_bits=args.kv_bits,
                      flash_attention=args.flash_attention, compat=args.compat, all_logits=args.all_logits,
                      cuda_graphs=args.cuda_graphs)
    gpus = [g.strip() for g in args.gpu.split(",") if g.strip()]
    none_given = "gives no value; give comma-separated values, e.g. 64,128 (or 0.11,0.25 for --retention)"
    keep = comma_list(args.keep, "--keep", empty=none_given) if args.keep is not None else None
    retention = comma_list(args.retention, "--retention", float, none_given) if args.retention is not None else None
    batch = comma_list(args.batch, "--batch", empty=none_given)
    calibration = cm.Calibration.load(args.calibration) if args.calibration else None
    common = dict(text_tokens=args.text_tokens, visual_tokens=args.visual_tokens, options=opts,
                  calibration=calibration, output_tokens=args.output_tokens)
    inverse = args.break_even or args.target_ttft_saving is not None or args.target_ttft_ms is not None
    if inverse:
        return _inverse(args, gpus, batch, keep, retention, common)
    reducer = _reducers(args, many=False)[0]
    sweep = cm.sweep(args.model, gpus, keep=keep, retention=retention, batch=batch, reducer=reducer, **common)
    _warn_memory(sweep)
    single = len(sweep.gpus) == 1 and len(sweep.batch) == 1 and len(sweep.keep) == 1
    if args.breakdown and not single:
        raise ValueError("--breakdown needs one configuration (one GPU, one batch size, one keep)")
    if args.out:
        append_rows(args.out, prediction_rows(sweep))
    if single:
        pred = cm.predict(args.model, gpus[0], keep=int(sweep.keep[0]), batch=int(sweep.batch[0]), reducer=reducer,
                          **common)
        if args.json:
            print(json.dumps(pred.to_dict(breakdown=args.breakdown), allow_nan=False))
        else:
            _print_single(pred, args.breakdown)
    elif args.json:
        for row in prediction_rows(sweep):
            print(json.dumps(row, allow_nan=False))
    else:
        _print_sweep(sweep)
    if args.plot:
        _plot(sweep, args.plot)
    return 0


def _inverse(args, gpus, batch, keep, retention, common) -> int:
    from .predict_views import print_break_even, print_target

    if keep is not None or retention is not None:
        raise ValueError("--keep/--retention are what --break-even and --target-* find; drop them")
    if args.break_even:
        rows = cm.break_even(args.model, gpus, _reducers(args, many=True), batch=batch, **common)
        print_break_even(rows, args)
        return 0
    reducer = _reducers(args, many=False)[0]
    answers = cm.solve_target(args.model, gpus, ttft_saving=args.target_ttft_saving, ttft_ms=args.target_ttft_ms,
                              batch=batch, reducer=reducer, **common)
    print_target(answers, args, reducer)
    return 0


def _warn_memory(sweep) -> None:
    """Predictions are allowed for what does not fit; say so, with the bytes, on stderr."""
    import sys

    for gi, gkey in enumerate(sweep.gpus):
        have = cm.load_gpu(gkey).memory_bytes
        for bi, batch in enumerate(sweep.batch):
            b = sweep.baseline
            need = float(b["weight_bytes"][gi, bi, 0] + b["kv_cache_bytes"][gi, bi, 0]
                         + b["activation_memory_bytes"][gi, bi, 0])
            if need > have:
                print(f"warning: {sweep.model} at batch {int(batch)} needs about {need / 2**30:.1f} GiB with every "
                      f"visual token (weights + KV cache + activations), more than {gkey}'s {have / 2**30:.0f} GiB; "
                      "these predictions assume it fits", file=sys.stderr)


QUANTITY_ROWS = [
    ("LLM tokens", "tokens", lambda v: f"{v:.0f}"),
    ("FLOPs", "flops", si),
    ("memory access (B)", "memory_access_bytes", si),
    ("activation memory (B)", "activation_memory_bytes", si),
    ("KV cache (B)", "kv_cache_bytes", si),
    ("weights (B)", "weight_bytes", si),
    ("LLM time (ms)", "time_s", ms),
    ("vision encoder (ms)", "vision_time_s", ms),
    ("projector (ms)", "projector_time_s", ms),
    ("reducer (ms)", "reducer_time_s", ms),
    ("reducer FLOPs", "reducer_flops", si),
    ("time to first token (ms)", "ttft_s", ms),
    ("decode (ms)", "decode_time_s", ms),
    ("request (ms)", "request_time_s", ms),
    ("LLM energy (J)", "energy_j", lambda v: f"{v:.4g}"),
    ("request energy (J)", "request_energy_j", lambda v: f"{v:.4g}"),
]


def _print_single(pred: cm.Prediction, breakdown: bool) -> None:
    print(f"{pred.model} on {pred.gpu}, {pred.stage}, batch {pred.batch}, mode {pred.mode}: "
          f"{pred.keep} of {pred.visual_tokens} visual tokens kept ({pred.keep / pred.visual_tokens:.1%}) "
          f"+ {pred.text_tokens} text tokens" + (f", reducer {pred.reducer}" if pred.reducer else "")
          + (f", {pred.output_tokens} output tokens" if pred.output_tokens else ""))
    if len(pred.reduced.stages) > 1:
        print("schedule: " + "; ".join(f"layers {s['layers'][0]}-{s['layers'][1]}: {s['tokens']} tokens"
                                       for s in pred.reduced.stages))
    rows = []
    for label, key, fmt in QUANTITY_ROWS:
        b, r = getattr(pred.baseline, key), getattr(pred.reduced, key)
        if b is None or (key.startswith("reducer") and not pred.reducer):
            continue
        if key == "tokens" and len(pred.reduced.stages) > 1:  # a schedule: its first and last lengths
            r = " -> ".join(str(s["tokens"]) for s in pred.reduced.stages)
            rows.append([label + " (by stage)", fmt(b), r, "see schedule"])
            continue
        rows.append([label, fmt(b), fmt(r), pct(pred.savings.get(key))])
    print(text_table(["quantity", "all visual tokens", "reduced", "saved (%)"], rows))
    if len(pred.reduced.stages) > 1:
        print("activation memory is the peak, reached in the first stage, before the reducer prunes")
    if breakdown:
        for title, cost in (("all visual tokens", pred.baseline), ("reduced", pred.reduced)):
            print(f"\nper-op table, {title} ({cost.tokens} LLM tokens; per layer unless layers = 1):")
            print(text_table(
                ["op", "layers", "FLOPs", "memory access (B)", "weights (B)", "act in (B)", "act out (B)",
                 "KV in (B)", "KV out (B)", "intensity (FLOP/B)", "bound", "time (us)"],
                [[o.name, o.layers, si(o.flops), si(o.memory_access_bytes), si(o.load_weight_bytes),
                  si(o.load_act_bytes), si(o.store_act_bytes), si(o.load_kv_bytes), si(o.store_kv_bytes),
                  f"{o.arithmetic_intensity:.1f}", o.bound, f"{o.time_s * 1e6:.2f}"] for o in cost.per_op]))
    print("\nassumptions:")
    for a in pred.assumptions:
        print(f"  - {a}")


def _print_sweep(sweep: cm.Sweep) -> None:
    has_vlm = "ttft_s" in sweep.reduced
    headers = ["gpu", "batch", "keep", "kept (%)", "FLOPs saved (%)", "mem. access saved (%)",
               "act. memory saved (%)", "KV cache saved (%)", "LLM time (ms)", "LLM time saved (%)"]
    extra = [("reducer (ms)", "reducer_time_s", False)] if sweep.reducer else []
    if has_vlm:
        extra += [("TTFT (ms)", "ttft_s", True)]
    if sweep.output_tokens:
        extra += [("request (ms)", "request_time_s", True)]
    for label, _, with_saving in extra:
        headers += [label] + ([label.replace("(ms)", "saved (%)")] if with_saving else [])
    rows = []
    for gi, gpu in enumerate(sweep.gpus):
        for bi, b in enumerate(sweep.batch):
            for ki, k in enumerate(sweep.keep):
                s = {key: float(v[gi, bi, ki]) for key, v in sweep.savings.items()}
                r = {key: float(np.broadcast_to(v, sweep.savings["flops"].shape)[gi, bi, ki])
                     for key, v in sweep.reduced.items()}
                row = [gpu, int(b), int(k), pct(k / sweep.visual_tokens), pct(s["flops"]),
                       pct(s["memory_access_bytes"]), pct(s["activation_memory_bytes"]),
                       pct(s["kv_cache_bytes"]), ms(r["time_s"]), pct(s["time_s"])]
                for _, key, with_saving in extra:
                    row += [ms(r[key])] + ([pct(s[key])] if with_saving else [])
                rows.append(row)
    o = sweep.options
    print(f"{sweep.model}, {o.stage}, mode {o.compat or 'corrected'}, {sweep.visual_tokens} visual + "
          f"{sweep.text_tokens} text tokens; baseline keeps all visual tokens"
          + (f"; reducer {sweep.reducer} (its schedule and its own time)" if sweep.reducer else "")
          + (f"; {sweep.output_tokens} output tokens" if sweep.output_tokens else ""))
    print(text_table(headers, rows))


def _plot(sweep: cm.Sweep, path: str) -> None:
    from reports.figures import plot_predicted_savings

    if len(sweep.gpus) != 1 or len(sweep.batch) != 1:
        raise ValueError("--plot draws one GPU and one batch size; give one of each")
    o = sweep.options
    retention = sweep.keep / sweep.visual_tokens
    savings = {k: v[0, 0, :] for k, v in sweep.savings.items()}
    out = plot_predicted_savings(
        retention, savings,
        title=f"Predicted savings: {sweep.model} on {sweep.gpus[0]} ({o.stage}, batch {int(sweep.batch[0])})",
        caption=(f"Source: vtc predict, roofline cost model ({o.compat or 'corrected'} mode), "
                 f"{sweep.visual_tokens} visual + {sweep.text_tokens} text tokens, "
                 f"w{o.w_bits}a{o.a_bits}kv{o.kv}, flash attention {'on' if o.flash_attention else 'off'}. "
                 "Predictions, not measurements."),
        path=path)
    print(f"\nplot written to {out}")
