"""Fully connected layer: values, gradients by central differences, dtypes and errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnncore import DtypeError, ShapeError, linear_backward, linear_forward
from cnncore.gradcheck import assert_gradient
from tests.helpers import assert_close


@pytest.mark.parametrize("x_shape", [(4, 6), (3, 2, 2, 3)], ids=["2d", "4d"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_forward_is_flattened_matmul(
    rng: np.random.Generator, x_shape: tuple[int, ...], with_bias: bool
) -> None:
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((int(np.prod(x_shape[1:])), 5))
    b = rng.standard_normal(5) if with_bias else None
    out, _ = linear_forward(x, w, b)
    expected = x.reshape(x.shape[0], -1) @ w + (0 if b is None else b)
    assert_close(out, expected)


@pytest.mark.parametrize("x_shape", [(4, 6), (3, 2, 2, 3)], ids=["2d", "4d"])
def test_gradients_match_central_differences(
    rng: np.random.Generator, x_shape: tuple[int, ...]
) -> None:
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((int(np.prod(x_shape[1:])), 5))
    b = rng.standard_normal(5)
    out, cache = linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = linear_backward(dout, cache)
    assert dx.shape == x.shape
    assert db is not None

    def f() -> np.ndarray:
        return linear_forward(x, w, b)[0]

    assert_gradient(f, x, dx, dout)
    assert_gradient(f, w, dw, dout)
    assert_gradient(f, b, db, dout)


def test_no_bias_gives_db_none(rng: np.random.Generator) -> None:
    out, cache = linear_forward(rng.standard_normal((2, 3)), rng.standard_normal((3, 4)))
    assert linear_backward(np.ones_like(out), cache)[2] is None


@pytest.mark.parametrize(
    ("x_dtype", "w_dtype", "expected"),
    [
        (np.float32, np.float32, np.float32),
        (np.float64, np.float64, np.float64),
        (np.float32, np.float64, np.float64),
        (np.int64, np.float32, np.float64),
        (np.bool_, np.int32, np.float64),
    ],
    ids=["f32", "f64", "mixed", "int-x", "bool-int"],
)
def test_dtypes(x_dtype: type, w_dtype: type, expected: type) -> None:
    x = np.ones((2, 3), dtype=x_dtype)
    w = np.ones((3, 4), dtype=w_dtype)
    out, cache = linear_forward(x, w)
    dx, dw, _ = linear_backward(np.ones((2, 4)), cache)
    assert out.dtype == dx.dtype == dw.dtype == np.dtype(expected)


@pytest.mark.parametrize(
    ("x", "w", "b", "error", "arg"),
    [
        pytest.param(np.ones(3), np.ones((3, 2)), None, ShapeError, "x", id="1d-x"),
        pytest.param(
            np.ones((2, 3)), np.ones((4, 2)), None, ShapeError, "w", id="feature-mismatch"
        ),
        pytest.param(np.ones((2, 3)), np.ones((3, 2, 1)), None, ShapeError, "w", id="3d-w"),
        pytest.param(
            np.ones((2, 3)), np.ones((3, 2)), np.ones(3), ShapeError, "b", id="bias-length"
        ),
        pytest.param(np.ones((0, 3)), np.ones((3, 2)), None, ShapeError, "x", id="empty-batch"),
        pytest.param(
            np.ones((2, 3), complex), np.ones((3, 2)), None, DtypeError, "x", id="complex"
        ),
        pytest.param(
            np.ones((2, 3)), np.array([["a"] * 2] * 3), None, DtypeError, "w", id="strings"
        ),
    ],
)
def test_rejected_arguments(x: Any, w: Any, b: Any, error: type, arg: str) -> None:
    with pytest.raises(error) as info:
        linear_forward(x, w, b)
    assert info.value.arg == arg


def test_backward_rejects_wrong_dout_shape() -> None:
    _, cache = linear_forward(np.ones((2, 3)), np.ones((3, 4)))
    with pytest.raises(ShapeError) as info:
        linear_backward(np.ones((2, 3)), cache)
    assert info.value.arg == "dout"
