"""MM-Vet: open-ended answers graded by GPT-4; its scores are imported (lmms-eval) or published,
not computed here."""

from __future__ import annotations

from .base import BenchmarkError, Task, register_task


@register_task
class MMVetTask(Task):
    name = "mmvet"
    aliases = ("mm-vet", "mmvet_test")
    layout = "none: MM-Vet is graded by GPT-4; import its lmms-eval results (vtc eval --import-lmms-eval)"
    lmms_headline = "gpt_eval_score"

    def load(self, data):
        raise BenchmarkError("MM-Vet answers are graded by GPT-4, which this suite does not call; run it in lmms-eval "
                             "and import the results with vtc eval --import-lmms-eval")
