import json

import pytest
from PIL import Image

from evaluation.tasks import load_benchmark
from evaluation.published import published_rows
from evaluation.harness import Evaluator, run_eval
from evaluation.lmms_import import ImportError_, import_lmms_eval
from vlm.loading import build_preset
from rows import read_rows
from vtc.cli import main


@pytest.fixture(scope="module")
def tiny():
    return build_preset("tiny", seed=0)


def bench(tmp_path, n=4, missing=None):
    lines = []
    for i in range(n):
        Image.new("RGB", (64, 64), (40 * i, 100, 200)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"id": f"s{i}", "image": f"{i}.png", "question": "Color?", "answers": ["blue"],
                                 "metric": "vqa"}))
    if missing is not None:
        (tmp_path / f"{missing}.png").unlink()
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
    return load_benchmark("jsonl", str(tmp_path / "b.jsonl"))


def test_unreduced_fidelity_is_exact_and_reduction_is_measured(tiny, tmp_path):
    samples = bench(tmp_path)
    out = tmp_path / "e.jsonl"
    ev = Evaluator(tiny)
    s = run_eval(tiny, "jsonl", samples, "none", 64, out, progress=False, evaluator=ev)
    assert s["n"] == 4 and s["kl_first_token"] == 0.0 and s["top1_agree"] == 1.0 and s["answer_agree"] == 1.0
    r = run_eval(tiny, "jsonl", samples, "random", 4, out, progress=False, evaluator=ev)
    assert r["kl_first_token"] > 0
    rows = [x for x in read_rows(out) if not x.get("summary")]
    assert len(rows) == 8 and all(x["kind"] == "eval" and "score" in x for x in rows)


def test_rows_say_how_many_tokens_the_llm_received(tiny, tmp_path):
    """``keep`` is what was asked; ``kept_tokens`` what the LLM got: the same for an exact-count
    method, the method's own count for DART's official budget (its pivots' share, not keep), and
    both reach the summary and the report."""
    from reports.analysis import conditions
    samples = bench(tmp_path)
    out = tmp_path / "e.jsonl"
    ev = Evaluator(tiny)
    s = run_eval(tiny, "jsonl", samples, "random", 8, out, progress=False, evaluator=ev)
    assert s["kept_tokens"] == 8.0
    d = run_eval(tiny, "jsonl", samples, "dart", 8, out, progress=False, evaluator=ev)
    per_sample = [x for x in read_rows(out) if not x.get("summary") and x["reducer"] == "dart"]
    assert all(x["keep"] == 8 and x["kept_tokens"] == d["kept_tokens"] for x in per_sample)
    assert d["kept_tokens"] != 8.0
    kept = {c.reducer: c.kept_tokens for c in conditions(list(read_rows(out))).values()}
    assert kept == {"random": 8.0, "dart": d["kept_tokens"]}


def test_resume_scores_each_sample_once(tiny, tmp_path):
    samples = bench(tmp_path)
    out = tmp_path / "e.jsonl"
    run_eval(tiny, "jsonl", samples, "spatial", 16, out, limit=2, progress=False)
    run_eval(tiny, "jsonl", samples, "spatial", 16, out, progress=False)
    per_sample = [x for x in read_rows(out) if not x.get("summary")]
    assert sorted(x["sample_id"] for x in per_sample) == ["s0", "s1", "s2", "s3"]
    assert [x for x in read_rows(out) if x.get("summary")][-1]["n"] == 4


def test_a_missing_image_fails_its_sample_and_keeps_the_rest(tiny, tmp_path):
    samples = bench(tmp_path, missing=2)
    out = tmp_path / "e.jsonl"
    s = run_eval(tiny, "jsonl", samples, "none", 64, out, progress=False)
    assert s["n"] == 3 and s["n_failed"] == 1 and "2.png" in s["failed_examples"][0]
    assert "does not exist" in s["failed_examples"][0]


def lmms_files(tmp_path):
    (tmp_path / "20250101_results.json").write_text(json.dumps({
        "results": {"pope": {"alias": "pope", "pope_accuracy,none": 0.85, "pope_accuracy_stderr,none": 0.01},
                    "gqa": {"exact_match,none": 0.61}},
        "config": {"model": "llava", "model_args": "pretrained=liuhaotian/llava-v1.5-7b,reducer=visionzip,keep=64"}}))
    (tmp_path / "20250101_samples_pope.jsonl").write_text("\n".join(json.dumps(
        {"doc_id": i, "target": "yes", "filtered_resps": [["Yes"]], "pope_accuracy": {"score": 1.0}})
        for i in range(3)) + "\n")


def test_lmms_eval_import(tmp_path):
    lmms_files(tmp_path)
    rows = import_lmms_eval(tmp_path)
    summ = {r["benchmark"]: r for r in rows if r.get("summary")}
    assert summ["pope"]["accuracy"] == 0.85 and summ["gqa"]["accuracy"] == 0.61
    assert summ["pope"]["reducer"] == "visionzip" and summ["pope"]["keep"] == 64
    samples = [r for r in rows if not r.get("summary")]
    assert len(samples) == 3 and samples[0]["prediction"] == "Yes" and samples[0]["score"] == 1.0
    over = import_lmms_eval(tmp_path, reducer="random", keep=128)
    assert over[0]["reducer"] == "random" and over[0]["keep"] == 128


def test_lmms_eval_import_rejects_other_files(tmp_path):
    (tmp_path / "x_results.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(ImportError_, match="no lmms-eval results table under .*1 file\\(s\\) skipped"):
        import_lmms_eval(tmp_path / "x_results.json", warn=lambda m: None)


def test_published_rows_are_labelled():
    rows = published_rows()
    assert all(r["kind"] == "published" and "Table" in r["source"] for r in rows)
    base = [r for r in rows if r["model"] == "llava-1.5-7b" and r["reducer"] == "none" and r["benchmark"] == "mme"]
    assert base[0]["mme_total"] == 1862
    ca = [r for r in rows if r["reducer"] == "cluster-aggregate" and r["keep"] == 128 and r["benchmark"] == "pope"
          and r["model"] == "llava-1.5-7b"]
    assert ca[0]["accuracy"] == pytest.approx(0.8614)


def test_cli_eval_errors(tmp_path, capsys):
    assert main(["eval", "--benchmark", "gqa", "--data", str(tmp_path), "--preset", "tiny", "--out",
                 str(tmp_path / "o.jsonl")]) == 2
    assert "no GQA questions file" in capsys.readouterr().err
    assert main(["eval", "--out", str(tmp_path / "o.jsonl"), "--benchmark", "gqa"]) == 2
    assert "give --model-path DIR or --preset NAME" in capsys.readouterr().err
