"""The ``vtc_llava`` lmms-eval model, offline: lmms-eval's own registry and ``Instance`` objects on
the shipped tiny model (no dataset download); its answers and log-likelihoods are the suite's own
reduced ones, and results carrying its ``model_args`` are attributed by the lmms-eval import.
Skipped, with the reason, where the ``lmms-eval`` extra is not installed."""

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "llava-tiny-easyvqa"
TASK, SPLIT = "easyvqa_offline", "test"
ARGS = f"pretrained={SHIPPED},reducer=visionzip,keep=16,reducer.dominant_ratio=0.75,device=cpu"

try:
    import lmms_eval.models as lmms_models
    from lmms_eval.api.instance import Instance
    MISSING = None
except Exception as e:  # not installed
    MISSING = f"the lmms-eval extra is not installed ({type(e).__name__}: {e}); pip install -e '.[lmms-eval]'"
else:
    try:  # lmms-eval pulls PyPI's torchvision, a CUDA build that cannot load beside a CPU torch
        from transformers import AutoProcessor  # noqa: F401
    except Exception as e:
        MISSING = (f"lmms-eval is installed but transformers' AutoProcessor does not import ({e}; a torchvision "
                   "built for another torch?); pip uninstall torchvision, or install the torchvision built for this torch")

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def docs():
    from easy_vqa import get_test_image_paths, get_test_questions
    from PIL import Image
    questions, answers, image_ids = get_test_questions()
    paths = get_test_image_paths()
    return [{"question": questions[i], "answer": answers[i], "image": Image.open(paths[image_ids[i]]).convert("RGB")}
            for i in (0, 1, 2)]


@pytest.fixture(scope="module")
def lm(docs):
    if "vtc_llava" not in {e.name for e in importlib.metadata.entry_points(group="lmms_eval.models")}:
        pytest.skip("the suite's lmms-eval entry point is not installed here: pip install -e '.[lmms-eval]'")
    cls = lmms_models.get_model("vtc_llava")  # lmms-eval's registry, as `--model vtc_llava` resolves it
    model = cls.create_from_arg_string(ARGS, {"batch_size": 2, "max_batch_size": None, "device": None})
    model.task_dict = {TASK: {SPLIT: docs}}  # what lmms-eval's evaluator sets from the task's dataset
    return model


def _instance(kind, i, doc, second):
    visual = lambda d: [d["image"]]  # noqa: E731
    return Instance(request_type=kind, arguments=(doc["question"], second, visual, i, TASK, SPLIT), idx=0,
                    metadata={"task": TASK, "doc_id": i, "repeats": 1})


