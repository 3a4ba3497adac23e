"""FastV, SparseVLM and DART follow their official code by default (``reducers.in_llm``).

SparseVLM and DART have no reference files: each is checked on a small hand-built input whose
official answer is worked out by hand from the official code, step by step, in the comments.
FastV's rule is checked against reference outputs in ``test_official.py``; here the forward
path is checked to feed it layer K-1's attention and to prune before layer K, against a manual
layer-by-layer run of the ``tiny`` preset (as SparseVLM's and DART's pruning positions are).

Official code read: pkunlp-icler/FastV ``src/transformers/src/transformers/models/llama/
modeling_llama.py`` (``LlamaModel.forward``, ``USE_FAST_V``/``FASTV_INPLACE``); Gumpest/SparseVLMs
``llava/model/language_model/{modelling_sparse_llama.py,score.py,utils.py}``; ZichenWen1/DART
(copy xqy1111111/DART) ``llava/model/language_model/modeling_llama_self.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

import reducers
from reducers import DART, FastV, SparseVLM, fastv_select
from reducers.in_llm import dpc_knn, last_row_attention


def rms(x):  # a final RMSNorm with unit weight
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


# ------------------------------------------------------------------------------- SparseVLM

def test_sparsevlm_counts_and_layers_are_the_published_ones():
    s = SparseVLM()
    assert not s.fixed_count and s.renumber_positions
    # score.py: layer_dict = {2: 0, 6: 1, 15: 2}; sparse_token_list_64/128/192
    assert s.stages(64, 576, 32) == [(2, 66), (6, 30), (15, 17)]
    assert s.stages(128, 576, 32) == [(2, 303), (6, 110), (15, 36)]
    assert s.stages(192, 576, 32) == [(2, 300), (6, 200), (15, 110)]
    assert s.stages(576, 576, 32) == [(2, 576), (6, 576), (15, 576)]  # keep = N: nothing prunes


@pytest.mark.parametrize("keep, after", [(64, [82, 32, 18]), (128, [312, 117, 39]), (192, [309, 204, 113])])
def test_sparsevlm_recycles_the_official_number_of_tokens(keep, after):
    # modelling_sparse_llama.py: kept = topk(min(list[i], v - 1)); recycled candidates =
    # int(0.3 * pruned) + 1; groups = int(candidates / 10) + 1; the block is then kept + groups.
    # "64": 576 -> 66 kept, 510 pruned, int(153.0) + 1 = 154 candidates, int(15.4) + 1 = 16
    # groups: 82; 82 -> 30 kept, 52 pruned, int(15.6) + 1 = 16, int(1.6) + 1 = 2: 32;
    # 32 -> 17, 15 pruned, int(4.5) + 1 = 5, int(0.5) + 1 = 1: 18.
    s = SparseVLM()
    g = torch.Generator().manual_seed(0)
    n, before, after_text = 576, 5, 8
    embeds = torch.randn(1, before + n + after_text, 4, generator=g)
    raters = s.prepare(embeds, slice(before, before + n))
    seen = []
    for _, count in s.stages(keep, 576, 32):
        t = before + n + after_text
        q, k, h = (torch.randn(1, 1, t, 2, generator=g), torch.randn(1, 1, t, 2, generator=g),
                   torch.randn(1, t, 4, generator=g))
        kept, rec_h, _ = s.select(q, k, h, slice(before, before + n), count, hidden_out=h, prepared=raters)
        n = kept.shape[1] + rec_h.shape[1]
        seen.append(n)
    assert seen == after


def sparsevlm_case():
    """1 prefix token (position 0), 12 visual (1..12), 3 text (13..15); D = 2, 2 heads of dim 1."""
    # embeddings: visual v_j = (1, j), text t13 = t14 = (ln 2, 0), t15 = (0, 0)
    embeds = torch.zeros(1, 16, 2)
    embeds[0, 1:13, 0] = 1.0
    embeds[0, 1:13, 1] = torch.arange(12.0)
    embeds[0, 13:15, 0] = math.log(2)
    # layer l's rotated q/k (dim 1, so logits = q * k): text rows 13, 14 query with q = 1, row 15
    # with q = -1; keys: 0 for the prefix and the text, ln w[h, j] for visual token j
    w = torch.tensor([[5., 12, 1, 7, 3, 10, 2, 8, 11, 4, 9, 6],    # head 0, sum 78
                      [2., 5, 8, 12, 1, 11, 3, 4, 7, 9, 6, 10]])   # head 1, sum 78
    q = torch.zeros(1, 2, 16, 1)
    q[0, :, 13:15] = 1.0
    q[0, :, 15] = -1.0
    k = torch.zeros(1, 2, 16, 1)
    k[0, :, 1:13, 0] = w.log()
    # layer l's output: visual token j -> (j, 10 + j)
    out = torch.zeros(1, 16, 2)
    out[0, 1:13, 0] = torch.arange(12.0)
    out[0, 1:13, 1] = 10 + torch.arange(12.0)
    return embeds, q, k, out


def test_sparsevlm_by_hand():
    embeds, q, k, out = sparsevlm_case()
    vis = slice(1, 13)
    s = SparseVLM()
    # Raters (modelling_sparse_llama.py, "Select Text Raters", once, on the input embeddings):
    # m_v_t = (v @ t^T).softmax over text .mean over visual. v_j . t = (ln 2, ln 2, 0) for every j,
    # so softmax = (2, 2, 1) / 5 = (0.4, 0.4, 0.2) for every j and m_v_t = (0.4, 0.4, 0.2);
    # its mean is 1/3: raters = text tokens 13 and 14 (where m_v_t > mean), not 15.
    raters = s.prepare(embeds, vis)
    assert raters.tolist() == [[True, True, False]]
    # Scores (score.py, attn_postprocess_topk): layer l's attention probabilities (causal
    # softmax), heads averaged, rows = raters, visual columns, averaged over the raters.
    # Row 13 sees positions 0..13: weights 1 (prefix), w[h, j] (visual), 1 (itself): sum 80 for
    # both heads; row 14 also sees 14: sum 81. So score_j = (w0_j + w1_j) / 2 * (1/80 + 1/81) / 2,
    # ranked by w0 + w1 = [7, 17, 9, 19, 4, 21, 5, 12, 18, 13, 15, 16].
    # (Row 15, not a rater, would prefer the smallest weights.)
    kept, rec_h, rec_idx = s.select(q, k, embeds, vis, 4, hidden_out=out, prepared=raters)
    # top 4 (topk(min(4, 12 - 1))): 21 (j=5), 19 (j=3), 18 (j=8), 17 (j=1) -> kept {1, 3, 5, 8}
    assert kept.tolist() == [[1, 3, 5, 8]]
    # Recycling (modelling_sparse_llama.py): pruned = [0, 2, 4, 6, 7, 9, 10, 11] (8 tokens);
    # candidates = int(8 * 0.3) + 1 = 3, the best pruned by score: 16 (j=11), 15 (j=10), 13 (j=9);
    # groups = int(3 / 10) + 1 = 1 (cluster_and_merge with one centre: every candidate joins it);
    # the group's token = sum of the candidates' OUTPUT rows / (3 + 1e-6):
    # ((11 + 10 + 9), (21 + 20 + 19)) / (3 + 1e-6) = (30, 60) / 3.000001.
    assert rec_h.shape == (1, 1, 2)
    torch.testing.assert_close(rec_h[0, 0], torch.tensor([30.0, 60.0]) / (3 + 1e-6), rtol=1e-6, atol=0)
    assert rec_idx.tolist() == [[10.0]]  # mean block index of the group: (11 + 10 + 9) / 3
    # the block after the stage: 4 kept + 1 recycled = 5 tokens (count + groups)


def test_dpc_knn_by_hand():
    # utils.py, cluster_and_merge(x, cluster_num=3) on 9 points of one dimension (C = 1, so
    # distances are |x_i - x_j| / sqrt(1)):
    x = torch.tensor([0, 1, 3, 10, 12, 13.5, 20, 20.5, 22.5])[None, :, None]
    # k = 3 nearest, self included; squared distances summed (density = exp(-sum / 3)):
    #  0: 0,1,3 -> 10      1: 0,1,2 -> 5       2: 0,2,3 -> 13
    #  3: 0,2,3.5 -> 16.25 4: 0,1.5,2 -> 6.25  5: 0,1.5,3.5 -> 14.5
    #  6: 0,.5,2.5 -> 6.5  7: 0,.5,2 -> 4.25   8: 0,2,2.5 -> 10.25
    # densest first: 7, 1, 4, 6, 0, 8, 2, 5, 3. delta = distance to the nearest denser point,
    # the largest distance (22.5) for the densest: 7: 22.5; 1: 19.5 (to 7); 4: 8.5 (to 7);
    # 6: 0.5; 0: 1; 8: 2; 2: 2; 5: 1.5; 3: 2.
    # ln(score) = ln(delta) - sum / 3: 7: 3.11 - 1.42 = 1.70; 1: 2.97 - 1.67 = 1.30;
    # 4: 2.14 - 2.08 = 0.06; 6: -2.86; 8: -2.72; 0: -3.33; 2: -3.64; 5: -4.43; 3: -4.72.
    # centres, by score: 7 (cluster 0), 1 (cluster 1), 4 (cluster 2); every point joins the
    # nearest centre: 0, 1, 3 -> x=1; 10, 12, 13.5 -> x=12; 20, 20.5, 22.5 -> x=20.5.
    assert dpc_knn(x, 3).tolist() == [[1, 1, 1, 2, 2, 2, 0, 0, 0]]


# ------------------------------------------------------------------------------------ DART

def dart_case():
    """1 prefix token (position 0), 20 image tokens (1..20), 5 text (21..25); keys: 2 heads of
    dim 2; layer K-1's output in 2-D."""
    k = torch.zeros(1, 2, 26, 2)
    # image key L1 norms (heads and dims together): |head 0, dim 0| + |head 1, dim 1|
    a = torch.tensor([1., 2, 6, 1, 2, 1, 3, 5, 1, 2, 1, 3, 2, 4, 1, 2, 3, 1, 5, 2])
    b = torch.tensor([0., 0, 4, 0, 0, 1, 0, -4, 0, 0, 1, 0, 0, -4, 0, 0, 0, 0, -2, 0])
    # L1 = a + |b| = [1, 2, 10, 1, 2, 2, 3, 9, 1, 2, 2, 3, 2, 8, 1, 2, 3, 1, 7, 2]
    k[0, 0, 1:21, 0], k[0, 1, 1:21, 1] = a, b
    k[0, 1, 21:26, 0] = torch.tensor([3., -9, 1, 7, -5])  # text L1: 3, 9, 1, 7, 5
    # layer K-1's output: image token j at angle 18 j degrees, radius 1 + j (cosine ignores it);
    # text tokens 21..25 at 10, 100, 0, 200, 310 degrees
    deg = torch.cat([18 * torch.arange(20.0), torch.tensor([10., 100, 0, 200, 310])])
    radius = torch.cat([1 + torch.arange(20.0), torch.ones(5)])
    out = torch.zeros(1, 26, 2)
    out[0, 1:, 0] = radius * torch.cos(torch.deg2rad(deg))
    out[0, 1:, 1] = radius * torch.sin(torch.deg2rad(deg))
    return k, out


