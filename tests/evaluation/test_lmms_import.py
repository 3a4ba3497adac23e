"""lmms-eval import on output trees of two lmms-eval generations, with the files real runs leave
beside the results (MMBench submissions), MME's renamed key, and canonical benchmark names."""

import json

import pytest

from evaluation.lmms_import import LmmsImportError, import_lmms_eval


def tree_v04(root):
    """lmms-eval >= 0.3: <model>/<timestamp>_results.json + <timestamp>_samples_<task>.jsonl, and a
    submissions folder MMBench writes."""
    d = root / "llava-v1.5-7b"
    d.mkdir(parents=True)
    (d / "20250101_120000_results.json").write_text(json.dumps({
        "results": {"mme": {"alias": "mme", "mme_perception_score,none": 1500.5, "mme_cognition_score,none": 350.0},
                    "scienceqa_img": {"exact_match,none": 0.70},
                    "textvqa_val": {"exact_match,none": 0.58, "exact_match_stderr,none": 0.01},
                    "mmbench_en_dev": {"submission,none": None}},
        "config": {"model": "vtc_llava", "model_args": "pretrained=liuhaotian/llava-v1.5-7b,reducer=visionzip,keep=64"}}))
    (d / "20250101_120000_samples_scienceqa_img.jsonl").write_text("\n".join(json.dumps(
        {"doc_id": i, "target": "A", "filtered_resps": ["A"], "exact_match": 1.0}) for i in range(4)) + "\n")
    sub = d / "submissions"
    sub.mkdir()
    (sub / "mmbench_en_dev_results.json").write_text(json.dumps([{"index": 1, "prediction": "A"}]))
    return d


def tree_v02(root):
    """lmms-eval 0.1/0.2: results.json + <task>.json with {"args", "model_configs", "logs"}; MME with
    the key it used before 2024 (mme_percetion_score)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps({
        "results": {"mme": {"mme_percetion_score,none": 1480.0, "mme_cognition_score,none": 300.0},
                    "vizwiz_vqa_val": {"exact_match,none": 0.52}, "pope": {"pope_f1_score,none": 0.8}},
        "config": {"model": "llava", "model_args": "pretrained=llava-hf/llava-1.5-7b,reducer=random,keep=128"}}))
    (root / "vizwiz_vqa_val.json").write_text(json.dumps({"args": {}, "model_configs": {}, "logs": [
        {"doc_id": i, "target": "yes", "filtered_resps": [["yes"]], "exact_match": 1.0} for i in range(2)]}))
    return root


def test_v04_tree_imports_with_canonical_names_and_skips_submissions(tmp_path):
    said = []
    tree_v04(tmp_path)
    rows = import_lmms_eval(tmp_path, warn=said.append)
    summ = {r["benchmark"]: r for r in rows if r.get("summary")}
    assert set(summ) == {"mme", "scienceqa", "textvqa", "mmbench"}  # canonical, not scienceqa_img / textvqa_val
    assert summ["mme"]["accuracy"] == pytest.approx(1850.5) and summ["scienceqa"]["accuracy"] == 0.70
    assert summ["scienceqa"]["lmms_task"] == "scienceqa_img"
    assert all(r["reducer"] == "visionzip" and r["keep"] == 64 for r in rows)
    assert summ["mmbench"]["accuracy"] is None
    assert "no metric gpt_eval_score" in summ["mmbench"]["accuracy_unavailable_reason"]
    assert len([r for r in rows if not r.get("summary")]) == 4
    assert any("submissions" in m and "not a results table" in m for m in said)


def test_v02_tree_reads_per_task_logs_and_the_old_mme_key(tmp_path):
    rows = import_lmms_eval(tree_v02(tmp_path / "old"), warn=lambda m: None)
    summ = {r["benchmark"]: r for r in rows if r.get("summary")}
    assert summ["mme"]["accuracy"] == pytest.approx(1780.0)  # perception (old key) + cognition
    assert summ["vizwiz"]["accuracy"] == 0.52 and summ["vizwiz"]["reducer"] == "random" and summ["vizwiz"]["keep"] == 128
    samples = [r for r in rows if not r.get("summary")]
    assert len(samples) == 2 and samples[0]["benchmark"] == "vizwiz" and samples[0]["prediction"] == "yes"
    assert summ["pope"]["accuracy"] is None and "no metric pope_accuracy" in summ["pope"]["accuracy_unavailable_reason"]


def test_the_hook_is_the_reducers_own(tmp_path):
    new = {r["reducer"]: r["hook"] for r in import_lmms_eval(tree_v04(tmp_path / "new"), warn=lambda m: None)}
    old = {r["reducer"]: r["hook"] for r in import_lmms_eval(tree_v02(tmp_path / "old"), warn=lambda m: None)}
    assert new == {"visionzip": "pre-projector"} and old == {"random": "post-projector"}


def test_both_generations_in_one_folder_and_nothing_importable(tmp_path):
    tree_v04(tmp_path / "new")
    tree_v02(tmp_path / "old")
    rows = import_lmms_eval(tmp_path, warn=lambda m: None)
    assert {r["benchmark"] for r in rows if r.get("summary")} >= {"mme", "vizwiz", "scienceqa"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmmsImportError, match="no lmms-eval results table under"):
        import_lmms_eval(tmp_path / "empty", warn=lambda m: None)
    with pytest.raises(LmmsImportError, match="does not exist"):
        import_lmms_eval(tmp_path / "nope")
