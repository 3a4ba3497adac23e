from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reducers
from vlm.images import ImageError
from vlm.loading import load_folder
from evaluation.saliency import SaliencyError, SaliencyProbe, rank_stats, reference_rankings, run_saliency, \
    topk_shared_by_all
from tests.conftest import ROOT

MODEL = ROOT / "models" / "llava-tiny-easyvqa"


@pytest.fixture(scope="module")
def trained():
    return load_folder(MODEL)


def test_rank_statistics_on_planted_rankings():
    a = np.arange(100.0)
    same = rank_stats(a, a, ks=(10,))
    assert same == pytest.approx({"spearman": 1.0, "kendall": 1.0, "top10": 1.0})
    rev = rank_stats(a, -a, ks=(10,))
    assert rev == pytest.approx({"spearman": -1.0, "kendall": -1.0, "top10": 0.0})
    rng = np.random.default_rng(0)
    ind = [rank_stats(rng.random(2000), rng.random(2000), ks=(200,)) for _ in range(5)]
    assert abs(np.mean([s["spearman"] for s in ind])) < 0.05
    assert abs(np.mean([s["top200"] for s in ind]) - 0.1) < 0.03  # chance: k / N
    assert topk_shared_by_all([a, a, a], 5) == 1.0 and topk_shared_by_all([a, -a], 5) == 0.0


