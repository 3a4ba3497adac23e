"""``vtc reducers``: the reducer registry, with each method's hook point, signals and parameters."""

from __future__ import annotations

import json

import reducers
from reports.tables import text_table

HELP = "list the visual-token reducers: hook point, signals and parameters"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per reducer")


def describe(name: str) -> dict:
    cls = reducers.get_class(name)
    params = reducers.parameters(name)
    if cls.hook == "in-llm":
        signals = "the LLM's own q/k/hidden at the pruning layer(s) (computed by the forward path)"
    else:
        signals = getattr(cls, "signal_doc", None) or " + ".join(cls.signals) or "none"
    return {"name": name, "hook": cls.hook, "signals": signals, "parameters": params,
            "count": "keep" if cls.fixed_count else "method-defined (see below)",
            "summary": _summary(cls.__doc__)}


def _summary(doc: str | None) -> str:
    """The docstring's first paragraph, whole (never cut mid-word or mid-sentence)."""
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.split())


def run(args) -> int:
    rows = [describe(n) for n in reducers.available()]
    if args.json:
        for r in rows:
            print(json.dumps(r, default=repr))
        return 0
    print(text_table(["reducer", "hook", "signals", "parameters (defaults)", "output count"],
                     [[r["name"], r["hook"], r["signals"],
                       ", ".join(f"{k}={v!r}" for k, v in r["parameters"].items()) or "-", r["count"]]
                      for r in rows]))
    print()
    for r in rows:
        print(f"{r['name']}: {r['summary']}")
    return 0
