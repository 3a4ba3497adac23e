"""scripts/train_tiny_shapes.py runs end to end (seconds of training) and writes a model that
loads the ordinary way: 144 visual tokens, AutoProcessor files, training.json with the per-kind
accuracy with and without the image."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_the_shapes_training_script_writes_a_loadable_model(tmp_path):
    out = tmp_path / "shapes-model"
    cmd = [sys.executable, str(ROOT / "scripts" / "train_tiny_shapes.py"), "--out", str(out), "--vision-minutes",
           "0.02", "--minutes", "0.02", "--pool", "32", "--batch", "8", "--eval-every", "1000", "--eval-n", "6",
           "--test-limit", "12", "--threads", "1", "--locate", "2"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, cwd=ROOT)
    info = json.loads((out / "training.json").read_text())
    assert set(info["test_accuracy_all_tokens"]) >= {"presence", "count", "colour_at", "shape_at", "relative",
                                                     "smallest"}
    assert info["test_questions"] == 12 and "test_accuracy_blank_image" in info
    assert info["language_stage"]["locate_questions"] == 2
    from transformers import AutoProcessor

    from vlm import load
    lm = load(model_path=str(out), device="cpu")
    assert lm.visual_tokens == 144
    proc = AutoProcessor.from_pretrained(out)
    from evaluation import shapes
    s = shapes.generate("test", 1, seed=0)[0]
    inputs = proc(images=s.image, text="USER: <image>\n" + s.question + " ASSISTANT:", return_tensors="pt")
    assert int((inputs["input_ids"] == lm.model.config.image_token_id).sum()) == 144


def _script():
    import importlib
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module("train_tiny_shapes")
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def _asked(make, scenes: int, seed: int, n: int, rng):
    """(scene, make(its objects, rng, n)) over train scenes."""
    from evaluation import shapes
    for s in shapes.generate("train", scenes, seed=seed):
        yield s, make(s.objects, rng, n)


def test_extra_questions_are_answered_by_the_benchmark_oracle_with_allowed_answers():
    import numpy as np

    from evaluation import shapes
    T = _script()
    rng = np.random.default_rng(0)
    seen = set()
    for s, qa in _asked(T.extra_questions, 60, 3, 11, rng):
        assert 8 <= len(qa) <= 11
        for kind, q, a in qa:
            assert a == shapes.answer(q, s.objects) and a in shapes.KIND_ANSWERS[kind]
            seen.add((kind, a) if kind == "presence" else kind)
    assert seen == set(shapes.KINDS) - {"presence"} | {("presence", "yes"), ("presence", "no")}
    s = shapes.generate("train", 1, seed=3)[0]
    only = T.extra_questions_of({"presence", "relative"}, s.objects, rng, 11)
    assert len(only) == 11 and {k for k, _, _ in only} <= {"presence", "relative"}


def test_locate_questions_name_one_shape_of_the_scene_and_answer_its_cell():
    import numpy as np

    T = _script()
    rng = np.random.default_rng(0)
    answers = set()
    for s, qa in _asked(T.locate_questions, 40, 5, 3, rng):
        assert len(qa) == min(3, len(s.objects))
        for kind, q, a in qa:
            colour, shape = q.split()[1:3]
            named = [o for o in s.objects if (o.colour, o.shape) == (colour, shape)]
            assert kind == "locate" and len(named) == 1 and a == named[0].position
            answers.add(a)
    assert "center" in answers and "top left" in answers  # one word and two
    before = rng.bit_generator.state
    assert T.locate_questions(s.objects, rng, 0) == [] and rng.bit_generator.state == before  # draws nothing
    tok, model, pre, encode = T.build(T.vocabulary(), T.KEY, drop_spaces=True)
    prefix = encode("x", None)[0]
    n_pre = prefix.index(model.config.image_token_id) + 144
    fast = T.FastEncode(tok, encode, n_pre)
    fast.check("the red circle is in the?", "bottom right")  # as the tokenizer encodes it
    ids, labels = fast("the red circle is in the?", "bottom right")
    assert [tok.convert_ids_to_tokens(i) for i in labels if i != -100][:2] == ["bottom", "right"]


def test_the_training_script_refuses_bad_arguments_before_any_work():
    for args, said in ((["--kinds", "presence,colour"], "--kinds 'presence,colour' is not allowed"),
                       (["--init", "x", "--vision-minutes", "3"], "--vision-minutes 3.0 with --init is not allowed"),
                       (["--warmup", "0"], "--warmup 0 is not allowed"),
                       (["--locate", "9"], "--locate 9 is not allowed"),
                       (["--locate", "-1"], "--locate -1 is not allowed")):
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_tiny_shapes.py"), *args],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 2 and said in r.stderr, r.stderr


def test_packed_questions_see_the_image_and_themselves_only_at_their_own_positions():
    import torch
    T = _script()
    prefix = [1, 2, 3]
    segs = [[([10, 11], [-100, 11]), ([20, 21, 22], [-100, -100, 22])], [([30], [30])]]
    ids, lab, pos, mask = T.packed_batch(prefix, segs, pad=0)
    assert ids.tolist() == [[1, 2, 3, 10, 11, 20, 21, 22], [1, 2, 3, 30, 0, 0, 0, 0]]
    assert pos[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]  # each question restarts after the image
    m = mask[0, 0]
    assert m[5].tolist() == [True, True, True, False, False, True, False, False]  # 2nd question: image + itself
    assert m[4].tolist() == [True, True, True, True, True, False, False, False]
    assert not m.triu(1).any()  # causal
    assert (mask[1, 0, :, 4:] == torch.eye(8, dtype=torch.bool)[:, 4:]).all()  # nobody else sees padding
    assert lab[1, 4:].tolist() == [-100] * 4


def test_packed_forward_equals_the_ordinary_forward_and_the_check_catches_a_difference():
    import pytest
    import torch

    from evaluation import shapes
    T = _script()
    torch.manual_seed(0)
    tok, model, pre, encode = T.build(T.vocabulary(), T.KEY, drop_spaces=True)
    n_vis = 144
    prefix = encode("x", None)[0]
    at = prefix.index(model.config.image_token_id)
    prefix = prefix[:at + n_vis]
    fast = T.FastEncode(tok, encode, len(prefix))
    test = shapes.generate("test", 2, seed=0)
    for s in test:
        fast.check(s.question, s.answer)
    T.check_packing(model, tok, fast, prefix, slice(at, at + n_vis), pre, test)  # passes
    with pytest.raises(SystemExit, match="differs"):  # the same check with the positions not restarted
        T.check_packing(model, tok, fast, prefix, slice(at, at + n_vis), pre, test, _restart=False)


def test_the_shipped_shapes_model_looks_at_the_image():
    """models/llava-tiny-shapes (the demo's default) through the ordinary harness: with its images it
    beats the blank-image floor by a wide margin on the first 60 test questions."""
    from evaluation.harness import EvalOptions, Evaluator, run_eval
    from evaluation.tasks import load_benchmark
    from vlm import load

    lm = load(model_path=str(ROOT / "models" / "llava-tiny-shapes"), device="cpu")
    assert lm.visual_tokens == 144
    samples = load_benchmark("shapes", None)
    ev = Evaluator(lm)
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "e.jsonl"
        run_eval(lm, "shapes", samples, "none", None, out, limit=60, options=EvalOptions(fidelity=False),
                 evaluator=ev)
        run_eval(lm, "shapes", samples, "none", None, out, limit=60,
                 options=EvalOptions(fidelity=False, ablate_image="blank"), evaluator=ev)
        rows = [json.loads(x) for x in out.read_text().splitlines()]
    per_sample = [r for r in rows if r["kind"] == "eval" and not r["summary"]]
    seen = [r for r in per_sample if not r["options"]["ablate_image"]]
    blank = [r for r in per_sample if r["options"]["ablate_image"] == "blank"]
    assert len(seen) == len(blank) == 60
    acc = sum(r["score"] for r in seen) / 60
    acc_blank = sum(r["score"] for r in blank) / 60
    assert acc >= 0.7 and acc - acc_blank >= 0.3, (acc, acc_blank)