def test_dart_by_hand():
    k, out = dart_case()
    d = DART()
    assert (d.layer, d.pivot_image, d.pivot_text, d.budget) == (2, 4, 4, "official") and not d.fixed_count
    # count (get_retained_image_token): TOKEN_TOPK = max_num_trunction // (4 + 4) = keep // 8;
    # kept = 4 image pivots + 8 pivots x TOKEN_TOPK picks; at keep = 8 on 20 tokens: 4 + 8 = 12
    assert d.stages(8, 20, 32) == [(1, 12)]  # layer K-1 = 1 scores, its output is pruned
    hidden = torch.randn(1, 26, 2, generator=torch.Generator().manual_seed(0))  # layer K-1's input: unused
    kept, rec, _ = d.select(k, k, hidden, slice(1, 21), 12, hidden_out=out, final_norm=rms)
    # pivots (L1 norm of the keys): image top 4 = j 2 (10), 7 (9), 13 (8), 18 (7) -> positions
    # 3, 8, 14, 19; text top 4 = positions 22 (9), 24 (7), 25 (5), 21 (3), not 23 (1).
    # The loop iterates the Python set {3, 8, 14, 19, 22, 24, 25, 21}: ints below the table
    # size (32) come out ascending: 3, 8, 14, 19, 21, 22, 24, 25. Each pivot takes the
    # TOKEN_TOPK = 1 valid image token least cosine-similar to it on final_norm(output), i.e.
    # the angle nearest to its own + 180; valid = image tokens that are not pivots, not taken:
    #   3 (j=2, 36):   216 -> j=12 (216)
    #   8 (j=7, 126):  306 -> j=17 (306)
    #   14 (j=13, 234): 54 -> j=3 (54)
    #   19 (j=18, 324): 144 -> j=8 (144)
    #   21 (10):  190 -> j=11 (198, 8 away; j=10 at 180 is 10 away)
    #   22 (100): 280 -> j=16 (288, 8 away; j=15 at 270 is 10 away)
    #   24 (200): 20 -> j=1 (18)
    #   25 (310): 130 -> j=8 (144, 14 away) is taken, j=7 (126) is a pivot: j=6 (108, 22 away;
    #             j=9 at 162 is 32 away). The order matters: had 25 come before 19, 25 would
    #             have taken j=8 and 19 then j=9 (162, 18 away), keeping 9 instead of 6.
    # kept = pivots {2, 7, 13, 18} + picks {12, 17, 3, 8, 11, 16, 1, 6}; text pivots dropped.
    assert kept.tolist() == [[1, 2, 3, 6, 7, 8, 11, 12, 13, 16, 17, 18]] and rec is None
    assert 10 not in kept[0].tolist()  # what the non-pivot text token 23 (0 degrees) would take


