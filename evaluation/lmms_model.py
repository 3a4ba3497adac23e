"""The lmms-eval model ``vtc_llava``: a LLaVA compressed by ``vlm.compress``, evaluated by lmms-eval.

    pip install -e '.[lmms-eval]'
    lmms-eval --model vtc_llava --model_args pretrained=DIR,reducer=visionzip,keep=64 --tasks pope

``pretrained`` is a LLaVA folder or hub name (transformers' ``LlavaForConditionalGeneration`` and
``AutoProcessor``); ``reducer`` any name of ``vtc reducers`` (or ``none``), its parameters as
``reducer.<param>=value``; ``keep`` the visual tokens per image (required with a reducer, so the
results name it); ``device``, ``dtype``, ``attn_implementation`` (``sdpa``), ``batch_size``,
``seed``, ``max_new_tokens`` (default 1024; a task's ``max_new_tokens`` wins). lmms-eval writes the
``--model_args`` string into its results' ``config.model_args``, from which
``vtc eval --import-lmms-eval`` reads ``reducer``, ``keep`` and ``reducer.<param>``: no flags needed.

lmms-eval finds the model through the entry-point group ``lmms_eval.models``
(:mod:`evaluation.lmms_plugin`). This module imports lmms-eval; nothing in the suite imports it.
"""

from __future__ import annotations

import torch

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
except ImportError as e:  # pragma: no cover - the extra is absent
    raise ImportError("the vtc_llava lmms-eval model needs lmms-eval: pip install -e '.[lmms-eval]'") from e

import vlm
from vlm.processor import load_pretrained

IMAGE = "<image>"
#: arguments lmms-eval itself may pass (``create_from_arg_string``'s additional config)
IGNORED = ("max_batch_size",)


