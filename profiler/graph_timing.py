"""The GPU time of a phase without the framework's launch overhead: eager vs CUDA-graph replay.

At batch 1 a transformers forward issues its kernels from Python one by one; on a fast GPU the
host then decides the time and removing tokens saves little (``vtc profile`` measures that,
the latency a user of eager transformers pays). Replaying the same forward from a CUDA graph
removes the launch overhead and leaves the GPU's own time, the quantity a roofline predicts and
what a serving engine that captures graphs (vLLM, SGLang, TensorRT-LLM) pays.

:func:`time_prefill` times the LLM's prefill (decoder stack + the last position's logits, no
KV cache written) on random embeddings of a given length and batch, and the vision tower on a
batch of images, both ways. Rows are ``kind: graph-timing``.
"""

from __future__ import annotations

import gc

import torch

import rows as R
from vlm import LoadedModel

from .timing import cuda_graph_samples, summarize, wall_samples


def _parts(lm: LoadedModel):
    inner = lm.model.model
    return inner.language_model, lm.model.lm_head, inner.vision_tower


def time_prefill(lm: LoadedModel, *, keeps: list[int], batches: list[int], text_tokens: int = 64, warmup: int = 3,
                 reps: int = 20, vision: bool = True, gpu: str | None = None) -> list[dict]:
    """One row per (part, batch, keep): eager and graph-replay seconds (median, with stats)."""
    decoder, head, tower = _parts(lm)
    dev, dt = lm.device, lm.dtype
    hidden = lm.spec.llm.hidden_size
    g = torch.Generator(device=dev).manual_seed(lm.seed)
    rows = []

    def measure(part: str, batch: int, keep: int | None, tokens: int, fn) -> dict:
        row = {"model": lm.source, "spec": lm.spec.key,
               "gpu": gpu or (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"),
               "part": part, "batch": batch, "keep": keep, "visual_tokens": lm.visual_tokens, "tokens": tokens,
               "text_tokens": text_tokens if part == "llm-prefill" else None,
               "dtype": str(dt).replace("torch.", ""), "attn_implementation": lm.attn_implementation,
               "warmup": warmup, "reps": reps}
        try:
            with torch.inference_mode():
                eager = wall_samples(fn, dev, warmup, reps)
                row["eager_stats"] = summarize(eager)
                row["eager_time_s"] = row["eager_stats"]["median"]
                graph, _, reason = cuda_graph_samples(fn, dev, warmup, reps)
            if reason:
                row["graph_time_s"] = None
                row["graph_time_s_unavailable_reason"] = reason
            else:
                row["graph_stats"] = summarize(graph)
                row["graph_time_s"] = row["graph_stats"]["median"]
                row["launch_overhead_s"] = row["eager_time_s"] - row["graph_time_s"]
        except Exception as e:  # noqa: BLE001 - one shape's failure (OOM, ...) must not stop the others
            row.update({"status": "oom" if isinstance(e, torch.OutOfMemoryError) else "failed",
                        "error": f"{type(e).__name__}: {e}"[:500]})
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return R.graph_timing_row(**row)

    for batch in batches:
        if vision:
            size = lm.spec.vision.image_size
            pv = torch.randn(batch, 3, size, size, generator=g, device=dev).to(dt)
            rows.append(measure("vision", batch, None, lm.spec.vision.tokens,
                                lambda pv=pv: tower(pv, output_hidden_states=True).hidden_states[-2]))
        for keep in keeps:
            tokens = keep + text_tokens
            x = (torch.randn(batch, tokens, hidden, generator=g, device=dev) * 0.02).to(dt)

            def prefill(x=x):
                # with a cache, as a serving prefill writes one; without one, transformers looks for
                # packed sequences in the position ids, a host sync that rules out a CUDA graph
                h = decoder(inputs_embeds=x, use_cache=True).last_hidden_state
                return head(h[:, -1])
            rows.append(measure("llm-prefill", batch, keep, tokens, prefill))
    return rows
