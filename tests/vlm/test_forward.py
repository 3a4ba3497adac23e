import json

import pytest
import torch

from vlm.loading import ModelError, build_preset, check_memory, load_folder
from vlm import Runner, RunnerError, make_request, synthetic_prompt
from reducers import get as get_reducer


def test_all_tokens_kept_matches_the_models_own_forward(tiny, pixel_values):
    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=2), pixel_values)
    r = Runner(tiny)
    ref = r.reference_logits(req)  # input_ids + pixel_values through LlavaForConditionalGeneration
    ours = r.run(req, all_logits=True).logits  # our features, inputs_embeds prefill
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_fastv_with_r0_matches_unreduced_logits(tiny, pixel_values):
    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=2), pixel_values)
    r = Runner(tiny)
    full = r.run(req).logits
    fastv = r.run(req, get_reducer("fastv"), keep=tiny.visual_tokens).logits  # R = 1 - 64/64 = 0
    torch.testing.assert_close(fastv, full, atol=1e-4, rtol=0)
    pruned = r.run(req, get_reducer("fastv"), keep=8)
    assert pruned.extra["tokens_after_layer"] == req.input_ids.shape[1] - 64 + 8
    assert not torch.allclose(pruned.logits, full)


@pytest.mark.parametrize("name", ["random", "cluster-aggregate", "visionzip", "saliency", "tome", "prumerge-plus",
                                  "cluster-saliency-dynamic", "dart", "sparsevlm"])
def test_every_kind_of_reducer_runs_in_the_model(tiny, pixel_values, name):
    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=2), pixel_values)
    r = Runner(tiny)
    out = r.run(req, get_reducer(name), keep=16, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (2, tiny.spec.llm.vocab_size) and torch.isfinite(out.logits).all()
    assert r.decode(out, 3).shape == (2, 3)


def test_reduced_positions_option(tiny, pixel_values):
    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=1), pixel_values[:1])
    r = Runner(tiny)
    feats, _ = r.features(req)
    red = get_reducer("spatial").reduce(feats, 4)
    _, _, pos = r.assemble(req, red, positions="reduced")
    start = 5  # synthetic prompts put 5 tokens before the image
    assert pos[0, start:start + 4].tolist() == [start + i for i in red.kept_indices[0].tolist()]
    assert pos[0, start + 4].item() == start + 64  # text keeps its original position
    with pytest.raises(RunnerError, match="positions = 'odd' is not allowed"):
        r.assemble(req, red, positions="odd")


def test_vision_signals_are_the_feature_layers_attention(tiny, pixel_values):
    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=1), pixel_values[:1])
    r = Runner(tiny)
    _, sig = r.features(req, ("cls_attention", "vision_keys"))
    assert sig["cls_attention"].shape == (1, 64) and sig["vision_keys"].shape == (1, 64, 64)
    # against eager attention weights of the same layer (layer -2 of the tower)
    tower = tiny.model.model.vision_tower
    tiny.model.config.vision_config._attn_implementation = "eager"
    try:
        out = tower(req.pixel_values, output_attentions=True, output_hidden_states=True, return_dict=True)
    finally:
        tiny.model.config.vision_config._attn_implementation = "sdpa"
    att = out.attentions[-2][:, :, 0, 1:].mean(1)
    torch.testing.assert_close(sig["cls_attention"], att, atol=1e-5, rtol=1e-4)


def test_save_and_from_pretrained_give_the_same_logits(tiny, pixel_values, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    loaded = load_folder(tmp_path)
    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=1), pixel_values[:1])
    a = Runner(tiny).run(req).logits
    b = Runner(loaded).run(make_request(loaded, synthetic_prompt(loaded, 20, batch=1), pixel_values[:1])).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_cheap_init_on_the_meta_device_restores_buffers(pixel_values):
    lm = build_preset("tiny", init="cheap", seed=1)
    rot = lm.model.model.language_model.rotary_emb
    fresh = type(rot)(config=rot.config)
    torch.testing.assert_close(rot.inv_freq, fresh.inv_freq)
    tower = lm.model.model.vision_tower
    emb = getattr(tower, "vision_model", tower).embeddings  # transformers 4.x nests vision_model
    assert emb.position_ids.tolist() == [list(range(emb.num_positions))]
    out = Runner(lm).run(make_request(lm, synthetic_prompt(lm, 10), pixel_values[:1]))
    assert torch.isfinite(out.logits).all()


def test_bad_models(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_folder(tmp_path / "nope")
    with pytest.raises(ModelError, match="has no config.json"):
        load_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="holds a 'bert' model, not a LLaVA"):
        load_folder(tmp_path)
    with pytest.raises(ModelError, match="unknown preset 'llava-2'; allowed: tiny, llava-1.5-7b, llava-1.5-13b"):
        build_preset("llava-2")
    with pytest.raises(ModelError, match="dtype 'int4' is not allowed"):
        build_preset("tiny", dtype="int4")


def test_a_gpu_preset_is_refused_before_loading_when_memory_is_short():
    import costmodel
    spec = costmodel.load_model("llava-1.5-7b")
    with pytest.raises(ModelError, match=r"llava-1.5-7b in bfloat16 needs about 1[0-9]\.\d GiB on cpu .* only 8.0 GiB"):
        check_memory(spec, torch.bfloat16, torch.device("cpu"), available=8 * 2**30)
    with pytest.raises(ModelError, match="needs about"):
        build_preset("llava-1.5-7b", dtype="float32", available_memory=8 * 2**30)


