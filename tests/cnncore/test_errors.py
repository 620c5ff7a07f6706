"""The exception family and the public argument checks of cnncore."""

from __future__ import annotations

import inspect

import pytest

import cnncore
from cnncore import checks, errors, geometry, graph, network_shapes, onnx, validation
from cnncore.errors import CnnError, ParameterError, ShapeError


def test_every_public_exception_class_is_defined_in_errors() -> None:
    # Private control-flow signals (onnx's _BatchBoundError) never reach a caller.
    for module in vars(cnncore).values():
        if not inspect.ismodule(module) or not module.__name__.startswith("cnncore."):
            continue
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, Exception) and name[0] != "_":
                assert value.__module__ in ("cnncore.errors", "builtins"), (module, name)


@pytest.mark.parametrize("name", errors.__all__)
def test_one_family_with_a_value_error_base(name: str) -> None:
    assert issubclass(getattr(errors, name), ValueError)
    assert issubclass(getattr(errors, name), CnnError)


def test_old_import_paths_name_the_same_classes() -> None:
    assert graph.GraphError is errors.GraphError is cnncore.GraphError
    assert network_shapes.LayerError is errors.LayerError is cnncore.LayerError
    assert onnx.OnnxImportError is errors.OnnxImportError
    assert geometry._check_shape is checks.check_shape
    assert validation.as_float_array is checks.as_float_array


@pytest.mark.parametrize(
    ("shape", "kwargs", "error", "message"),
    [
        ((2, 0), {}, ShapeError, r"x has an empty dimension: shape \(2, 0\)"),
        ((2, 3), {"ndim": 4}, ShapeError, r"x must be 4-D, got shape \(2, 3\) \(2-D\)"),
        ((2,), {"min_ndim": 2}, ShapeError, r"at least 2 dimensions, got shape \(2,\)"),
        ("ab", {}, ShapeError, r"x must be a shape \(a sequence of integers\), got 'ab'"),
        ((2, -1), {}, ParameterError, r"x dimension 1 must be >= 0, got -1"),
        ((2, 1.5), {}, ParameterError, r"x dimension 1 must be an integer, got 1\.5"),
    ],
)
def test_check_shape_refuses(
    shape: object, kwargs: dict[str, int], error: type[CnnError], message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        checks.check_shape(shape, "x", **kwargs)
    assert info.value.arg == "x"


def test_check_shape_accepts_lists_and_numpy_ints() -> None:
    import numpy as np

    assert checks.check_shape([2, np.int64(3)], "x", 2) == (2, 3)


def test_short_repr_cuts_long_values() -> None:
    assert checks.short_repr("x" * 100, 10) == "'xxxxxx..."
    assert checks.short_repr(12) == "12"