class VtcLlava(lmms):
    """``generate_until`` and ``loglikelihood`` on a compressed transformers LLaVA."""

    is_simple = True

    def __init__(self, pretrained: str, reducer: str = "none", keep: int | None = None, device: str | None = None,
                 dtype: str | None = None, batch_size: int | str = 1, attn_implementation: str = "sdpa",
                 seed: int = 0, max_new_tokens: int = 1024, **kwargs) -> None:
        super().__init__()
        params = {k[len("reducer."):]: v for k, v in kwargs.items() if k.startswith("reducer.")}
        unknown = sorted(k for k in kwargs if not k.startswith("reducer.") and k not in IGNORED)
        if unknown:
            raise ValueError(f"vtc_llava: unknown model_args {', '.join(unknown)}; reducer parameters are "
                             "given as reducer.<param>=value")
        if reducer not in (None, "none") and keep is None:
            raise ValueError("vtc_llava: give keep=N with reducer=... (the results are attributed from model_args)")
        self.model, self.processor = load_pretrained(pretrained, device=device, dtype=dtype,
                                                     attn_implementation=attn_implementation)
        vlm.compress(self.model, reducer, keep, seed=int(seed), **params)
        self.tokenizer = self.processor.tokenizer
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.chat_template = None  # the processor's own template is used

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ------------------------------------------------------------------ prompts

    def prompt(self, context: str, n_images: int, continuation: str | None = None) -> str:
        """The model's conversation around ``context``, its images first unless it places them."""
        parts = [] if IMAGE in context else [{"type": "image"}] * n_images
        messages = [{"role": "user", "content": parts + [{"type": "text", "text": context}]}]
        if getattr(self.processor, "chat_template", None):
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:  # LLaVA-1.5's conversation
            text = f"USER: {(IMAGE + chr(10)) * len(parts)}{context} ASSISTANT:"
        return text if continuation is None else text + continuation

    def inputs(self, texts: list[str], images: list) -> dict:
        out = self.processor(images=images or None, text=texts, return_tensors="pt", padding=True)
        out = {k: v.to(self.device) for k, v in out.items()}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(self.model.dtype)
        return out

    def visuals(self, request: Instance) -> list:
        doc_to_visual, doc_id, task, split = request.args[2:6]
        if doc_to_visual is None:
            return []
        got = doc_to_visual(self.task_dict[task][split][doc_id])
        return [v for v in (got or []) if v is not None]

    # ------------------------------------------------------------------ lmms-eval's requests

    def generate_until(self, requests: list[Instance]) -> list[str]:
        out: list[str] = []
        for batch in self._batches(requests):
            out += self._generate(batch)
        return out

    def _batches(self, requests: list[Instance]):
        """Consecutive requests with the same generation settings, ``batch_size`` at most (one at a
        time for reducers inside the LLM, which need prompts of equal length)."""
        size = 1 if vlm.is_in_llm(vlm.compression(self.model).reducer) else max(1, self.batch_size)
        batch: list[Instance] = []
        for r in requests:
            if batch and (len(batch) == size or repr(r.args[1]) != repr(batch[0].args[1])):
                yield batch
                batch = []
            batch.append(r)
        if batch:
            yield batch

    def _generate(self, batch: list[Instance]) -> list[str]:
        gen = dict(batch[0].args[1] or {})
        until = gen.pop("until", None) or [self.tokenizer.decode([self.tokenizer.eos_token_id])]
        until = [until] if isinstance(until, str) else list(until)
        images = [self.visuals(r) for r in batch]
        if len({bool(v) for v in images}) > 1:  # text-only prompts beside prompts with images: one by one
            return [text for r in batch for text in self._generate([r])]
        texts = [self.prompt(r.args[0], len(v)) for r, v in zip(batch, images)]
        inputs = self.inputs(texts, [im for v in images for im in v])
        temperature = float(gen.get("temperature", 0) or 0)
        sample = {"do_sample": True, "temperature": temperature, "top_p": gen.get("top_p")} if temperature > 0 \
            else {"do_sample": False}
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=int(gen.get("max_new_tokens", self.max_new_tokens)),
                                      num_beams=int(gen.get("num_beams", 1) or 1), **sample,
                                      pad_token_id=eos if pad is None else pad, eos_token_id=eos)
        out = []
        for r, text in zip(batch, self.tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:],
                                                              skip_special_tokens=True)):
            for stop in until:
                text = text.split(stop)[0] if stop else text
            out.append(text)
            self.cache_hook.add_partial("generate_until", (r.args[0], batch[0].args[1]), text)
        return out

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Per request: the prompt prefilled (reduced), then the continuation's tokens in one call on
        the reduced cache; (sum of their log-probabilities, whether greedy decoding gives them)."""
        out = []
        for r in requests:
            context, target = r.args[0], r.args[1]
            doc = self.task_dict[r.args[4]][r.args[5]][r.args[3]] if not isinstance(target, str) else None
            continuation = target if isinstance(target, str) else target(doc)
            images = self.visuals(r)
            prompt = self.inputs([self.prompt(context, len(images))], images)
            full = self.inputs([self.prompt(context, len(images), continuation)], images)
            n = prompt["input_ids"].shape[1]
            cont = full["input_ids"][:, n:]
            if cont.shape[1] == 0:
                out.append((0.0, True))
                continue
            with torch.inference_mode():
                pre = self.model(**dict(prompt, input_ids=full["input_ids"][:, :n]), use_cache=True, logits_to_keep=1)
                rest = self.model(input_ids=cont, attention_mask=full["attention_mask"],
                                  past_key_values=pre.past_key_values, use_cache=True)
            logp = torch.cat([pre.logits[:, -1:], rest.logits[:, :-1]], 1).float().log_softmax(-1)
            out.append((float(logp.gather(-1, cont[..., None]).sum()), bool((logp.argmax(-1) == cont).all())))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), out[-1])
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        """Not supported, as in lmms-eval's own ``llava`` and ``llava_hf`` models (which raise the same):
        tasks that converse over several rounds cannot be run with ``vtc_llava``."""
        raise NotImplementedError("vtc_llava answers single-round requests (generate_until, loglikelihood); "
                                  "multi-round tasks are not supported, as in lmms-eval's own llava models")
