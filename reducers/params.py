"""Parameter constraints, declared once per reducer class and checked in one place.

Each class lists ``_parameter_constraints = {"name": [constraint, ...]}`` (the way
scikit-learn's estimators do); a value is valid when it satisfies any constraint of its list.
:func:`validate_params` is called for every constructor (``BaseReducer.__init_subclass__``
wraps ``__init__``), so ``reducers.get("visionzip", dominant_ratio=2)`` and
``VisionZip(dominant_ratio=2)`` fail the same way, with one line naming the value and what is
allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class ReducerError(ValueError):
    """A bad parameter, input or signal; the message names the value and what is allowed."""


ParamError = ReducerError  # a constructor argument outside its declared constraints


class Constraint:
    def is_satisfied_by(self, value) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def invalid_example(self):
        """A value this constraint rejects (for the common test over every reducer)."""
        return object()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


@dataclass(frozen=True)
class Interval(Constraint):
    """Numbers of ``kind`` ("int" or "real") between ``left`` and ``right`` (None: unbounded);
    ``closed``: "both", "left", "right" or "neither"."""

    kind: str
    left: float | None
    right: float | None
    closed: str = "both"

    def is_satisfied_by(self, v) -> bool:
        if not (_is_int(v) if self.kind == "int" else _is_real(v)):
            return False
        lo_ok = self.left is None or (v >= self.left if self.closed in ("both", "left") else v > self.left)
        hi_ok = self.right is None or (v <= self.right if self.closed in ("both", "right") else v < self.right)
        return lo_ok and hi_ok

    def __str__(self) -> str:
        what = "an integer" if self.kind == "int" else "a number"
        lo = "(-inf" if self.left is None else ("[" if self.closed in ("both", "left") else "(") + f"{self.left:g}"
        hi = "inf)" if self.right is None else f"{self.right:g}" + ("]" if self.closed in ("both", "right") else ")")
        return f"{what} in {lo}, {hi}"

    def invalid_example(self):
        if self.left is not None:
            return self.left - 1
        return self.right + 1 if self.right is not None else "not a number"


@dataclass(frozen=True)
class Options(Constraint):
    values: tuple

    def is_satisfied_by(self, v) -> bool:
        return isinstance(v, (str, int, float)) and not isinstance(v, bool) and v in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))

    def invalid_example(self):
        return "no-such-option"


class Boolean(Constraint):
    def is_satisfied_by(self, v) -> bool:
        return isinstance(v, bool)

    def __str__(self) -> str:
        return "True or False"

    def invalid_example(self):
        return "yes"


class NoneValue(Constraint):
    def is_satisfied_by(self, v) -> bool:
        return v is None

    def __str__(self) -> str:
        return "None"


@dataclass(frozen=True)
class IntSequence(Constraint):
    """A tuple or list of ``length`` integers (any length if None) >= ``minimum``, strictly
    increasing when ``increasing``."""

    length: int | None = None
    minimum: int = 1
    increasing: bool = False

    def is_satisfied_by(self, v) -> bool:
        if not isinstance(v, (tuple, list)) or not v or not all(_is_int(x) and x >= self.minimum for x in v):
            return False
        if self.length is not None and len(v) != self.length:
            return False
        return not self.increasing or all(a < b for a, b in zip(v, v[1:]))

    def __str__(self) -> str:
        n = f"{self.length} " if self.length else ""
        inc = "strictly increasing " if self.increasing else ""
        return f"a sequence of {n}{inc}integers >= {self.minimum}"

    def invalid_example(self):
        return (self.minimum - 1,) * (self.length or 1)


def validate_params(owner: str, constraints: dict[str, list[Constraint]], params: dict) -> None:
    """Raise ParamError naming the first parameter that satisfies none of its constraints."""
    for name, value in params.items():
        allowed = constraints.get(name)
        if allowed is None:
            raise ParamError(f"{owner}: parameter {name!r} has no declared constraint (declare it in "
                             "_parameter_constraints)")
        if not any(c.is_satisfied_by(value) for c in allowed):
            raise ParamError(f"{owner}: {name} = {value!r} is not allowed; allowed: "
                             + " or ".join(str(c) for c in allowed))
