"""Visual-token reducers: pure, batched torch functions of tensors, behind one registry.

    >>> import reducers
    >>> r = reducers.get("cluster-aggregate", order="position")
    >>> out = r.reduce(features, keep=64, generator=torch.Generator().manual_seed(0))

``reducers.available()`` lists every method: pre-projector reducers (``hook == "pre-projector"``:
``reduce(features, keep, **signals)`` on the vision tower's feature-layer hidden state, CLS at
index 0, with the ``tower_*`` signals; VisionZip, PruMerge+, ToMe and FasterVLM, whose ``stage``
parameter can move them after the projector), post-projector ones (``hook ==
"post-projector"``: the same call on the projected tokens) and in-LLM ones (``hook ==
"in-llm"``: ``stages`` and ``select`` on a decoder layer's q/k/hidden, driven by ``vlm``).
Parameters are validated against each class's ``_parameter_constraints`` when it is created;
inputs when it is called. Imports nothing else of this project.
"""

from __future__ import annotations

from .base import BaseReducer, Reducer, ReducerError, Reduction, identity
from .baselines import DivPrune, FasterVLM, VisionZip, divprune_select
from .prumerge import PruMergePlus, prumerge
from .tome import ToMe, tome_merge, tome_schedule
from .in_llm import DART, FastV, InLLMReducer, SparseVLM, fastv_select
from .kmeans import KMeansResult, kmeans
from .registry import available, get, get_class, parameters, register
from .sampling import RandomSampling, SpatialSampling
from .saliency import (BasicSaliency, ClusterAggregate, ClusterSaliencyAggregate, ClusterSaliencyDynamic,
                       ClusterSaliencyKeys, ClusterSaliencyStatic)
from .saliency_score import cross_modal_saliency, first_layer_qk, saliency_scores

for _cls in (RandomSampling, SpatialSampling, BasicSaliency, ClusterSaliencyStatic, ClusterSaliencyDynamic,
             ClusterSaliencyAggregate, ClusterSaliencyKeys, ClusterAggregate, VisionZip, PruMergePlus, ToMe,
             FasterVLM, DivPrune, FastV, SparseVLM, DART):
    register(_cls)

__all__ = ["BaseReducer", "Reducer", "InLLMReducer", "ReducerError", "Reduction", "KMeansResult", "kmeans",
           "available", "get", "get_class", "register", "parameters", "identity", "first_layer_qk",
           "saliency_scores", "cross_modal_saliency", "divprune_select", "fastv_select", "prumerge", "tome_merge",
           "tome_schedule"]
