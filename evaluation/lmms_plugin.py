"""lmms-eval's entry point for the ``vtc_llava`` model (``[project.entry-points."lmms_eval.models"]``
in pyproject.toml). lmms-eval calls :func:`manifests` when it builds its model registry; the model
class itself (:mod:`evaluation.lmms_model`) is imported only when ``--model vtc_llava`` is asked
for. Nothing here imports lmms-eval at import time."""

from __future__ import annotations

MODEL_ID = "vtc_llava"
CLASS_PATH = "evaluation.lmms_model.VtcLlava"


def manifests():
    """The registration lmms-eval reads: model id -> class path."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)]
