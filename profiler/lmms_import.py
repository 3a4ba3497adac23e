"""Import lmms-eval results (aggregated results JSON and per-sample JSONL) as eval rows.

lmms-eval writes ``<timestamp>_results.json`` (``{"results": {task: {"<metric>,<filter>": value,
...}}, "config": {"model_args": "..."}}``) and ``<timestamp>_samples_<task>.jsonl`` (one line
per sample: ``doc_id``, ``target``, ``filtered_resps``, and the metric values). The reducer and
token count come from the command line, or from ``model_args`` keys (``reducer=``,
``keep=``/``retained_tokens=``/``visual_tokens=``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .rows import SCHEMA_VERSION

# the metric that is the task's headline accuracy, where lmms-eval names several
HEADLINE = {"pope": "pope_accuracy", "mme": ("mme_percetion_score", "mme_cognition_score"),
            "gqa": "exact_match", "scienceqa_img": "exact_match", "textvqa_val": "exact_match",
            "vqav2_val": "exact_match", "vizwiz_vqa_val": "exact_match", "mmbench_en_dev": "gpt_eval_score"}


class ImportError_(ValueError):
    """A file that is not lmms-eval output."""


def _model_args(cfg: dict) -> dict:
    args = cfg.get("model_args", "")
    if isinstance(args, dict):
        return {str(k): str(v) for k, v in args.items()}
    return dict(kv.split("=", 1) for kv in str(args).split(",") if "=" in kv)


def import_lmms_eval(path: str | Path, reducer: str | None = None, keep: int | None = None) -> list[dict]:
    path = Path(path)
    files = sorted(path.glob("**/*results*.json")) if path.is_dir() else [path]
    if not files:
        raise ImportError_(f"no lmms-eval results files (*results*.json) under {str(path)!r}")
    rows = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ImportError_(f"{f}: not readable JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            raise ImportError_(f"{f}: not an lmms-eval results file (expected a 'results' table of tasks)")
        cfg = data.get("config", {}) if isinstance(data.get("config"), dict) else {}
        margs = _model_args(cfg)
        red = reducer or margs.get("reducer") or margs.get("method") or "none"
        k = keep if keep is not None else next((int(margs[x]) for x in ("keep", "retained_tokens", "visual_tokens")
                                                 if x in margs and str(margs[x]).isdigit()), None)
        model = margs.get("pretrained", cfg.get("model", "unknown"))
        base = {"schema_version": SCHEMA_VERSION, "kind": "eval", "source": f"lmms-eval ({f.name})", "model": model,
                "reducer": red, "keep": k, "status": "ok"}
        for task, metrics in data["results"].items():
            if not isinstance(metrics, dict):
                raise ImportError_(f"{f}: results[{task!r}] is not a table of metrics")
            clean = {re.sub(r",.*$", "", m): v for m, v in metrics.items()
                     if isinstance(v, (int, float)) and "stderr" not in m}
            head = HEADLINE.get(task)
            if isinstance(head, tuple):
                acc = sum(clean.get(h, 0.0) for h in head) if all(h in clean for h in head) else None
            else:
                acc = clean.get(head) if head else next(iter(clean.values()), None)
            rows.append({**base, "benchmark": task, "summary": True, "accuracy": acc, "metrics": clean})
            sample_file = next(iter(sorted(f.parent.glob(f"*samples_{task}.jsonl"))), None)
            if sample_file is not None:
                for i, line in enumerate(sample_file.read_text().splitlines()):
                    if not line.strip():
                        continue
                    try:
                        s = json.loads(line)
                    except json.JSONDecodeError:
                        raise ImportError_(f"{sample_file} line {i + 1}: not JSON") from None
                    if "doc_id" not in s:
                        raise ImportError_(f"{sample_file} line {i + 1}: no doc_id; not an lmms-eval samples file")
                    resp = s.get("filtered_resps") or s.get("resps") or [""]
                    while isinstance(resp, list) and resp:
                        resp = resp[0]
                    score = s.get(head) if isinstance(head, str) else None
                    if isinstance(score, dict):
                        score = score.get("score")
                    rows.append({**base, "benchmark": task, "sample_id": str(s["doc_id"]), "prediction": str(resp),
                                 "answers": [s.get("target")], "score": score})
    return rows
