"""The registry and the declared parameter constraints, attacked over every registered name."""

import inspect

import pytest

import reducers
from reducers.params import validate_params


@pytest.mark.parametrize("name", reducers.available())
def test_every_parameter_has_a_constraint_and_its_default_satisfies_it(name):
    cls = reducers.get_class(name)
    params = reducers.parameters(name)
    assert set(params) <= set(cls._parameter_constraints), f"undeclared: {set(params) - set(cls._parameter_constraints)}"
    validate_params(name, cls._parameter_constraints, params)  # defaults are valid
    reducers.get(name)


@pytest.mark.parametrize("name", reducers.available())
def test_every_bad_value_is_refused_with_one_line_naming_it(name):
    cls = reducers.get_class(name)
    for param in reducers.parameters(name):
        for c in cls._parameter_constraints[param]:
            bad = c.invalid_example()
            if any(other.is_satisfied_by(bad) for other in cls._parameter_constraints[param]):
                continue
            with pytest.raises(reducers.ReducerError) as e:
                reducers.get(name, **{param: bad})
            msg = str(e.value)
            assert "\n" not in msg and f"{param} = {bad!r} is not allowed; allowed: " in msg, msg
            with pytest.raises(reducers.ReducerError):  # the same check when the class is built directly
                cls(**{param: bad})
        with pytest.raises(reducers.ReducerError, match="has no parameter"):
            reducers.get(name, no_such_parameter=1)


def test_register_refuses_a_taken_name_and_non_reducers():
    class Impostor(reducers.Reducer):
        name = "random"

        def _reduce(self, features, keep, *, generator=None):
            return None
    with pytest.raises(reducers.ReducerError, match="reducer name 'random' is taken by reducers.sampling.RandomSampling"):
        reducers.register(Impostor)
    with pytest.raises(reducers.ReducerError, match="takes a reducer class"):
        reducers.register(object)
    reducers.register(reducers.get_class("random"))  # the same class again is fine


def test_a_new_reducer_registers_with_a_decorator():
    from reducers.params import Interval
    from reducers.registry import _REGISTRY

    @reducers.register
    class EveryOther(reducers.Reducer):
        name = "test-every-other"
        _parameter_constraints = {"offset": [Interval("int", 0, 1)]}

        def __init__(self, offset: int = 0):
            self.offset = offset

        def _reduce(self, features, keep, *, generator=None):
            from reducers.base import select
            import torch
            idx = torch.arange(self.offset, features.shape[1], 2)[:keep]
            return select(features, idx.expand(features.shape[0], -1).contiguous())
    try:
        assert "test-every-other" in reducers.available("post-projector")
        with pytest.raises(reducers.ReducerError, match="offset = 2 is not allowed; allowed: an integer in \\[0, 1\\]"):
            reducers.get("test-every-other", offset=2)
        assert inspect.signature(reducers.get_class("test-every-other").__init__)
    finally:
        _REGISTRY.pop("test-every-other")
