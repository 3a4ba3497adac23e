"""``vtc eval``: accuracy with a reducer, and fidelity to the unreduced model, sample by sample.

Every sample is answered by greedy generation from the reduced sequence (LLaVA-1.5 template,
the benchmark's answer prompt, short answers) and scored the benchmark's standard way
(:mod:`profiler.scoring`). Label-free fidelity is measured against the same model with every
visual token on the same input: KL divergence and top-1 agreement of the first generated
token's distribution, and exact match of the greedy answers; it works on any LLaVA, including
random-weight presets. Rows are written as samples finish and a rerun resumes; a summary row
per (benchmark, reducer, keep) closes the run.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from .benchmarks import Sample
from .images import read_image
from .models import LoadedModel
from .rows import SCHEMA_VERSION, append_rows, read_rows
from .runner import is_in_llm, Runner, get_reducer, make_request, synthetic_prompt, template_prompt
from .scoring import choice_correct, mme_scores, normalize_answer, pope_metrics, vqa_accuracy, yes_no


def score(sample: Sample, prediction: str) -> float:
    m = sample.metric
    if m == "vqa":
        return vqa_accuracy(prediction, sample.answers)
    if m == "exact":
        return float(normalize_answer(prediction) in {normalize_answer(a) for a in sample.answers})
    if m in ("yesno", "pope", "mme"):
        return float((yes_no(prediction) or "") == sample.answers[0].strip().lower())
    if m == "choice":
        return choice_correct(prediction, sample.answers[0], sample.extra.get("n_options", 4))
    raise ValueError(f"unknown metric {m!r}")


class Evaluator:
    def __init__(self, lm: LoadedModel, max_new_tokens: int = 8, seed: int = 0):
        self.lm, self.runner, self.max_new = lm, Runner(lm), max_new_tokens
        self.seed = seed
        self._reference: dict[str, tuple] = {}
        self._pixel_cache: dict[str, torch.Tensor] = {}

    def _pixels(self, sample: Sample):
        # every condition sees the same sample: read and preprocess it once
        if sample.sample_id not in self._pixel_cache:
            if len(self._pixel_cache) > 4096:
                self._pixel_cache.clear()
            self._pixel_cache[sample.sample_id] = self.lm.preprocess([read_image(sample.image)])
        return self._pixel_cache[sample.sample_id]

    def _request(self, sample: Sample):
        pv = self._pixels(sample)
        if self.lm.tokenizer is not None:
            prompt = template_prompt(self.lm, sample.question)
        else:
            # a stable per-sample seed (str hash() differs between processes)
            prompt = synthetic_prompt(self.lm, 32, seed=zlib.crc32(sample.sample_id.encode()))[0]
        return make_request(self.lm, [prompt], pv)

    @torch.no_grad()
    def generate(self, request, reducer, keep) -> tuple[list[int], torch.Tensor]:
        gen = torch.Generator(device=self.lm.device).manual_seed(self.seed)
        pre = self.runner.run(request, reducer, keep, generator=gen)
        first = pre.logits[0].float().log_softmax(-1)
        eos = getattr(self.lm.tokenizer, "eos_token_id", None)
        ids = [int(pre.logits[0].argmax())]
        if self.max_new > 1 and ids[0] != eos:
            more = self.runner.decode(pre, self.max_new, eos)[0].tolist()[1:]
            for t in more:
                if t == eos:
                    break
                ids.append(t)
        if eos is not None and ids and ids[-1] == eos:
            ids = ids[:-1]
        return ids, first

    def text(self, ids: list[int]) -> str:
        if self.lm.tokenizer is None:
            return " ".join(map(str, ids))
        return self.lm.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def reference(self, sample: Sample, request):
        if sample.sample_id not in self._reference:
            self._reference[sample.sample_id] = self.generate(request, None, None)
        return self._reference[sample.sample_id]

    def evaluate(self, sample: Sample, reducer, keep: int, fidelity: bool = True) -> dict:
        request = self._request(sample)
        ids, logp = self.generate(request, reducer, keep)
        pred = self.text(ids)
        row = {"prediction": pred, "score": score(sample, pred)}
        if fidelity:
            ref_ids, ref_logp = self.reference(sample, request)
            row["kl_first_token"] = float(torch.sum(ref_logp.exp() * (ref_logp - logp)))
            row["top1_agree"] = float(int(ref_logp.argmax()) == int(logp.argmax()))
            row["answer_agree"] = float(ref_ids == ids)
            row["reference_prediction"] = self.text(ref_ids)
        return row


def _identity(row) -> tuple:
    return (row.get("benchmark"), row.get("model"), row.get("reducer"), row.get("keep"), row.get("sample_id"))


def sample_row(ev: Evaluator, base: dict, s: Sample, reducer, keep: int, fidelity: bool) -> dict:
    """One sample's row; a failure (e.g. a missing image) is recorded in it, not raised."""
    row = {**base, "sample_id": s.sample_id, "metric": s.metric, "answers": s.answers, "status": "ok"}
    if s.metric == "mme":
        row["subtask"], row["image"] = s.extra["subtask"], s.extra["image_id"]
    try:
        row.update(ev.evaluate(s, reducer, keep, fidelity))
    except Exception as e:
        row.update(status="failed", error=f"{type(e).__name__}: {e}")
    return row


