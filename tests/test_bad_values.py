"""Values that must be refused before any work, each with a one-line error naming it (issue 14)."""

import pytest

from tests.conftest import ROOT
from vtc.cli import main

MODEL = str(ROOT / "models" / "llava-tiny-easyvqa")


def run(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


CASES = [
    (["predict", "--keep", "64", "--out", "/proc/nope/x.jsonl"], "--out '/proc/nope/x.jsonl' cannot be written"),
    (["predict", "--keep", "64", "--plot", "/tmp"], "--plot '/tmp' is a folder"),
    (["validate", "results/h100-sxm/profile.jsonl", "--calibration-out", "/proc/nope/c.json"],
     "--calibration-out '/proc/nope/c.json' cannot be written"),
    (["validate", "results/h100-sxm/profile.jsonl", "--model", "llama2-7b"], "is an LLM, not a VLM"),
    (["profile", "--preset", "tiny", "--device", "cuda", "--out", "{tmp}/p.jsonl"],
     "--device cuda: CUDA is not available on this machine; allowed: cpu"),
    (["profile", "--preset", "tiny", "--keep", "", "--out", "{tmp}/p.jsonl"], "no budget given"),
    (["profile", "--preset", "tiny", "--image-limit", "0", "--out", "{tmp}/p.jsonl"], "image_limit = 0 is not allowed"),
    (["profile", "--preset", "tiny", "--decode-steps", "-3", "--out", "{tmp}/p.jsonl"],
     "decode_steps = -3 is not allowed"),
    (["profile", "--preset", "tiny", "--batch", "0", "--out", "{tmp}/p.jsonl"], "batch = 0 is not allowed"),
    (["profile", "--preset", "tiny", "--reducers", "nope", "--out", "{tmp}/p.jsonl"], "unknown reducer 'nope'"),
    (["eval", "--model-path", MODEL, "--benchmark", "easy-vqa", "--limit", "0", "--out", "{tmp}/e.jsonl"],
     "--limit 0 is not allowed"),
    (["eval", "--model-path", MODEL, "--benchmark", "easy-vqa", "--limit", "-5", "--out", "{tmp}/e.jsonl"],
     "--limit -5 is not allowed"),
    (["eval", "--model-path", MODEL, "--benchmark", "easy-vqa", "--reducer", "random", "--out", "{tmp}/e.jsonl"],
     "--reducer random needs --keep"),
    (["eval", "--model-path", MODEL, "--benchmark", "easy-vqa", "--keep", "8", "--out", "{tmp}/e.jsonl"],
     "--keep 8 with --reducer none is not allowed"),
    (["eval", "--model-path", MODEL, "--benchmark", "easy-vqa", "--reducer", "random", "--keep", "", "--out",
      "{tmp}/e.jsonl"], "gives no budget"),
    (["predict", "--keep", ""], "--keep '' gives no value"),
    (["predict", "--retention", ""], "--retention '' gives no value"),
    (["validate", "results/h100-sxm/profile.jsonl", "--model", "llama-2-7b"],
     "--model 'llama-2-7b' is not in the catalog nor a spec file"),
    (["profile", "--preset", "tiny", "--reducers", "", "--out", "{tmp}/p.jsonl"], "--reducers '' names no reducer"),
    (["eval", "--model-path", MODEL, "--benchmark", "easy-vqa", "--reducer", "", "--keep", "8", "--out",
      "{tmp}/e.jsonl"], "--reducer '' names no reducer"),
    (["saliency", "--model-path", MODEL, "--easy-vqa-images", "0", "--prompt", "q?", "--out", "{tmp}/s"],
     "--easy-vqa-images 0 is not allowed; use 1.."),
    (["saliency", "--model-path", MODEL, "--easy-vqa-images", "100000", "--prompt", "q?", "--out", "{tmp}/s"],
     "--easy-vqa-images 100000 is not allowed; use 1.."),
    (["demo", "--retention", "2", "--out", "{tmp}/demo"], "--retention 2.0 is not allowed; use fractions in (0, 1]"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a[:3]) + f" [{i}]" for i, (a, _) in enumerate(CASES)])
def test_refused_with_one_line_naming_the_value(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc, err = run(argv, capsys)
    assert rc == 2 and message in err, err
    assert len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob("*.jsonl"))  # nothing was written


def test_validate_with_too_few_conditions_writes_nothing_and_says_so(tmp_path, capsys):
    import json
    rows = [json.loads(line) for line in (ROOT / "results/h100-sxm/profile.jsonl").read_text().splitlines()][:2]
    f = tmp_path / "two.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, err = run(["validate", str(f), "--calibration-out", str(tmp_path / "c.json")], capsys)
    assert rc == 2 and "no calibration could be fitted" in err and not (tmp_path / "c.json").exists()


def test_a_demo_folder_is_not_reused_without_force(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "old.txt").write_text("x")
    rc, err = run(["demo", "--out", str(tmp_path / "demo")], capsys)
    assert rc == 2 and "exists and is not empty; pass --force" in err


def test_predicting_a_batch_that_does_not_fit_warns_with_the_bytes(capsys):
    assert main(["predict", "--keep", "64", "--batch", "256", "--gpu", "l40s"]) == 0
    err = capsys.readouterr().err
    assert "warning: llava-1.5-7b at batch 256 needs about" in err and "l40s" in err
