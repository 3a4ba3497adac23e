"""``vtc predict``'s answers to the inverse questions, printed: the break-even table and the
largest keep reaching a target."""

from __future__ import annotations

from collections import defaultdict

from reports.tables import ms, pct, text_table

#: the budget at which the break-even table also shows the net time saved
SHOWN_KEEP = 64


def _range(b) -> str:
    if b.smallest is None:
        return "never"
    span = f"<= {b.largest}" if b.smallest == 1 else f"{b.smallest}..{b.largest}"
    return span if b.contiguous else span + " (gaps)"


def print_break_even(rows, args) -> None:
    """Reducers x GPUs, one table per batch size: the keeps with a positive net saving, and at
    keep 64 the reducer's own time and the net time saved."""
    what = "request time" if args.output_tokens else "time to first token"
    gpus = list(dict.fromkeys(r.gpu for r in rows))
    by = defaultdict(dict)
    for r in rows:
        by[(r.batch, r.reducer)][r.gpu] = r
    for batch in sorted({r.batch for r in rows}):
        print(f"{args.model}, batch {batch}: keeps at which the {what} saved, net of the reducer's own time, is "
              f"positive; at keep {SHOWN_KEEP}: the reducer's time and the net time saved"
              + (" (calibrated)" if args.calibration else " (roofline + launches x per-launch time)")
              + (", CUDA graphs" if args.cuda_graphs else ", eager"))
        headers = ["reducer"]
        for g in gpus:
            headers += [f"{g}: net > 0 at keep", "reducer (ms)", "net saved (ms)"]
        table = []
        for (b, name), per_gpu in by.items():
            if b != batch:
                continue
            row = [name]
            for g in gpus:
                r = per_gpu[g]
                row += [_range(r), ms(r.reducer_time_s.get(SHOWN_KEEP)), ms(r.net_saving_s.get(SHOWN_KEEP))]
            table.append(row)
        print(text_table(headers, table))
        print()


def print_target(answers, args, reducer) -> None:
    target = (f"TTFT <= {args.target_ttft_ms:g} ms" if args.target_ttft_ms is not None else
              f"TTFT saved >= {args.target_ttft_saving:.0%}")
    name = getattr(reducer, "name", None)
    print(f"{args.model}: the largest keep with {target}" + (f", reducer {name} (its own time included)" if name
                                                              else "") + "; baseline keeps every visual token")
    rows = []
    for a in answers:
        if a.keep is None:
            rows.append([a.gpu, a.batch, ms(a.baseline_ttft_s), ms(a.target_s), "none", "", "", ""])
        else:
            rows.append([a.gpu, a.batch, ms(a.baseline_ttft_s), ms(a.target_s), a.keep, pct(a.retention),
                         ms(a.ttft_s), pct(a.saving)])
    print(text_table(["gpu", "batch", "TTFT, all tokens (ms)", "target (ms)", "largest keep", "retention (%)",
                      "TTFT (ms)", "saved (%)"], rows))
    for a in answers:
        if a.reason:
            print(f"{a.gpu}, batch {a.batch}: cannot be reached: {a.reason}")