def dart_as_written(l1, x, start, n, per_pivot):
    """get_retained_image_token's steps as the official code takes them (batch row 0, Python sets;
    the loop walks a copy of the pivot set), on absolute positions."""
    img = (l1[start:start + n].topk(4).indices + start).tolist()
    txt = (l1[start + n:].topk(4).indices + start + n).tolist()
    chosen = set(img + txt)
    remaining = set(range(start, start + n))
    remaining.difference_update(img)
    for p in list(chosen.copy()):
        pool = list(remaining)
        far = (-torch.nn.functional.cosine_similarity(x[p], x[pool], dim=-1)).topk(per_pivot).indices.tolist()
        chosen.update(pool[i] for i in far)
        remaining.difference_update(pool[i] for i in far)
    chosen.difference_update(txt)
    return sorted(i - start for i in chosen)


def test_dart_follows_the_official_loop_at_llava_positions():
    # LLaVA-1.5: the image at positions 35..610; the pivot set then iterates out of order
    # (e.g. {35, 640, 100} -> [640, 35, 100] hashes modulo the table size)
    g = torch.Generator().manual_seed(1)
    start, n, t = 35, 576, 40
    k = torch.randn(2, 4, start + n + t, 8, generator=g)
    out = torch.randn(2, start + n + t, 16, generator=g)
    kept = DART().select(k, k, out, slice(start, start + n), 68, hidden_out=out, final_norm=rms)[0]
    for b in range(2):
        assert kept[b].tolist() == dart_as_written(k[b].abs().sum((0, 2)), rms(out[b]), start, n, 64 // 8)


def test_dart_counts_and_exact_budget():
    # the official counts at LLaVA-1.5's 576 tokens: keep = max_num_trunction
    assert [DART().stages(keep, 576, 32) for keep in (64, 128, 192)] == [[(1, 68)], [(1, 132)], [(1, 196)]]
    assert DART().stages(576, 576, 32) == [(1, 576)]  # keep = N: the identity
    exact = DART(budget="exact")
    assert exact.fixed_count and exact.stages(64, 576, 32) == [(1, 64)]
    k, out = dart_case()
    kept = exact.select(k, k, out, slice(1, 21), 14, hidden_out=out, final_norm=rms)[0]
    # 14 = 4 image pivots + 10 picks: the first 2 pivots of the loop take 2, the others 1
    assert kept.shape == (1, 14) and {2, 7, 13, 18} <= set(kept[0].tolist())
    with pytest.raises(reducers.ReducerError, match="budget = 'some' is not allowed"):
        DART(budget="some")


# ----------------------------------------------------------------- the forward path (tiny)

@pytest.fixture(scope="module")
def tiny_run():
    from vlm import Runner, make_request, synthetic_prompt
    from vlm.forward import identity_reduction
    from vlm.images import load_images
    from vlm.loading import build_preset
    tiny = build_preset("tiny", seed=0)
    pv = tiny.preprocess([im for _, im in load_images(limit=2)])
    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=2), pv)
    runner = Runner(tiny)
    feats, _ = runner.features(req)
    embeds, _, pos = runner.assemble(req, identity_reduction(feats))
    lm = tiny.model.model.language_model
    lm.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            full = lm(inputs_embeds=embeds, position_ids=pos, output_hidden_states=True, output_attentions=True)
    finally:
        lm.config._attn_implementation = "sdpa"
    return runner, req, embeds, pos, full


