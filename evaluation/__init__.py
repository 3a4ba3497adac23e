"""Accuracy: one module per benchmark (``evaluation.tasks``), the harness with fidelity and
image ablations, lmms-eval import, the paper's published numbers, and the saliency study.
Imports ``vlm``, ``reducers`` and ``rows``; nothing of ``profiler``."""
