"""vlm.compress: a transformers LLaVA patched in place, its own generate and forward reduced.

Every registered reducer, on the shipped tiny model (transformers' own AutoProcessor) and on the
``tiny`` random-weight preset: ``generate`` equals the suite's reduced greedy generation
(``Runner.forward`` + ``Runner.decode``) token for token, a padded batch of two included (in-LLM
reducers: equal prompt lengths); ``keep`` = all equals the unpatched model; ``restore`` gives it
back; ``model(**inputs)`` logits equal the suite's reduced prefill.
"""

from pathlib import Path

import pytest
import torch

import reducers
import vlm
from vlm import CompressError, Runner, build_preset, load_folder, make_request, synthetic_prompt, template_prompt

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "llava-tiny-easyvqa"
KEEP = 16
STEPS = 5
QUESTIONS = ("What shape is in the image?", "Is there a blue shape?")  # 8 and 6 words: padded batch
SAME_LENGTH = ("What color is in the image?", "What shape is in the image?")  # in-LLM: equal lengths


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoProcessor
    return load_folder(SHIPPED), AutoProcessor.from_pretrained(SHIPPED)


@pytest.fixture(scope="module")
def preset():
    return build_preset("tiny", seed=0)  # a model of its own: compress patches it in place


@pytest.fixture(scope="module")
def shapes():
    from easy_vqa import get_test_image_paths
    from PIL import Image
    paths = get_test_image_paths()
    return [Image.open(paths[i]).convert("RGB") for i in (0, 1)]


def _processor_inputs(processor, images, questions):
    processor.tokenizer.padding_side = "left"
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                           add_generation_prompt=True) for q in questions]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def _inputs(which, shipped, preset, shapes, photos, in_llm):
    """(loaded model, transformers inputs) for the shipped model or the preset."""
    if which == "shipped":
        lm, processor = shipped
        return lm, dict(_processor_inputs(processor, shapes, SAME_LENGTH if in_llm else QUESTIONS))
    prompts = synthetic_prompt(preset, 20, batch=2)
    if not in_llm:
        prompts[1] = prompts[1][3:]  # a shorter prompt: left padding
    req = make_request(preset, prompts, preset.preprocess([im for _, im in photos]))
    return preset, {"input_ids": req.input_ids, "attention_mask": req.attention_mask, "pixel_values": req.pixel_values}


def _request(lm, inputs):
    return vlm.Request(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], lm.image_token_id)


def _until_eos(ids: torch.Tensor, eos) -> list[list[int]]:
    out = []
    for row in ids.tolist():
        out.append(row[:row.index(eos) + 1] if eos is not None and eos in row else row)
    return out


def _generate(model, inputs, steps=STEPS):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:]