def spy(reducer):
    """Record every select call's arguments and result."""
    calls, select = [], reducer.select

    def recorded(*args, **kw):
        res = select(*args, **kw)
        calls.append((args, kw, res))
        return res
    reducer.select = recorded
    return calls


def continue_from(runner, layer, hidden, pos):
    """Layers ``layer``.. of the tiny LLM on ``hidden`` at positions ``pos``, causal; the last
    position's logits."""
    lm = runner.language_model
    t = hidden.shape[1]
    mask = torch.full((t, t), float("-inf")).triu(1)[None, None].expand(hidden.shape[0], 1, t, t)
    with torch.no_grad():
        for blk in lm.layers[layer:]:
            out = blk(hidden, attention_mask=mask, position_ids=pos, position_embeddings=lm.rotary_emb(hidden, pos))
            hidden = out[0] if isinstance(out, tuple) else out
        return runner.model.lm_head(lm.norm(hidden)[:, -1])


def rows(x, kept, start=5, n=64):
    """The prefix, the kept visual rows and the text of ``x`` [B, T, ...]."""
    b = x.shape[0]
    idx = torch.cat([torch.arange(start).expand(b, -1), kept + start,
                     torch.arange(start + n, x.shape[1]).expand(b, -1)], 1)
    return torch.gather(x, 1, idx.view(b, -1, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))


