"""Visual-token reducers: pure, batched torch functions of tensors, behind one registry.

    >>> import reducers
    >>> r = reducers.get("cluster-aggregate", order="position")
    >>> out = r.reduce(features, keep=64, generator=torch.Generator().manual_seed(0))

``reducers.available()`` lists the names. Every reducer validates its parameters when created
and its inputs when called, and declares the signals it needs. Imports nothing else of this
project.
"""

from __future__ import annotations

import difflib
import inspect

from .base import Reducer, ReducerError, Reduction
from .baselines import DivPrune, FasterVLM, PruMergePlus, ToMe, VisionZip
from .kmeans import KMeansResult, kmeans
from .sampling import RandomSampling, SpatialSampling
from .saliency import (BasicSaliency, ClusterAggregate, ClusterSaliencyAggregate, ClusterSaliencyDynamic,
                       ClusterSaliencyKeys, ClusterSaliencyStatic, first_layer_qk, saliency_scores)

_REGISTRY: dict[str, type[Reducer]] = {}


def register(cls: type[Reducer]) -> type[Reducer]:
    """Add a reducer class to the registry under ``cls.name`` (usable as a decorator)."""
    if not cls.name:
        raise ReducerError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (RandomSampling, SpatialSampling, BasicSaliency, ClusterSaliencyStatic, ClusterSaliencyDynamic,
             ClusterSaliencyAggregate, ClusterSaliencyKeys, ClusterAggregate, VisionZip, PruMergePlus, ToMe,
             FasterVLM, DivPrune):
    register(_cls)


def available() -> list[str]:
    """Registered reducer names, in registration order."""
    return list(_REGISTRY)


def get_class(name: str) -> type[Reducer]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ReducerError(f"unknown reducer {name!r}{hint}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def parameters(name: str) -> dict[str, object]:
    """A reducer's parameters and their defaults."""
    cls = get_class(name)
    if cls.__init__ is object.__init__:
        return {}
    sig = inspect.signature(cls.__init__)
    return {p.name: p.default for p in sig.parameters.values() if p.name != "self"}


def get(name: str, **params) -> Reducer:
    """A reducer by name with validated parameters."""
    cls = get_class(name)
    allowed = parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ReducerError(f"reducer {name!r} has no parameter(s) {', '.join(unknown)}; "
                           f"its parameters are {', '.join(allowed) or 'none'}")
    return cls(**params)


__all__ = ["Reducer", "ReducerError", "Reduction", "KMeansResult", "kmeans", "available", "get", "get_class",
           "register", "parameters", "first_layer_qk", "saliency_scores"]