def _suite(lm, inputs, reducer, keep, steps=STEPS):
    r = Runner(lm)
    pre = r.forward(_request(lm, inputs), reducer, keep, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return r.decode(pre, steps)


@pytest.mark.parametrize("which", ["shipped", "preset"])
@pytest.mark.parametrize("name", reducers.available())
def test_generate_equals_the_suites_reduced_greedy_generation(name, which, shipped, preset, shapes, photos):
    red = reducers.get(name)
    lm, inputs = _inputs(which, shipped, preset, shapes, photos, vlm.is_in_llm(red))
    eos = lm.model.generation_config.eos_token_id
    want = _suite(lm, inputs, red, KEEP)
    vlm.compress(lm.model, name, keep=KEEP)
    try:
        got = _generate(lm.model, inputs)
    finally:
        vlm.restore(lm.model)
    assert _until_eos(got, eos) == _until_eos(want, eos)
    assert (inputs["attention_mask"] == 0).any() != vlm.is_in_llm(red)  # padded unless in-LLM


@pytest.mark.parametrize("which", ["shipped", "preset"])
def test_keep_all_is_exactly_the_unpatched_model_and_restore_gives_it_back(which, shipped, preset, shapes, photos):
    lm, inputs = _inputs(which, shipped, preset, shapes, photos, in_llm=False)
    model = lm.model
    ref = _generate(model, inputs)
    with torch.no_grad():
        ref_logits = model(**inputs, logits_to_keep=1).logits
    for name in reducers.available():
        vlm.compress(model, name, keep=lm.visual_tokens)
        assert torch.equal(_generate(model, inputs), ref), name
    vlm.compress(model, "random", keep=4)
    assert not torch.allclose(model(**inputs, logits_to_keep=1).logits, ref_logits, atol=1e-3)
    assert vlm.restore(model) is model and "forward" not in vars(model) and vlm.compression(model) is None
    assert torch.equal(_generate(model, inputs), ref)
    with torch.no_grad():
        assert torch.equal(model(**inputs, logits_to_keep=1).logits, ref_logits)
    vlm.restore(model)  # restoring an unpatched model changes nothing


@pytest.mark.parametrize("name", ["spatial", "visionzip", "fastv"])
def test_forward_logits_are_the_suites_reduced_prefill_logits(name, shipped, shapes):
    lm, processor = shipped
    in_llm = vlm.is_in_llm(reducers.get(name))
    inputs = dict(_processor_inputs(processor, shapes, SAME_LENGTH if in_llm else QUESTIONS))
    r = Runner(lm)
    want = r.forward(_request(lm, inputs), reducers.get(name), KEEP, all_logits=not in_llm).logits
    vlm.compress(lm.model, name, keep=KEEP)
    try:
        got = lm.model(**inputs).logits
        last = lm.model(**inputs, logits_to_keep=1).logits
    finally:
        vlm.restore(lm.model)
    if in_llm:  # the decoder drops tokens inside: the last position's logits
        want = want[:, None]
    assert got.shape[1] == (1 if in_llm else inputs["input_ids"].shape[1] - lm.visual_tokens + KEEP)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, want[:, -1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["divprune", "sparsevlm"])
def test_several_tokens_after_the_prefill_in_one_call(name, shipped, shapes):
    """What a log-likelihood needs: the continuation's logits from one call on the reduced cache."""
    lm, processor = shipped
    inputs = dict(_processor_inputs(processor, shapes[:1], SAME_LENGTH[:1]))
    cont = torch.tensor([[9, 10, 11]])
    model = vlm.compress(lm.model, name, keep=KEEP)
    try:
        pre = model(**inputs, use_cache=True, logits_to_keep=1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(cont)], 1)
        chunk = model(input_ids=cont, attention_mask=mask, past_key_values=pre.past_key_values).logits
        pre2 = model(**inputs, use_cache=True, logits_to_keep=1)
        steps = [model(input_ids=cont[:, i:i + 1], attention_mask=mask[:, :mask.shape[1] - 2 + i],
                       past_key_values=pre2.past_key_values).logits for i in range(3)]
    finally:
        vlm.restore(model)
    assert chunk.shape == (1, 3, lm.spec.llm.vocab_size)
    torch.testing.assert_close(chunk, torch.cat(steps, 1), atol=1e-5, rtol=1e-5)


def test_sparsevlm_generate_decodes_each_layer_after_its_own_cache(shipped, shapes):
    """The compressed model's generate gives each layer's new token the next id after that
    layer's own cache (SparseVLM renumbers the kept rows, so the layers' caches differ), as
    ``Runner.decode`` does (tests/vlm/test_forward.py); greedy tokens alone would not show it."""
    lm, processor = shipped
    inputs = dict(_processor_inputs(processor, shapes[:1], SAME_LENGTH[:1]))
    model = vlm.compress(lm.model, "sparsevlm", keep=KEEP)
    layers = model.model.language_model.layers
    seen = {}
    hooks = [layer.register_forward_hook(
        lambda m, a, kw, out, i=i: seen.setdefault(i, []).append(int(kw["position_ids"][0, -1])), with_kwargs=True)
        for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                                 return_dict_in_generate=True)
    finally:
        for h in hooks:
            h.remove()
        vlm.restore(model)
    lengths = [out.past_key_values.get_seq_length(i) for i in range(len(layers))]
    assert lengths[0] > lengths[-1]  # the early layers cached every token
    for i, n in enumerate(lengths):  # the prefill's last row, then two decode steps
        assert seen[i] == [n - 3, n - 2, n - 1], (i, n, seen[i])


