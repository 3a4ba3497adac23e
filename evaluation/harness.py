"""``vtc eval``: accuracy with a reducer, and fidelity to the unreduced model, sample by sample.

Every sample is answered by greedy generation from the reduced sequence (LLaVA-1.5 template,
the benchmark's answer prompt, short answers) through the forward path (:mod:`vlm`) and scored
by its benchmark's rule (:mod:`evaluation.tasks`). Label-free fidelity is measured against the
same model with every visual token on the same input: KL divergence and top-1 agreement of the
first generated token's distribution, and exact match of the greedy answers; it works on any
LLaVA, including random-weight presets. An image ablation (``blank``: a grey image; ``shuffle``:
another sample's image) measures what the model gets without looking. Rows are written as
samples finish and a rerun resumes (the identity includes the reducer's parameters and the
generation options); a summary row per condition closes the run, with n and a 95% CI.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

import reducers
import rows as R
from vlm import LoadedModel, Runner, load, make_request, read_image, synthetic_prompt, template_prompt

from .tasks import Sample, get_task

ABLATIONS = ("blank", "shuffle")


class EvalError(ValueError):
    pass


def wilson_ci(successes: float, n: int, z: float = 1.96) -> list[float] | None:
    """The Wilson score 95% interval of a proportion (scores may be fractional, as VQA accuracy)."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


