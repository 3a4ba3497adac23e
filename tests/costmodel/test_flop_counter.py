"""The corrected mode's matmul FLOPs equal torch.utils.flop_counter's count of a real forward.

The LLaMA model is built on the meta device (no weights allocated) with EAGER attention: on
the CPU, FlopCounterMode does not count the fused SDPA kernel, while eager attention is two
batched matmuls it does count. All-token logits, as a plain forward computes.
"""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import costmodel as cm
from costmodel.ops import MATMUL_OPS

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("model", ["llama2-7b", "llama3-8b"])
def test_matmul_flops_equal_flop_counter(model):
    spec = dataclasses.replace(cm.load_model(model), num_hidden_layers=2)  # fewer layers, same per-layer ops
    cfg = transformers.LlamaConfig(
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, vocab_size=spec.vocab_size)
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model_ = transformers.LlamaForCausalLM(cfg)
    for seq_len in (128, 640):
        ids = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
        mask = torch.ones(1, seq_len, dtype=torch.long, device="meta")  # avoids a data-dependent check
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model_(input_ids=ids, attention_mask=mask, use_cache=False)
        pred = cm.predict(spec, "h100-sxm", visual_tokens=seq_len - 32, text_tokens=32,
                          options=cm.Options(all_logits=True))
        analytic = sum(o.flops * o.layers for o in pred.baseline.per_op if o.name in MATMUL_OPS)
        assert analytic == counter.get_total_flops(), seq_len