def test_refusals_are_one_line_and_name_what_is_supported(shipped, shapes):
    from transformers import LlamaConfig, LlamaForCausalLM
    lm, processor = shipped
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=64))
    with pytest.raises(CompressError, match=r"does not support transformers\.models\.llama\.modeling_llama\."
                                            r"LlamaForCausalLM; supported: transformers' LlavaForConditionalGeneration"):
        vlm.compress(llama, "visionzip", keep=16)
    with pytest.raises(CompressError, match="keep = 65 is out of range; allowed: 1..64"):
        vlm.compress(lm.model, "visionzip", keep=65)
    with pytest.raises(CompressError, match="unknown reducer 'visonzip'; closest: visionzip"):
        vlm.compress(lm.model, "visonzip", keep=16)
    with pytest.raises(CompressError, match="has no parameter"):
        vlm.compress(lm.model, "visionzip", keep=16, dominant=54)
    with pytest.raises(CompressError, match="layer 9 is out of range for a 4-layer LLM"):
        vlm.compress(lm.model, "fastv", keep=16, layer=9)
    assert vlm.compression(lm.model) is None  # nothing patched by a refused call
    vlm.compress(lm.model, "random", keep=8)
    with pytest.raises(CompressError, match="keep = 0 is out of range"):
        vlm.compress(lm.model, "spatial", keep=0)
    assert vlm.compression(lm.model).name == "random"  # a refused re-compression leaves the patch as it was
    vlm.restore(lm.model)
    padded = dict(_processor_inputs(processor, shapes, QUESTIONS))
    vlm.compress(lm.model, "fastv", keep=16)
    try:
        with pytest.raises(CompressError, match=r"^fastv runs inside the LLM and needs prompts of equal length[^\n]*$"):
            _generate(lm.model, padded)
        ids = padded["input_ids"].clone()
        ids[0, ids[0] == lm.image_token_id] = 5  # the processor's expansion undone
        with pytest.raises(CompressError, match="prompt 0 has 0 image placeholder"):
            lm.model(**dict(padded, input_ids=ids))
    finally:
        vlm.restore(lm.model)


def test_compressing_a_compressed_model_recompresses_cleanly(shipped, shapes):
    lm, processor = shipped
    inputs = dict(_processor_inputs(processor, shapes, QUESTIONS))
    model = vlm.compress(lm.model, "random", keep=4)
    vlm.compress(model, "spatial", keep=KEEP)
    try:
        info = vlm.compression(model).describe()
        got = _generate(model, inputs)
    finally:
        vlm.restore(model)
    assert info["reducer"] == "spatial" and info["keep"] == KEEP and "forward" not in vars(model)
    eos = model.generation_config.eos_token_id
    assert _until_eos(got, eos) == _until_eos(_suite(lm, inputs, reducers.get("spatial"), KEEP), eos)


def test_autoprocessor_matches_the_suites_preprocessing_and_prompt(shipped, shapes, photos):
    lm, processor = shipped
    images = shapes + [im for _, im in photos]  # 64x64 shapes and larger photographs
    q = QUESTIONS[0]
    out = _processor_inputs(processor, images, [q] * len(images))
    assert type(processor).__name__ == "LlavaProcessor"
    torch.testing.assert_close(out["pixel_values"], lm.preprocess(images), atol=1e-5, rtol=0)
    assert out["input_ids"][0].tolist() == template_prompt(lm, q)
    assert int((out["input_ids"][0] == lm.image_token_id).sum()) == lm.visual_tokens