def test_sparsevlm_follows_its_published_schedule(tiny, pixel_values):
    from reducers import SparseVLM
    s = SparseVLM()
    assert s.stages(64, 576, 32) == [(2, 66), (6, 30), (15, 17)]
    assert s.stages(192, 576, 32) == [(2, 300), (6, 200), (15, 110)]
    assert s.stages(96, 576, 32) == [(2, 99), (6, 45), (15, 26)]  # nearest schedule (64, a tie) x 1.5
    assert s.stages(64, 576, 4) == [(2, 66)]  # pruning layers beyond the model are dropped
    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=2), pixel_values)
    r = Runner(tiny)
    out = r.run(req, SparseVLM(layers=(1, 2, 3), recycle=0.0), keep=16)  # 16: 64-schedule / 4
    assert out.extra["visual_tokens_at_end"] == round(17 / 4)
    rec = r.run(req, SparseVLM(layers=(1, 2, 3), recycle=0.5, recycle_group=2), keep=16)
    assert rec.extra["visual_tokens_at_end"] > out.extra["visual_tokens_at_end"]  # recycled tokens kept
    with pytest.raises(Exception, match="recycle = 2"):
        SparseVLM(recycle=2)


def test_pre_projector_reducers_see_the_towers_features_with_cls_and_its_signals(tiny, pixel_values):
    import reducers as R
    from vlm.signals import needed_signals

    r = Runner(tiny)
    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=2), pixel_values)
    vz = R.get("visionzip")
    assert vz.hook == "pre-projector" and set(needed_signals(vz)) == {"tower_cls_attention", "tower_keys"}
    hidden, captured = r.vision(req.pixel_values, needed_signals(vz), keep_cls=True)
    n = tiny.visual_tokens
    assert hidden.shape[1] == n + 1
    sig = r.signals(req, captured, needed_signals(vz))
    # the definitions the official code reads: layer -2's attention, CLS row, heads averaged, CLS column kept
    tower = tiny.model.model.vision_tower
    eager = tower.config._attn_implementation
    tower.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            att = tower(req.pixel_values, output_attentions=True).attentions[-2]
    finally:
        tower.config._attn_implementation = eager
    torch.testing.assert_close(sig["tower_cls_attention"], att[:, :, 0, :].float().mean(1), atol=1e-5, rtol=1e-4)
    assert sig["tower_keys"].shape == (2, n + 1, tiny.spec.vision.hidden_size // tiny.spec.vision.num_attention_heads)
    # the forward path: reduce before the projector, project the kept rows only
    out = r.forward(req, vz, 16, generator=torch.Generator().manual_seed(0))
    red = vz.reduce(hidden, 16, **sig)
    embeds, mask, pos = r.assemble(req, type(red)(features=r.project(red.features), positions=red.positions,
                                                  kept_indices=red.kept_indices, assignment=red.assignment,
                                                  lengths=red.lengths))
    ref = r.prefill(embeds, mask, pos)
    torch.testing.assert_close(out.logits, ref.logits)
    assert out.extra["kept_tokens"] == 16
    pm = R.get("prumerge-plus")
    assert "tower_last_k" in needed_signals(pm) and "tower_last_q" in needed_signals(pm)
    _, cap = r.vision(req.pixel_values, needed_signals(pm), keep_cls=True)
    assert r.signals(req, cap, needed_signals(pm))["tower_last_k"].shape == (2, n + 1, tiny.spec.vision.hidden_size)


def test_sparsevlm_decodes_each_layer_after_its_own_cache(tiny, pixel_values):
    """SparseVLM renumbers the kept rows 0..L'-1, so its layers cache different id ranges: in
    decoding each layer's new token takes the next id after its own cache (official), not one id
    for all layers (which put the early layers' new token inside the image's ids). FastV keeps
    its rows' ids: one next id for all layers, as before."""
    from reducers import SparseVLM
    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=2), pixel_values)
    r = Runner(tiny)
    layers = r.language_model.layers
    for reducer, renumbered in ((SparseVLM(layers=(1, 2), recycle=0.0), True), (SparseVLM(layers=(0, 1, 2)), True),
                                (get_reducer("fastv"), False)):
        pre = r.run(req, reducer, keep=16)
        lengths = [pre.cache.get_seq_length(i) for i in range(len(layers))]
        seen = {}
        rotary = r.language_model.rotary_emb

        def ran_with(m, a, kw, out, i):  # after any pre-hook: the ids and rotary tables the layer used
            pos = kw["position_ids"]
            cos, sin = kw["position_embeddings"]
            want_cos, want_sin = rotary(a[0] if a else kw["hidden_states"], pos)
            assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)
            seen.setdefault(i, []).append(pos[:, -1].tolist())
        hooks = [layer.register_forward_hook(lambda m, a, kw, out, i=i: ran_with(m, a, kw, out, i), with_kwargs=True)
                 for i, layer in enumerate(layers)]
        try:
            r.decode(pre, 3)
        finally:
            for h in hooks:
                h.remove()
        if renumbered:
            assert lengths[0] > lengths[-1]  # the early layers cached every token
            assert "layer_next_position" in pre.extra
            for i, n in enumerate(lengths):
                assert seen[i] == [[n, n], [n + 1, n + 1]], (i, n, seen[i])
        else:
            assert "layer_next_position" not in pre.extra
            want = pre.next_position.tolist()
            for i in range(len(layers)):
                assert seen[i] == [want, [p + 1 for p in want]]
