"""easy-vqa: the test split of the easy-vqa package (offline), exact match."""

from __future__ import annotations


from .base import BenchmarkError, Sample, Task, register_task


def load_easy_vqa(_folder=None) -> list[Sample]:
    try:
        from easy_vqa import get_test_image_paths, get_test_questions
    except ImportError:
        raise BenchmarkError("the easy-vqa package is not installed (pip install easy-vqa)") from None
    qs, answers, ids = get_test_questions()
    paths = get_test_image_paths()
    return [Sample(str(i), paths[im], q, [a], "exact") for i, (q, a, im) in enumerate(zip(qs, answers, ids))]


@register_task
class EasyVQATask(Task):
    name = "easy-vqa"
    aliases = ("easy_vqa", "easyvqa")
    layout = "none: the test split of the easy-vqa package (offline)"
    lmms_headline = None
    needs_data = False

    def load(self, data):
        return load_easy_vqa(data)
