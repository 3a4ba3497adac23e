"""Visual-token reducers: pure, batched torch functions of tensors, behind one registry.

    >>> import reducers
    >>> r = reducers.get("cluster-aggregate", order="position")
    >>> out = r.reduce(features, keep=64, generator=torch.Generator().manual_seed(0))

``reducers.available()`` lists every method: post-projector reducers (``hook ==
"post-projector"``: ``reduce(features, keep, **signals)``) and in-LLM ones (``hook ==
"in-llm"``: ``stages`` and ``select`` on a decoder layer's q/k/hidden, driven by ``vlm``).
Parameters are validated against each class's ``_parameter_constraints`` when it is created;
inputs when it is called. Imports nothing else of this project.
"""

from __future__ import annotations

from .base import BaseReducer, Reducer, ReducerError, Reduction, identity
from .baselines import DivPrune, FasterVLM, PruMergePlus, ToMe, VisionZip
from .in_llm import DART, FastV, InLLMReducer, SparseVLM
from .kmeans import KMeansResult, kmeans
from .registry import available, get, get_class, parameters, register
from .sampling import RandomSampling, SpatialSampling
from .saliency import (BasicSaliency, ClusterAggregate, ClusterSaliencyAggregate, ClusterSaliencyDynamic,
                       ClusterSaliencyKeys, ClusterSaliencyStatic, first_layer_qk, saliency_scores)

for _cls in (RandomSampling, SpatialSampling, BasicSaliency, ClusterSaliencyStatic, ClusterSaliencyDynamic,
             ClusterSaliencyAggregate, ClusterSaliencyKeys, ClusterAggregate, VisionZip, PruMergePlus, ToMe,
             FasterVLM, DivPrune, FastV, SparseVLM, DART):
    register(_cls)

__all__ = ["BaseReducer", "Reducer", "InLLMReducer", "ReducerError", "Reduction", "KMeansResult", "kmeans",
           "available", "get", "get_class", "register", "parameters", "identity", "first_layer_qk",
           "saliency_scores"]