def eval_base(lm: LoadedModel, benchmark: str, reducer_name: str, reducer, keep: int) -> dict:
    return {"schema_version": SCHEMA_VERSION, "kind": "eval", "benchmark": benchmark, "model": lm.source,
            "spec": lm.spec.key, "gpu": "cpu" if lm.device.type == "cpu" else torch.cuda.get_device_name(lm.device),
            "reducer": reducer_name, "keep": keep, "visual_tokens": lm.visual_tokens,
            "hook": "in-llm" if is_in_llm(reducer) else "post-projector"}


def run_eval(lm: LoadedModel, benchmark: str, samples: list[Sample], reducer_name: str, keep: int, out,
             *, limit: int | None = None, fidelity: bool = True, max_new_tokens: int = 8, seed: int = 0,
             reducer_params: dict | None = None, progress: bool = True, evaluator: Evaluator | None = None) -> dict:
    """Evaluate (or resume) one (benchmark, reducer, keep) into the JSON Lines file ``out``."""
    reducer = None if reducer_name == "none" else get_reducer(reducer_name, **(reducer_params or {}))
    if reducer_name == "none":
        keep = lm.visual_tokens
    if not 1 <= keep <= lm.visual_tokens:
        raise ValueError(f"keep = {keep} is out of range; allowed: 1..{lm.visual_tokens} visual tokens")
    samples = samples[:limit] if limit else samples
    done = set()
    if Path(out).exists():
        done = {_identity(r) for r in read_rows(out) if r.get("kind") == "eval" and r.get("status") == "ok"
                and not r.get("summary")}
    ev = evaluator or Evaluator(lm, max_new_tokens, seed)
    base = eval_base(lm, benchmark, reducer_name, reducer, keep)
    bar = None
    todo = [s for s in samples if (benchmark, lm.source, reducer_name, keep, s.sample_id) not in done]
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), unit="sample", desc=f"eval {benchmark} {reducer_name}@{keep}", dynamic_ncols=True)
    try:
        for s in todo:
            append_rows(out, [sample_row(ev, base, s, reducer, keep, fidelity)])
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
    summary = summarize_eval(out, benchmark, lm.source, reducer_name, keep, {s.sample_id for s in samples})
    append_rows(out, [{**base, **summary}])
    return summary


def summarize_eval(out, benchmark, model, reducer, keep, sample_ids: set[str] | None = None) -> dict:
    rows = [r for r in read_rows(out) if r.get("kind") == "eval" and not r.get("summary")
            and (r["benchmark"], r["model"], r["reducer"], r["keep"]) == (benchmark, model, reducer, keep)
            and (sample_ids is None or r["sample_id"] in sample_ids)]
    latest = {r["sample_id"]: r for r in rows}  # a retried sample's last row wins
    ok = [r for r in latest.values() if r["status"] == "ok"]
    failed = [r for r in latest.values() if r["status"] != "ok"]
    s = {"summary": True, "status": "ok" if ok else "failed", "n": len(ok), "n_failed": len(failed)}
    if failed:
        s["failed_examples"] = [f"{r['sample_id']}: {r.get('error')}" for r in failed[:3]]
    if not ok:
        return s
    s["accuracy"] = sum(r["score"] for r in ok) / len(ok)
    metric = ok[0]["metric"]
    if metric == "pope":
        s["pope"] = pope_metrics([r["prediction"] for r in ok], [r["answers"][0] for r in ok])
        s["accuracy"] = s["pope"]["accuracy"]
    if metric == "mme":
        s["mme"] = mme_scores([{"subtask": r["subtask"], "image": r["image"], "prediction": r["prediction"],
                                "answer": r["answers"][0]} for r in ok])
        s["mme_total"] = s["mme"]["total"]
    for k in ("kl_first_token", "top1_agree", "answer_agree"):
        vals = [r[k] for r in ok if k in r]
        if vals:
            s[k] = sum(vals) / len(vals)
    return s
