"""Prompts and requests: the LLaVA-1.5 template, synthetic prompts for models without a
tokenizer, and left-padded batches with one image placeholder run per sample."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .loading import LoadedModel


class RunnerError(ValueError):
    """A request the runner cannot serve."""


@dataclass
class Request:
    """One batch of prompts, each with one image placeholder run of ``visual_tokens`` ids."""

    input_ids: torch.Tensor       # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    pixel_values: torch.Tensor    # [B, 3, H, W]
    image_token_id: int

    @property
    def image_mask(self) -> torch.Tensor:
        return self.input_ids == self.image_token_id


@dataclass
class Prefill:
    logits: torch.Tensor               # [B, V] logits of the last position
    cache: object                      # the KV cache (whatever the model returned)
    next_position: torch.Tensor        # [B] position id of the next token
    attention_mask: torch.Tensor | None  # [B, L'] mask of what is cached (None: unpadded)
    llm_tokens: int                    # sequence length the LLM prefilled (longest sample)
    extra: dict = field(default_factory=dict)


def synthetic_prompt(lm: LoadedModel, text_tokens: int, batch: int = 1, seed: int = 0) -> list[list[int]]:
    """Prompt ids for a model without a tokenizer: BOS, a few tokens, the image run, the rest.

    Timing depends on the count, not the ids; ids are seeded and never the image token.
    """
    if text_tokens < 2:
        raise RunnerError(f"text_tokens = {text_tokens} is out of range; allowed: >= 2 (BOS + at least one)")
    vocab = lm.spec.llm.vocab_size
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        ids = torch.randint(3, vocab - 1, (text_tokens,), generator=g)
        ids[ids == lm.image_token_id] = 3
        ids[0] = 1
        prefix = min(5, text_tokens - 1)
        out.append(ids[:prefix].tolist() + [lm.image_token_id] * lm.visual_tokens + ids[prefix:].tolist())
    return out


def template_prompt(lm: LoadedModel, question: str) -> list[int]:
    """LLaVA-1.5 conversation template, tokenised, with the image run expanded."""
    if lm.tokenizer is None:
        raise RunnerError("this model has no tokenizer; use a checkpoint folder with one, or a synthetic prompt")
    tok = lm.tokenizer
    before = tok("USER: ", add_special_tokens=True)["input_ids"]
    after = tok("\n" + question + " ASSISTANT:", add_special_tokens=False)["input_ids"]
    return before + [lm.image_token_id] * lm.visual_tokens + after


def make_request(lm: LoadedModel, prompts: list[list[int]], pixel_values: torch.Tensor) -> Request:
    """Left-pad prompts into a batch (generation pads on the left)."""
    if len(prompts) != pixel_values.shape[0]:
        raise RunnerError(f"{len(prompts)} prompts but {pixel_values.shape[0]} images")
    for p in prompts:
        n_img = sum(1 for t in p if t == lm.image_token_id)
        if n_img != lm.visual_tokens:
            raise RunnerError(f"a prompt has {n_img} image placeholders; expected one run of {lm.visual_tokens}")
    length = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = torch.tensor(p)
        mask[i, length - len(p):] = 1
    return Request(ids.to(lm.device), mask.to(lm.device), pixel_values.to(lm.device, lm.dtype), lm.image_token_id)