def test_fastv_scores_with_layer_k_minus_1_and_prunes_before_layer_k(tiny_run):
    runner, req, embeds, pos, full = tiny_run
    fastv = FastV()  # K = 2: layer 1's attention, pruned before layer 2
    assert fastv.stages(64, 576, 32) == [(1, 64)] and fastv.stages(16, 64, 4) == [(1, 16)]
    calls = spy(fastv)
    got = runner.forward(req, fastv, 16)
    (args, kw, (kept, _, _)), = calls
    q, k = args[:2]
    # the q/k it scored with are layer K-1 = 1's: their attention row is the model's own
    att = full.attentions[1][:, :, -1, :]  # layer 1's eager attention probabilities, last query row
    torch.testing.assert_close(last_row_attention(q, k), att, atol=1e-5, rtol=1e-4)
    assert torch.equal(kept, fastv_select(att, 5, 64, 16))  # the official rule on that row
    torch.testing.assert_close(kw["hidden_out"], full.hidden_states[2], atol=1e-5, rtol=1e-4)
    # prune layer 1's output (= layer 2's input), kept rows keep their positions, run layers 2, 3
    ref = continue_from(runner, 2, rows(full.hidden_states[2], kept), rows(pos, kept))
    torch.testing.assert_close(got.logits, ref, atol=1e-4, rtol=0)
    assert got.extra["visual_tokens_per_stage"] == [(1, 16)]
    assert runner.decode(got, 3).shape == (2, 3)  # layers 0, 1 cache 84 tokens, layers 2, 3 cache 36


def test_dart_scores_with_layer_k_minus_1_keys_and_normed_output(tiny_run):
    runner, req, embeds, pos, full = tiny_run
    dart = DART()
    calls = spy(dart)
    got = runner.forward(req, dart, 16)  # 4 + 8 x (16 // 8) = 20 tokens
    (args, kw, (kept, _, _)), = calls
    assert kept.shape == (2, 20) and kw["final_norm"] is runner.language_model.norm
    torch.testing.assert_close(args[2], full.hidden_states[1], atol=1e-5, rtol=1e-4)  # layer 1's input
    torch.testing.assert_close(kw["hidden_out"], full.hidden_states[2], atol=1e-5, rtol=1e-4)  # its output
    ref = continue_from(runner, 2, rows(full.hidden_states[2], kept), rows(pos, kept))
    torch.testing.assert_close(got.logits, ref, atol=1e-4, rtol=0)
    assert got.extra["visual_tokens_per_stage"] == [(1, 20)]


def test_sparsevlm_prunes_the_output_of_its_layer_with_raters_from_the_embeddings(tiny_run):
    runner, req, embeds, pos, full = tiny_run
    s = SparseVLM(layers=(1,))  # keep 16: the 64 schedule x 16/64 = 16 at layer 1
    calls = spy(s)
    got = runner.forward(req, s, 16)
    (args, kw, (kept, rec_h, _)), = calls
    assert torch.equal(kw["prepared"], s.prepare(embeds, slice(5, 69)))  # raters from the input embeddings
    torch.testing.assert_close(args[2], full.hidden_states[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(kw["hidden_out"], full.hidden_states[2], atol=1e-5, rtol=1e-4)
    # 48 pruned -> int(14.4) + 1 = 15 candidates -> int(1.5) + 1 = 2 groups: 16 + 2 tokens
    assert kept.shape == (2, 16) and rec_h.shape[1] == 2
    # layer 1's output: prefix, kept, recycled, text; positions 0..L'-1 (position_ids[:, :L'])
    h = rows(full.hidden_states[2], kept)
    h = torch.cat([h[:, :21], rec_h, h[:, 21:]], 1)
    ref = continue_from(runner, 2, h, pos[:, :h.shape[1]])
    torch.testing.assert_close(got.logits, ref, atol=1e-4, rtol=0)
    assert got.extra["visual_tokens_per_stage"] == [(1, 18)]
    assert runner.decode(got, 3).shape == (2, 3)
