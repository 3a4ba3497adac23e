"""``vtc predict``: roofline savings of keeping N visual tokens, for a model on a GPU."""

from __future__ import annotations

import json

import numpy as np

import costmodel as cm
from rows import append_rows, prediction_rows
from reports.tables import ms, pct, si, text_table

HELP = "predict FLOPs, memory, KV cache and prefill time saved by keeping N visual tokens"


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of integers") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of numbers") from None


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


def run(args) -> int:
    if args.list:
        return _list()
    opts = cm.Options(stage=args.stage, w_bits=args.w_bits, a_bits=args.a_bits, kv_bits=args.kv_bits,
                      flash_attention=args.flash_attention, compat=args.compat, all_logits=args.all_logits,
                      cuda_graphs=args.cuda_graphs)
    gpus = [g.strip() for g in args.gpu.split(",") if g.strip()]
    keep = _ints(args.keep) if args.keep else None
    retention = _floats(args.retention) if args.retention else None
    batch = _ints(args.batch)
    calibration = cm.Calibration.load(args.calibration) if args.calibration else None
    sweep = cm.sweep(args.model, gpus, keep=keep, retention=retention, batch=batch,
                     text_tokens=args.text_tokens, visual_tokens=args.visual_tokens, options=opts,
                     calibration=calibration)
    _warn_memory(sweep)
    single = len(sweep.gpus) == 1 and len(sweep.batch) == 1 and len(sweep.keep) == 1
    if args.breakdown and not single:
        raise ValueError("--breakdown needs one configuration (one GPU, one batch size, one keep)")
    if args.out:
        append_rows(args.out, prediction_rows(sweep))
    if single:
        pred = cm.predict(args.model, gpus[0], keep=int(sweep.keep[0]), batch=int(sweep.batch[0]),
                          text_tokens=args.text_tokens, visual_tokens=args.visual_tokens, options=opts,
                          calibration=calibration)
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
    ("time to first token (ms)", "ttft_s", ms),
    ("LLM energy (J)", "energy_j", lambda v: f"{v:.4g}"),
    ("request energy (J)", "request_energy_j", lambda v: f"{v:.4g}"),
]


def _print_single(pred: cm.Prediction, breakdown: bool) -> None:
    print(f"{pred.model} on {pred.gpu}, {pred.stage}, batch {pred.batch}, mode {pred.mode}: "
          f"{pred.keep} of {pred.visual_tokens} visual tokens kept ({pred.keep / pred.visual_tokens:.1%}) "
          f"+ {pred.text_tokens} text tokens")
    rows = []
    for label, key, fmt in QUANTITY_ROWS:
        b, r = getattr(pred.baseline, key), getattr(pred.reduced, key)
        if b is None:
            continue
        rows.append([label, fmt(b), fmt(r), pct(pred.savings.get(key))])
    print(text_table(["quantity", "all visual tokens", "reduced", "saved (%)"], rows))
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
    if has_vlm:
        headers += ["TTFT (ms)", "TTFT saved (%)"]
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
                if has_vlm:
                    row += [ms(r["ttft_s"]), pct(s["ttft_s"])]
                rows.append(row)
    o = sweep.options
    print(f"{sweep.model}, {o.stage}, mode {o.compat or 'corrected'}, {sweep.visual_tokens} visual + "
          f"{sweep.text_tokens} text tokens; baseline keeps all visual tokens")
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
