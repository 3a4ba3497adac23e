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
           "--test-limit", "12", "--threads", "1"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, cwd=ROOT)
    info = json.loads((out / "training.json").read_text())
    assert set(info["test_accuracy_all_tokens"]) >= {"presence", "count", "colour_at", "shape_at", "relative",
                                                     "smallest"}
    assert info["test_questions"] == 12 and "test_accuracy_blank_image" in info
    from transformers import AutoProcessor

    from vlm import load
    lm = load(model_path=str(out), device="cpu")
    assert lm.visual_tokens == 144
    proc = AutoProcessor.from_pretrained(out)
    from evaluation import shapes
    s = shapes.generate("test", 1, seed=0)[0]
    inputs = proc(images=s.image, text="USER: <image>\n" + s.question + " ASSISTANT:", return_tensors="pt")
    assert int((inputs["input_ids"] == lm.model.config.image_token_id).sum()) == 144
