"""Each loader on a miniature copy of its benchmark's file layout."""

import base64
import re
import io
import json

import pytest
from PIL import Image

from evaluation.tasks import BenchmarkError, load_benchmark


def png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)
    return path


def test_pope(tmp_path):
    png(tmp_path / "images" / "a.jpg")
    (tmp_path / "coco_pope_random.json").write_text(
        json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "no"}) + "\n")
    s = load_benchmark("pope", str(tmp_path))
    assert len(s) == 1 and s[0].answers == ["no"] and s[0].metric == "pope" and s[0].image.endswith("images/a.jpg")


def test_gqa(tmp_path):
    png(tmp_path / "images" / "n1.jpg")
    (tmp_path / "testdev_balanced_questions.json").write_text(
        json.dumps({"q1": {"imageId": "n1", "question": "What color?", "answer": "red"}}))
    s = load_benchmark("gqa", str(tmp_path))
    assert s[0].sample_id == "q1" and s[0].answers == ["red"] and "single word" in s[0].question


def test_vqav2(tmp_path):
    png(tmp_path / "images" / "COCO_val2014_000000000042.jpg")
    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(
        json.dumps({"questions": [{"question_id": 7, "image_id": 42, "question": "How many?"}]}))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(
        json.dumps({"annotations": [{"question_id": 7, "answers": [{"answer": "2"}] * 10}]}))
    s = load_benchmark("vqav2", str(tmp_path))
    assert s[0].answers == ["2"] * 10 and s[0].image.endswith("COCO_val2014_000000000042.jpg")


def test_textvqa_and_vizwiz(tmp_path):
    png(tmp_path / "t" / "train_images" / "img1.jpg")
    (tmp_path / "t" / "TextVQA_0.5.1_val.json").write_text(json.dumps(
        {"data": [{"question_id": 3, "image_id": "img1", "question": "What brand?", "answers": ["nike"] * 10}]}))
    assert load_benchmark("textvqa", str(tmp_path / "t"))[0].answers[0] == "nike"
    png(tmp_path / "v" / "val" / "VizWiz_val_1.jpg")
    (tmp_path / "v" / "val.json").write_text(json.dumps(
        [{"image": "VizWiz_val_1.jpg", "question": "What is it?", "answers": [{"answer": "unanswerable"}] * 10}]))
    s = load_benchmark("vizwiz", str(tmp_path / "v"))
    assert s[0].answers[0] == "unanswerable" and "Unanswerable" in s[0].question


def test_scienceqa_keeps_test_questions_with_an_image(tmp_path):
    png(tmp_path / "images" / "test" / "5" / "image.png")
    (tmp_path / "problems.json").write_text(json.dumps({
        "5": {"question": "Which?", "choices": ["x", "y", "z"], "answer": 2, "image": "image.png", "split": "test",
              "hint": "a hint"},
        "6": {"question": "No image", "choices": ["x", "y"], "answer": 0, "image": None, "split": "test"},
        "7": {"question": "Train", "choices": ["x", "y"], "answer": 0, "image": "image.png", "split": "train"}}))
    s = load_benchmark("scienceqa", str(tmp_path))
    assert [x.sample_id for x in s] == ["5"] and s[0].answers == ["C"] and "C. z" in s[0].question
    assert s[0].extra["n_options"] == 3 and "Context: a hint" in s[0].question


def test_mmbench_tsv_with_base64_images(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, format="JPEG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    (tmp_path / "mmbench_dev_en.tsv").write_text(
        "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n"
        f"11\tWhat color?\tnan\tred\tblue\tnan\tnan\tB\tcolor\t{b64}\n")
    s = load_benchmark("mmbench", str(tmp_path))
    assert s[0].answers == ["B"] and s[0].extra["n_options"] == 2 and Image.open(s[0].image).size == (8, 8)


def test_mme_both_layouts(tmp_path):
    png(tmp_path / "color" / "images" / "000.jpg")
    (tmp_path / "color" / "questions_answers_YN").mkdir(parents=True)
    (tmp_path / "color" / "questions_answers_YN" / "000.txt").write_text("Is it red?\tYes\nIs it blue?\tNo\n")
    png(tmp_path / "OCR" / "001.png")
    (tmp_path / "OCR" / "001.txt").write_text("Does it say hi?\tYes\n")
    s = load_benchmark("mme", str(tmp_path))
    assert [x.extra["subtask"] for x in s] == ["OCR", "color", "color"]
    assert s[1].answers == ["yes"] and s[1].image.endswith("000.jpg")


def test_generic_jsonl(tmp_path):
    png(tmp_path / "a.png")
    (tmp_path / "bench.jsonl").write_text(
        json.dumps({"image": "a.png", "question": "Pick", "answers": ["A"], "metric": "choice", "choices": ["p", "q"]})
        + "\n")
    s = load_benchmark("jsonl", str(tmp_path / "bench.jsonl"))
    assert s[0].metric == "choice" and "A. p" in s[0].question


def test_easy_vqa_test_split():
    s = load_benchmark("easy-vqa", None)
    assert len(s) == 9673 and s[0].metric == "exact"


@pytest.mark.parametrize("setup, name, message", [
    (lambda p: None, "gqa", "no GQA questions file"),
    (lambda p: (p / "testdev_balanced_questions.json").write_text("{not json"), "gqa", "malformed JSON"),
    (lambda p: (p / "testdev_balanced_questions.json").write_text(json.dumps({"q": {"question": "x"}})), "gqa",
     "missing field(s) imageId, answer"),
    (lambda p: (p / "x.json").write_text(json.dumps({"text": "?"}) + "\n"), "pope", "missing field(s) image, label"),
    (lambda p: None, "imagenet", "unknown benchmark 'imagenet'"),
])
def test_bad_benchmark_folders(tmp_path, setup, name, message):
    setup(tmp_path)
    with pytest.raises(BenchmarkError, match=re.escape(message)):
        load_benchmark(name, str(tmp_path))
