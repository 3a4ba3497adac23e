"""Import lmms-eval results as eval rows, under this suite's canonical benchmark names.

Two output layouts are read:

* lmms-eval >= 0.3: ``<model>/<timestamp>_results.json`` (``{"results": {task: {"<metric>,<filter>":
  value}}, "config": {"model_args": ...}}``) and ``<timestamp>_samples_<task>.jsonl`` (one line per
  sample: ``doc_id``, ``target``, ``filtered_resps``, metric values);
* lmms-eval 0.1/0.2: ``results.json`` (same table) and ``<task>.json`` per task
  (``{"args", "model_configs", "logs": [samples]}``).

Files that are not results tables (MMBench's ``submissions/*_results.json``, other JSON) are
skipped and named, the rest imported. The reducer and token count come from the command line or
from ``model_args`` (``reducer=``, ``keep=`` / ``retained_tokens=`` / ``visual_tokens=``). A
task's headline accuracy comes from its metric key (MME: perception + cognition, accepting the
pre-2024 key ``mme_percetion_score``); when the key is missing the row says which, never a
silent ``None``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import reducers
import rows as R

from .tasks import canonical, get_task


class LmmsImportError(ValueError):
    """Nothing importable, or a file that claims to be lmms-eval output and is malformed."""


ImportError_ = LmmsImportError  # the name callers used before


def _model_args(cfg: dict) -> dict:
    args = cfg.get("model_args", "")
    if isinstance(args, dict):
        return {str(k): str(v) for k, v in args.items()}
    return dict(kv.split("=", 1) for kv in str(args).split(",") if "=" in kv)


def _results_files(path: Path) -> tuple[list[tuple[Path, dict]], list[str]]:
    """(results tables with their data, skipped files with the reason)."""
    candidates = sorted(path.glob("**/*results*.json")) if path.is_dir() else [path]
    found, skipped = [], []
    for f in candidates:
        if "submissions" in f.parts[len(path.parts) if path.is_dir() else 0:]:
            skipped.append(f"{f}: a submission file, not a results table")
            continue
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            skipped.append(f"{f}: not readable JSON ({e})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            skipped.append(f"{f}: not an lmms-eval results table (no 'results' table of tasks)")
            continue
        found.append((f, data))
    return found, skipped


def headline(task_name: str, metrics: dict) -> tuple[float | None, str | None]:
    """(accuracy, reason when it is missing) from a task's cleaned metric table."""
    try:
        task = get_task(task_name)
    except ValueError:
        return (next(iter(metrics.values()), None), None if metrics else f"task {task_name!r} reported no metric")
    for old, new in task.lmms_alternatives.items():
        if old in metrics and new not in metrics:
            metrics[new] = metrics[old]
    head = task.lmms_headline
    if head is None:
        return next(iter(metrics.values()), None), None
    keys = head if isinstance(head, tuple) else (head,)
    missing = [k for k in keys if k not in metrics]
    if missing:
        return None, (f"lmms-eval results for {task_name!r} have no metric {', '.join(missing)} "
                      f"(have: {', '.join(sorted(metrics)) or 'none'})")
    return sum(metrics[k] for k in keys), None


def _sample_lines(f: Path, task: str) -> list[dict]:
    """Per-sample records of ``task`` beside results file ``f``, in either layout."""
    new = next(iter(sorted(f.parent.glob(f"*samples_{task}.jsonl"))), None)
    if new is not None:
        out = []
        for i, line in enumerate(new.read_text().splitlines()):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise LmmsImportError(f"{new} line {i + 1}: not JSON") from None
        return out
    old = f.parent / f"{task}.json"
    if old.is_file():
        try:
            data = json.loads(old.read_text())
        except json.JSONDecodeError:
            raise LmmsImportError(f"{old}: not JSON") from None
        if isinstance(data, dict) and isinstance(data.get("logs"), list):
            return data["logs"]
    return []


def _sample_rows(base: dict, f: Path, task: str, head) -> list[dict]:
    out = []
    for i, s in enumerate(_sample_lines(f, task)):
        if "doc_id" not in s:
            raise LmmsImportError(f"samples of {task!r} beside {f}: record {i + 1} has no doc_id; not lmms-eval output")
        resp = s.get("filtered_resps") or s.get("resps") or [""]
        while isinstance(resp, list) and resp:
            resp = resp[0]
        score = s.get(head) if isinstance(head, str) else None
        if isinstance(score, dict):
            score = score.get("score")
        out.append(R.eval_row(**base, sample_id=str(s["doc_id"]), prediction=str(resp), answers=[s.get("target")],
                              score=score))
    return out


def _hook(reducer: str, params: dict) -> str:
    """Where the named reducer acts (its ``stage`` parameter when given); post-projector for names
    this suite does not know."""
    if params.get("stage") in reducers.registry.HOOKS:
        return params["stage"]
    try:
        return reducers.get_class(reducer).hook
    except reducers.ReducerError:
        return "post-projector"


def _file_rows(f: Path, data: dict, reducer: str | None, keep: int | None) -> list[dict]:
    cfg = data.get("config", {}) if isinstance(data.get("config"), dict) else {}
    margs = _model_args(cfg)
    red = reducer or margs.get("reducer") or margs.get("method") or "none"
    k = keep if keep is not None else next((int(margs[x]) for x in ("keep", "retained_tokens", "visual_tokens")
                                             if x in margs and str(margs[x]).isdigit()), None)
    params = {kk[len("reducer."):]: v for kk, v in margs.items() if kk.startswith("reducer.")}
    out = []
    for task, metrics in data["results"].items():
        if not isinstance(metrics, dict):
            raise LmmsImportError(f"{f}: results[{task!r}] is not a table of metrics")
        clean = {re.sub(r",.*$", "", m): v for m, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and "stderr" not in m}
        acc, reason = headline(task, clean)
        base = dict(benchmark=canonical(task) or task, model=margs.get("pretrained", cfg.get("model", "unknown")),
                    spec=None, gpu=None, reducer=red, keep=k, visual_tokens=None, hook=_hook(red, params),
                    options={"reducer_params": params}, source=f"lmms-eval ({f.name})", lmms_task=task)
        summary = {"accuracy": acc, "metrics": clean}
        if reason:
            summary["accuracy_unavailable_reason"] = reason
        out.append(R.eval_row(**base, summary=True, **summary))
        head = get_task(task).lmms_headline if canonical(task) else None
        out += _sample_rows(base, f, task, head)
    return out


def import_lmms_eval(path: str | Path, reducer: str | None = None, keep: int | None = None, *,
                     warn=lambda msg: print(msg, file=sys.stderr)) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise LmmsImportError(f"lmms-eval output {str(path)!r} does not exist")
    found, skipped = _results_files(path)
    for s in skipped:
        warn(f"skipped {s}")
    if not found:
        raise LmmsImportError(f"no lmms-eval results table under {str(path)!r} (looked at *results*.json: "
                              f"{len(skipped)} file(s) skipped)")
    out = []
    for f, data in found:
        out += _file_rows(f, data, reducer, keep)
    return out
