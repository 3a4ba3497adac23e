"""One registry of every reducer, post-projector and in-LLM, by name."""

from __future__ import annotations

import difflib
import inspect

from .base import BaseReducer, ReducerError

_REGISTRY: dict[str, type[BaseReducer]] = {}

#: where a reducer acts: on the vision tower's features before the projector, on the projected
#: tokens, or inside the LLM. A class with a ``stage`` parameter is listed under its default.
HOOKS = ("pre-projector", "post-projector", "in-llm")


def register(cls: type[BaseReducer]) -> type[BaseReducer]:
    """Add a reducer class under ``cls.name`` (usable as a decorator); a taken name is refused."""
    if not isinstance(cls, type) or not issubclass(cls, BaseReducer):
        raise ReducerError(f"register() takes a reducer class (a subclass of reducers.BaseReducer), not {cls!r}")
    if not cls.name:
        raise ReducerError(f"{cls.__name__} has no name")
    if cls.hook not in HOOKS:
        raise ReducerError(f"{cls.__name__}.hook = {cls.hook!r} is not allowed; use one of "
                           + ", ".join(map(repr, HOOKS)))
    taken = _REGISTRY.get(cls.name)
    if taken is not None and taken is not cls:
        raise ReducerError(f"reducer name {cls.name!r} is taken by {taken.__module__}.{taken.__qualname__}; "
                           "choose another name")
    _REGISTRY[cls.name] = cls
    return cls


def available(hook: str | None = None) -> list[str]:
    """Registered names in registration order (only those whose class-level (default) ``hook``
    is ``hook`` when given)."""
    return [n for n, c in _REGISTRY.items() if hook is None or c.hook == hook]


def get_class(name: str) -> type[BaseReducer]:
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
    sig = inspect.signature(inspect.unwrap(cls.__init__))
    return {p.name: p.default for p in sig.parameters.values() if p.name != "self"}


def get(name: str, **params) -> BaseReducer:
    """A reducer by name, its parameters validated against its declared constraints."""
    cls = get_class(name)
    unknown = sorted(set(params) - set(parameters(name)))
    if unknown:
        raise ReducerError(f"reducer {name!r} has no parameter(s) {', '.join(unknown)}; "
                           f"its parameters are {', '.join(parameters(name)) or 'none'}")
    return cls(**params)