def _suite(lm, doc, reducer, keep):
    """The suite's own reduced greedy answer and the Runner's prefill on the same prompt."""
    import vlm
    loaded = vlm.load_folder(SHIPPED)
    r = vlm.Runner(loaded)
    req = vlm.make_request(loaded, [vlm.template_prompt(loaded, doc["question"])], loaded.preprocess([doc["image"]]))
    pre = r.forward(req, reducer, keep, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ids = r.decode(pre, 4, loaded.tokenizer.eos_token_id)[0].tolist()
    eos = loaded.tokenizer.eos_token_id
    return loaded.tokenizer.decode(ids[:ids.index(eos)] if eos in ids else ids, skip_special_tokens=True), loaded, r


def test_vtc_llava_is_registered_and_compresses_as_its_model_args_say(lm):
    import vlm
    info = vlm.compression(lm.model).describe()
    assert info["reducer"] == "visionzip" and info["keep"] == 16 and info["params"]["dominant_ratio"] == 0.75
    assert type(lm).__module__ == "evaluation.lmms_model" and lm.batch_size == 2


def test_generate_until_answers_as_the_suites_reduced_generation(lm, docs):
    import reducers
    reqs = [_instance("generate_until", i, d, {"until": ["\n"], "max_new_tokens": 4}) for i, d in enumerate(docs)]
    got = lm.generate_until(reqs)  # batches of 2: left padding inside the compressed model
    red = reducers.get("visionzip", dominant_ratio=0.75)
    assert got == [_suite(lm, d, red, 16)[0] for d in docs]
    assert sum(g == d["answer"] for g, d in zip(got, docs)) >= 2  # the trained model still answers


def test_loglikelihood_is_the_suites_reduced_prefill(lm, docs):
    import reducers
    import vlm
    red = reducers.get("visionzip", dominant_ratio=0.75)
    answers = [_suite(lm, d, red, 16)[0] for d in docs]
    i = next(i for i, d in enumerate(docs) if answers[i] == d["answer"])  # one the reduced model gets right
    doc, other = docs[i], ("no" if docs[i]["answer"] == "yes" else "yes")
    (lp, greedy), (lp_other, greedy_other) = lm.loglikelihood([_instance("loglikelihood", i, doc, c)
                                                               for c in (doc["answer"], other)])
    _, loaded, runner = _suite(lm, doc, red, 16)
    ids = lm.processor(images=[doc["image"]], text=[lm.prompt(doc["question"], 1, doc["answer"])],
                       return_tensors="pt")["input_ids"]
    cont = ids[:, len(vlm.template_prompt(loaded, doc["question"])):]
    req = vlm.make_request(loaded, [ids[0].tolist()], loaded.preprocess([doc["image"]]))
    logits = runner.forward(req, red, 16, all_logits=True).logits
    want = logits[:, -cont.shape[1] - 1:-1].float().log_softmax(-1).gather(-1, cont[..., None]).sum()
    assert cont.shape[1] >= 1 and lp == pytest.approx(float(want), abs=1e-4)
    assert greedy and not greedy_other and lp_other < lp


def test_results_with_its_model_args_are_attributed_by_the_import(tmp_path):
    from evaluation.lmms_import import import_lmms_eval
    # what lmms-eval's evaluator writes: config.model_args is the --model_args string as given
    out = tmp_path / "vtc_llava" / "20260101_000000_results.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"results": {"pope": {"pope_accuracy,none": 0.8}},
                               "config": {"model": "vtc_llava", "model_args": ARGS}}))
    rows = import_lmms_eval(tmp_path)
    summary = next(r for r in rows if r.get("summary"))
    assert summary["reducer"] == "visionzip" and summary["keep"] == 16 and summary["hook"] == "pre-projector"
    assert summary["options"]["reducer_params"] == {"dominant_ratio": "0.75"}


def test_bad_model_args_are_refused_before_loading():
    cls = lmms_models.get_model("vtc_llava") if "vtc_llava" in lmms_models.list_available_models() else None
    if cls is None:
        pytest.skip("the suite's lmms-eval entry point is not installed here: pip install -e '.[lmms-eval]'")
    with pytest.raises(ValueError, match="give keep=N with reducer"):
        cls.create_from_arg_string(f"pretrained={SHIPPED},reducer=visionzip")
    with pytest.raises(ValueError, match="unknown model_args dominant"):
        cls.create_from_arg_string(f"pretrained={SHIPPED},reducer=visionzip,keep=16,dominant=54")


def test_an_in_llm_reducer_answers_and_scores_one_request_at_a_time(lm, docs):
    import reducers
    fastv = type(lm).create_from_arg_string(f"pretrained={SHIPPED},reducer=fastv,keep=8,batch_size=2")
    fastv.task_dict = lm.task_dict
    got = fastv.generate_until([_instance("generate_until", i, d, {"until": ["\n"], "max_new_tokens": 4})
                                for i, d in enumerate(docs)])
    assert got == [_suite(fastv, d, reducers.get("fastv"), 8)[0] for d in docs]
    scored = fastv.loglikelihood([_instance("loglikelihood", i, d, got[i]) for i, d in enumerate(docs)])
    assert all(greedy for _, greedy in scored)  # its own answers are its greedy continuations