def test_reference_rankings():
    refs = reference_rankings(576, (24, 24))
    top16 = np.argsort(-refs["spatial"], kind="stable")[:16]
    quadrants = [(i // 24 >= 12) * 2 + (i % 24 >= 12) for i in top16]
    assert sorted(set(quadrants)) == [0, 1, 2, 3] and min(quadrants.count(q) for q in range(4)) >= 2  # spread out
    assert len(set(refs["random"])) == 576


OPTIONS = [(False, "all"), (True, "all"), (False, "after_image"), (True, "after_image")]


def _request(lm, prompt="what color is the shape?"):
    from easy_vqa import get_test_image_paths
    from vlm import make_request, template_prompt
    im = Image.open(get_test_image_paths()[0]).convert("RGB")
    return im, make_request(lm, [template_prompt(lm, prompt)], lm.preprocess([im]))


@pytest.mark.parametrize("rope,text", OPTIONS)
def test_layer0_saliency_by_hand(trained, rope, text):
    """The probe's layer-0 score against Algorithm 1 written out on the model's own modules:
    q/k of the full sequence (rotated at the real positions when ``rope``), visual keys against
    the queries of every non-image token (or those after the image), softmax over the text, max
    over heads, mean over the text."""
    lm = trained
    im, req = _request(lm)
    probe = SaliencyProbe(lm, rope=rope, text=text)
    s = probe.scores(im, "what color is the shape?", [0], kinds=("saliency",))[("saliency", 0)]
    assert s.shape == (64,)
    r = probe.runner
    feats, _ = r.features(req)
    embeds, mask, pos = r.assemble(req, reducers.get("random").reduce(feats, 64))
    lang = lm.model.model.language_model
    layer = lang.layers[0]
    x = layer.input_layernorm(embeds)
    cfg = lang.config
    d = cfg.hidden_size // cfg.num_attention_heads
    q = layer.self_attn.q_proj(x).view(1, -1, cfg.num_attention_heads, d).transpose(1, 2)
    k = layer.self_attn.k_proj(x).view(1, -1, cfg.num_key_value_heads, d).transpose(1, 2)
    if rope:
        cos, sin = lang.rotary_emb(embeds, pos)
        rot = lambda v: torch.cat([-v[..., d // 2:], v[..., :d // 2]], -1)  # noqa: E731
        q = q * cos[:, None] + rot(q) * sin[:, None]
        k = k * cos[:, None] + rot(k) * sin[:, None]
    k = k.repeat_interleave(cfg.num_attention_heads // cfg.num_key_value_heads, dim=1)
    start = int((req.input_ids[0] == lm.image_token_id).nonzero()[0])
    length = req.input_ids.shape[1]
    text_idx = list(range(start + 64, length)) if text == "after_image" else \
        [i for i in range(length) if not start <= i < start + 64]
    assert start > 0 and len(text_idx) < length - 64 if text == "after_image" else len(text_idx) == length - 64
    kv, qt = k[:, :, start:start + 64], q[:, :, text_idx]
    manual = (kv @ qt.transpose(-1, -2) / d ** 0.5).softmax(-1).amax(1).mean(-1)[0]
    np.testing.assert_allclose(s, manual.detach().numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rope,text", OPTIONS)
def test_probe_and_reducer_rank_alike(trained, rope, text):
    """One score: ``vtc saliency`` at layer 0 and the saliency reducer on the forward path's own
    signals give the same ranking, and the reducer keeps the probe's top-k."""
    from vlm.signals import needed_signals
    lm = trained
    im, req = _request(lm)
    s = SaliencyProbe(lm, rope=rope, text=text).scores(im, "what color is the shape?", [0], ("saliency",))
    probe_score = torch.from_numpy(s[("saliency", 0)])
    reducer = reducers.get("saliency", rope=rope, text=text)
    with torch.no_grad():
        feats, sig = SaliencyProbe(lm).runner.features(req, needed_signals(reducer))
        red_score = reducer._saliency(feats, **sig)[0]
        kept = reducer.reduce(feats, 16, **sig).positions[0].round().long()
    assert {"text_positions", "visual_start"} <= set(sig)
    np.testing.assert_allclose(red_score.numpy(), probe_score.numpy(), rtol=1e-4, atol=1e-7)
    assert torch.equal(torch.argsort(red_score, descending=True, stable=True)[:16],
                       torch.argsort(probe_score, descending=True, stable=True)[:16])
    assert set(kept.tolist()) == set(torch.topk(probe_score, 16).indices.tolist())


def test_rope_places_the_prefix_before_the_image(trained):
    """With rope, the prompt's prefix tokens (before the image) rotate at their own positions,
    not after the image run: scoring with the real positions differs from the by-hand fallback
    that assumes all text follows the image, and the signals say where the image starts."""
    from vlm.signals import text_rows
    lm = trained
    _, req = _request(lm)
    order, valid, positions, visual_start = text_rows(req)
    start = int(visual_start[0])
    assert start > 0 and (positions[0, :start] == torch.arange(start)).all()
    assert (positions[0, start:] >= start + 64).all()


def test_run_writes_heatmaps_with_the_grid_shape(trained, tmp_path):
    from easy_vqa import get_test_image_paths
    p = get_test_image_paths()
    stats = run_saliency(trained, [p[0], p[1]], ["what shape is it?", "is it red?"], [0, 2], tmp_path)
    heat = sorted(x.name for x in tmp_path.glob("heatmap_*.png"))
    assert len(heat) == 4
    import csv
    rows = list(csv.DictReader(open(tmp_path / "scores.csv")))
    sal0 = [r for r in rows if r["score"] == "saliency" and r["layer"] == "0" and r["prompt"] == "is it red?"
            and r["image"] == Path(p[0]).name]
    assert len(sal0) == 64 and max(int(r["row"]) for r in sal0) == 7 and max(int(r["col"]) for r in sal0) == 7
    assert set(stats["trend1_across_layers"]["saliency"]["layer_pairs"]) == {"0-2"}
    assert 0 <= stats["trend2_across_prompts"]["fastv"]["top16_shared_by_all_prompts"] <= 1


def test_bad_input(trained, tmp_path):
    from easy_vqa import get_test_image_paths
    img = get_test_image_paths()[0]
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="cannot read .*notes.txt.* as an image"):
        run_saliency(trained, [str(bad)], ["q?"], [0], tmp_path / "o")
    with pytest.raises(SaliencyError, match="prompt is empty"):
        run_saliency(trained, [img], ["  "], [0], tmp_path / "o")
    with pytest.raises(SaliencyError, match="layer 9 is out of range; allowed: 0..3"):
        run_saliency(trained, [img], ["what?"], [0, 9], tmp_path / "o")


def test_report_includes_saliency(trained, tmp_path):
    import json

    from reports.build import build_report
    from easy_vqa import get_test_image_paths
    run_saliency(trained, [get_test_image_paths()[0]], ["what shape?", "what color?"], [0, 1], tmp_path / "sal")
    rows = tmp_path / "r.jsonl"
    rows.write_text(json.dumps({"kind": "published", "status": "ok", "model": "m", "reducer": "none", "keep": 576,
                                "benchmark": "pope", "accuracy": 0.8, "mme_total": None, "source": "x, Table 3"}) + "\n")
    build_report([rows], tmp_path / "rep", saliency=[tmp_path / "sal"])
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "Trend 1 (saliency)" in md and "fig5_saliency_0.png" in md
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "from vtc saliency" in page and page.count("data:image/png;base64,") >= 1  # embedded, not linked


def test_cli_repeated_prompts_are_all_kept_and_one_prompt_gives_trend1_only(tmp_path, capsys):
    import json

    from easy_vqa import get_test_image_paths

    from vtc.cli import main
    img = get_test_image_paths()[0]
    base = ["saliency", "--model-path", str(MODEL), "--image", img, "--layers", "0,1", "--scores", "saliency"]
    assert main(base + ["--prompt", "what shape?", "--prompt", "what color?", "--out", str(tmp_path / "two")]) == 0
    two = json.loads((tmp_path / "two" / "trends.json").read_text())
    assert two["prompts"] == 2 and "saliency" in two["trend2_across_prompts"]
    assert len(list((tmp_path / "two").glob("heatmap_*.png"))) == 2
    capsys.readouterr()
    assert main(base + ["--prompt", "what shape?", "--out", str(tmp_path / "one")]) == 0
    out = capsys.readouterr().out
    one = json.loads((tmp_path / "one" / "trends.json").read_text())
    assert one["prompts"] == 1 and one["trend2_across_prompts"] == {} and "Trend 1, saliency" in out
    assert "Trend 2 (agreement across prompts) needs at least two prompts" in out