@dataclass
class EvalOptions:
    max_new_tokens: int = 8
    fidelity: bool = True
    ablate_image: str | None = None  # None, "blank" or "shuffle"
    seed: int = 0
    reducer_params: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.ablate_image not in (None, *ABLATIONS):
            raise EvalError(f"--ablate-image {self.ablate_image!r} is not allowed; use one of {', '.join(ABLATIONS)}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise EvalError(f"max_new_tokens = {self.max_new_tokens!r} is not allowed; use an integer >= 1")

    def row_options(self) -> dict:
        return {"reducer_params": self.reducer_params, "max_new_tokens": self.max_new_tokens,
                "ablate_image": self.ablate_image, "fidelity": self.fidelity}


class Evaluator:
    def __init__(self, lm: LoadedModel, max_new_tokens: int = 8, seed: int = 0):
        self.lm, self.runner, self.max_new = lm, Runner(lm), max_new_tokens
        self.seed = seed
        self.last_kept_tokens = None  # visual tokens the LLM received in the last generate()
        self._reference: dict[str, tuple] = {}
        self._pixel_cache: dict[str, torch.Tensor] = {}

    def _pixels(self, sample: Sample, image_of: Sample | None = None, blank: bool = False):
        # every condition sees the same sample: read and preprocess it once
        src = image_of or sample
        key = ("blank:" if blank else "") + src.sample_id
        if key not in self._pixel_cache:
            if len(self._pixel_cache) > 4096:
                self._pixel_cache.clear()
            image = src.image if isinstance(src.image, Image.Image) else read_image(src.image)
            if blank:
                image = Image.new("RGB", image.size, (128, 128, 128))
            self._pixel_cache[key] = self.lm.preprocess([image])
        return self._pixel_cache[key]

    def request(self, sample: Sample, image_of: Sample | None = None, blank: bool = False):
        pv = self._pixels(sample, image_of, blank)
        if self.lm.tokenizer is not None:
            prompt = template_prompt(self.lm, sample.question)
        else:
            # a stable per-sample seed (str hash() differs between processes)
            prompt = synthetic_prompt(self.lm, 32, seed=zlib.crc32(sample.sample_id.encode()))[0]
        return make_request(self.lm, [prompt], pv)

    def generate(self, request, reducer, keep) -> tuple[list[int], torch.Tensor]:
        gen = torch.Generator(device=self.lm.device).manual_seed(self.seed)
        pre = self.runner.forward(request, reducer, keep, generator=gen)
        self.last_kept_tokens = pre.extra.get("kept_tokens")
        first = pre.logits[0].float().log_softmax(-1)
        eos = getattr(self.lm.tokenizer, "eos_token_id", None)
        ids = [int(pre.logits[0].argmax())]
        if self.max_new > 1 and ids[0] != eos:
            with torch.inference_mode():
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

    def evaluate(self, task, sample: Sample, reducer, keep: int, fidelity: bool = True,
                 image_of: Sample | None = None, blank: bool = False) -> dict:
        request = self.request(sample, image_of, blank)
        ids, logp = self.generate(request, reducer, keep)
        pred = self.text(ids)
        # what the LLM really received: a method with its own count (PruMerge+'s adaptive budget,
        # DART's official budget, SparseVLM's recycled tokens) differs from the asked ``keep``
        row = {"prediction": pred, "score": task.score(sample, pred), "kept_tokens": self.last_kept_tokens}
        if fidelity:
            ref_ids, ref_logp = self.reference(sample, self.request(sample))
            row["kl_first_token"] = max(0.0, float(torch.sum(ref_logp.exp() * (ref_logp - logp))))
            row["top1_agree"] = float(int(ref_logp.argmax()) == int(logp.argmax()))
            row["answer_agree"] = float(ref_ids == ids)
            row["reference_prediction"] = self.text(ref_ids)
        return row


@dataclass
class Condition:
    """One (benchmark, reducer, keep) with its options: what a unit of eval work runs."""

    benchmark: str
    reducer: str
    keep: int
    options: EvalOptions

    def reducer_object(self):
        return None if self.reducer == "none" else reducers.get(self.reducer, **self.options.reducer_params)


def base_fields(lm_source: str, spec: str | None, gpu: str | None, visual_tokens: int, cond: Condition) -> dict:
    red = cond.reducer_object()
    return {"benchmark": get_task(cond.benchmark).name, "model": lm_source, "spec": spec, "gpu": gpu,
            "reducer": cond.reducer, "keep": cond.keep, "visual_tokens": visual_tokens,
            "hook": getattr(red, "hook", "post-projector") if red is not None else "post-projector",
            "options": cond.options.row_options()}


def sample_row(ev: Evaluator, base: dict, cond: Condition, s: Sample, shuffle_of: Sample | None) -> dict:
    """One sample's row; a failure (e.g. a missing image) is recorded in it, not raised."""
    extra = {"sample_id": s.sample_id, "metric": s.metric, "answers": s.answers}
    if s.metric == "mme":
        extra.update(subtask=s.extra["subtask"], image=s.extra["image_id"])
    if s.extra.get("kind"):
        extra["question_kind"] = s.extra["kind"]
    try:
        result = ev.evaluate(get_task(cond.benchmark), s, cond.reducer_object(), cond.keep, cond.options.fidelity,
                             image_of=shuffle_of, blank=cond.options.ablate_image == "blank")
        return R.eval_row(**base, **extra, **result)
    except Exception as e:
        return R.eval_row(**base, **extra, status="failed", error=f"{type(e).__name__}: {e}")


def shuffled_partner(samples: list[Sample], i: int) -> Sample:
    """Another sample's image for the shuffle ablation: a fixed derangement (the next sample)."""
    return samples[(i + 1) % len(samples)]


class EvalWorker:
    """Loads the model once (or takes ``lm``/``evaluator``); a unit is (condition, [(index, sample)], samples)."""

    def __init__(self, config: dict, lm: LoadedModel | None = None, evaluator: Evaluator | None = None,
                 progress=None):
        self.lm = lm or load(preset=config.get("preset"), model_path=config.get("model_path"),
                             device=config.get("device", "cpu"), dtype=config.get("dtype"), seed=config.get("seed", 0))
        self.ev = evaluator or Evaluator(self.lm, config.get("max_new_tokens", 8), config.get("seed", 0))
        self.progress = progress

    def describe(self) -> dict:
        return _describe(self.lm)

    def run(self, unit):
        cond, indexed, all_samples = unit
        d = self.describe()
        base = base_fields(d["source"], d["spec"], d["gpu"], d["visual_tokens"], cond)
        for i, s in indexed:
            partner = shuffled_partner(all_samples, i) if cond.options.ablate_image == "shuffle" else None
            yield [sample_row(self.ev, base, cond, s, partner)]
            if self.progress:
                self.progress(1)

    def close(self):
        pass


def summarize_eval(out, base: dict, sample_ids: set[str] | None = None) -> dict:
    """The summary of one condition's sample rows in ``out`` (the latest row per sample)."""
    ident = {k: base[k] for k in ("benchmark", "model", "reducer", "keep")}
    rows = [r for r in R.read_rows(out) if r.get("kind") == "eval" and not r.get("summary")
            and all(r.get(k) == v for k, v in ident.items()) and (r.get("options") or {}) == base["options"]
            and (sample_ids is None or r["sample_id"] in sample_ids)]
    latest = {r["sample_id"]: r for r in rows}  # a retried sample's last row wins
    ok = [r for r in latest.values() if r["status"] == "ok"]
    failed = [r for r in latest.values() if r["status"] != "ok"]
    s = {"summary": True, "status": "ok" if ok else "failed", "n": len(ok), "n_failed": len(failed),
         "sample_ids_hash": zlib.crc32(",".join(sorted(latest)).encode())}
    if failed:
        s["failed_examples"] = [f"{r['sample_id']}: {r.get('error')}" for r in failed[:3]]
    if not ok:
        return s
    s.update(get_task(base["benchmark"]).aggregate(ok))
    s["accuracy_ci95"] = wilson_ci(sum(r["score"] for r in ok), len(ok))
    kinds = sorted({r["question_kind"] for r in ok if r.get("question_kind")})
    if kinds:
        s["by_kind"] = {k: {"n": len(g), "accuracy": sum(r["score"] for r in g) / len(g),
                            "accuracy_ci95": wilson_ci(sum(r["score"] for r in g), len(g))}
                        for k in kinds for g in [[r for r in ok if r.get("question_kind") == k]]}
    for k in ("kl_first_token", "top1_agree", "answer_agree", "kept_tokens"):
        vals = [r[k] for r in ok if r.get(k) is not None]
        if vals:
            s[k] = sum(vals) / len(vals)
    return s


def _describe(lm: LoadedModel) -> dict:
    return {"source": lm.source, "spec": lm.spec.key, "visual_tokens": lm.visual_tokens,
            "gpu": "cpu" if lm.device.type == "cpu" else torch.cuda.get_device_name(lm.device)}


def run_eval(lm: LoadedModel | None, benchmark: str, samples: list[Sample], reducer_name: str, keep: int | None,
             out, *, limit: int | None = None, options: EvalOptions | None = None, progress: bool = True,
             evaluator: Evaluator | None = None, launcher=None, config: dict | None = None) -> dict:
    """Evaluate (or resume) one (benchmark, reducer, keep) into the JSON Lines file ``out``.

    In this process on ``lm``; or, with ``launcher`` (a :mod:`profiler.launchers` launcher) and
    ``config`` (how a worker loads the model: preset/model_path/device/dtype/seed), on its workers."""
    options = options or EvalOptions()
    options.check()
    d = _describe(lm) if lm is not None else launcher.describe(EvalWorker, config or {})
    n_visual = d["visual_tokens"]
    if reducer_name != "none" and keep is None:
        raise EvalError(f"reducer {reducer_name!r} needs a budget (--keep N, 1..{n_visual})")
    keep = n_visual if reducer_name == "none" else keep
    if not 1 <= keep <= n_visual:
        raise EvalError(f"keep = {keep} is out of range; allowed: 1..{n_visual} visual tokens")
    cond = Condition(benchmark, reducer_name, keep, options)
    cond.reducer_object()  # a bad reducer name or parameter fails here, before any work
    samples = samples[:limit] if limit else samples
    base = base_fields(d["source"], d["spec"], d["gpu"], n_visual, cond)
    probe = R.eval_row(**base, sample_id="")
    done = set()
    if Path(out).exists():
        done = {R.identity(r) for r in R.read_rows(out) if r.get("kind") == "eval" and r.get("status") == "ok"}
    todo = [(i, s) for i, s in enumerate(samples) if R.identity({**probe, "sample_id": s.sample_id}) not in done]
    units = [(cond, todo[i:i + 32], samples) for i in range(0, len(todo), 32)]
    _run_units(units, out, base, lm, evaluator, launcher, config, progress and bool(todo),
               f"eval {benchmark} {reducer_name}@{keep}", len(todo))
    summary = summarize_eval(out, base, {s.sample_id for s in samples})
    R.append_rows(out, [R.eval_row(**base, **summary)])
    return summary


def _run_units(units, out, base, lm, evaluator, launcher, config, progress: bool, desc: str, total: int) -> None:
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total if launcher is None else len(units), unit="sample" if launcher is None else "shard",
                   desc=desc, dynamic_ncols=True)
    try:
        if launcher is None:  # in this process: one worker on the loaded model, rows written as they come
            worker = EvalWorker({}, lm=lm, evaluator=evaluator, progress=bar.update if bar else None)
            for unit in units:
                for rs in worker.run(unit):
                    R.append_rows(out, rs)
        else:  # a launcher of profiler.launchers (e.g. Ray), given by the caller
            launcher.map(EvalWorker, config or {}, units, lambda rs: R.append_rows(out, rs),
                         lambda u, why: [R.eval_row(**base, sample_id=s.sample_id, status="failed", error=why)
                                         for _, s in u[1]], progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
