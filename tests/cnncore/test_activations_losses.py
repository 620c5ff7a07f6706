"""ReLU and softmax cross-entropy: values, gradients, stability and errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnncore import (
    DtypeError,
    ParameterError,
    ShapeError,
    activations,
    relu_backward,
    relu_forward,
    softmax_cross_entropy,
)
from cnncore.activations import masked_gradient
from cnncore.gradcheck import assert_gradient
from tests.helpers import assert_close

# --------------------------------------------------------------------------- relu


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_relu_values_and_dtype(dtype: type) -> None:
    x = np.array([[-2.0, 0.0, 3.0]], dtype=dtype)
    out, cache = relu_forward(x)
    np.testing.assert_array_equal(out, [[0.0, 0.0, 3.0]])
    dx = relu_backward(np.array([[1.0, 1.0, 1.0]]), cache)
    np.testing.assert_array_equal(dx, [[0.0, 0.0, 1.0]])  # subgradient 0 at 0
    assert out.dtype == dx.dtype == np.dtype(dtype)


def test_relu_gradient_matches_central_differences(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 2, 4, 4))
    x += np.where(x >= 0, 0.1, -0.1)  # away from the kink at 0
    out, cache = relu_forward(x)
    dout = rng.standard_normal(out.shape)
    assert_gradient(lambda: relu_forward(x)[0], x, relu_backward(dout, cache), dout)


@pytest.mark.parametrize(
    ("x", "error"),
    [
        pytest.param(np.float64(1.0), ShapeError, id="0d"),
        pytest.param(np.ones((2, 0)), ShapeError, id="empty"),
        pytest.param(np.ones(3, dtype=complex), DtypeError, id="complex"),
    ],
)
def test_relu_rejects(x: Any, error: type) -> None:
    with pytest.raises(error) as info:
        relu_forward(x)
    assert info.value.arg == "x"


@pytest.mark.parametrize(
    "special",
    ["none", "inf-dropped", "nan-kept", "nan-dropped", "negative-dropped"],
)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_gradient_is_np_where_bit_for_bit(
    special: str, dtype: type, strided: bool, rng: np.random.Generator
) -> None:
    dout = rng.standard_normal((3, 4, 5)).astype(dtype)
    keep = rng.random(dout.shape) < 0.5
    if strided:  # views of every other column: the bits are read through the strides
        dout, keep = dout[:, :, ::2], keep[:, :, ::2]
    dropped, kept = np.flatnonzero(~keep), np.flatnonzero(keep)
    if special == "inf-dropped":
        dout.flat[dropped[:2]] = [np.inf, -np.inf]
    elif special == "nan-kept":
        dout.flat[kept[0]] = np.nan
    elif special == "nan-dropped":
        dout.flat[dropped[0]] = np.nan
    elif special == "negative-dropped":
        dout.flat[dropped] = -np.abs(dout.flat[dropped])  # dout * 0 would be -0.0
    got = masked_gradient(dout, keep)
    want = np.where(keep, dout, dtype(0))
    assert got.dtype == want.dtype
    # The same bits: the value, NaN where NaN, and the sign of every zero (+0.0).
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("layout", ["contiguous", "in-place", "strided"])
@pytest.mark.parametrize("size", [3, 7 * 5 + 3], ids=["one-block", "blocks-and-a-short-one"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_into_is_np_maximum_bit_for_bit(
    layout: str, size: int, dtype: type, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activations, "_ZERO_BLOCK", 7)
    monkeypatch.setattr(activations, "_zeros", {})
    x = rng.standard_normal((2, size)).astype(dtype)
    x[:, :3] = [[np.nan, -np.nan, -0.0], [0.0, np.inf, -np.inf]]
    want = np.maximum(x, 0)
    if layout == "strided":
        x, want = x[:, ::2], want[:, ::2]
    out = x if layout == "in-place" else np.empty_like(x)
    got = activations.relu_into(x, out)
    assert got is out
    np.testing.assert_array_equal(got, want)  # NaN where NaN
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))  # -NaN stays, -0.0 -> +0.0


def test_relu_backward_rejects_wrong_dout_shape() -> None:
    _, cache = relu_forward(np.ones((2, 3)))
    with pytest.raises(ShapeError) as info:
        relu_backward(np.ones((3, 2)), cache)
    assert info.value.arg == "dout"


# --------------------------------------------------------------------------- softmax cross-entropy


def test_loss_matches_direct_formula(rng: np.random.Generator) -> None:
    scores = rng.standard_normal((5, 4))
    y = np.array([0, 3, 1, 1, 2])
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(probs[np.arange(5), y]))
    loss, dscores = softmax_cross_entropy(scores, y)
    assert loss == pytest.approx(
        expected, rel=1e-12
    )  # a mean of positive terms (no cancellation): a few eps relative; 1e-12 = 4500 eps
    onehot = np.eye(4)[y]
    assert_close(dscores, (probs - onehot) / 5)


def test_uniform_scores_give_log_c() -> None:
    loss, _ = softmax_cross_entropy(np.zeros((3, 10)), np.array([0, 5, 9]))
    assert loss == pytest.approx(np.log(10), rel=1e-15)  # log-sum-exp of 10 zeros: a few eps


def test_a_perfect_single_class_score_is_zero_not_negative_zero() -> None:
    loss, _ = softmax_cross_entropy(np.zeros((3, 1)), np.zeros(3, dtype=int))
    assert loss == 0.0
    assert np.copysign(1.0, loss) == 1.0


def test_dscores_matches_central_differences(rng: np.random.Generator) -> None:
    scores = rng.standard_normal((4, 6))
    y = np.array([5, 0, 2, 2])
    _, dscores = softmax_cross_entropy(scores, y)
    assert_gradient(lambda: softmax_cross_entropy(scores, y)[0], scores, dscores)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_large_scores_are_stable(dtype: type) -> None:
    scores = np.array([[1000.0, 0.0], [0.0, 1000.0]], dtype=dtype)
    loss, dscores = softmax_cross_entropy(scores, np.array([1, 1]))
    assert loss == pytest.approx(500.0, rel=1e-6)  # eps32 · 1000 / 500: 2.4e-7 relative
    assert np.isfinite(dscores).all()
    assert dscores.dtype == np.dtype(dtype)


@pytest.mark.parametrize(
    ("scores", "y", "error", "arg"),
    [
        pytest.param(np.zeros((2, 3)), np.array([0, 3]), ParameterError, "y", id="label-too-big"),
        pytest.param(np.zeros((2, 3)), np.array([-1, 0]), ParameterError, "y", id="negative-label"),
        pytest.param(np.zeros((2, 3)), np.array([0.0, 1.0]), DtypeError, "y", id="float-labels"),
        pytest.param(np.zeros((2, 3)), np.array([True, False]), DtypeError, "y", id="bool-labels"),
        pytest.param(np.zeros((2, 3)), np.array([0, 1, 2]), ShapeError, "y", id="length"),
        pytest.param(np.zeros((2, 3)), np.array([[0, 1]]), ShapeError, "y", id="2d-labels"),
        pytest.param(np.zeros(3), np.array([0]), ShapeError, "scores", id="1d-scores"),
        pytest.param(np.zeros((2, 0)), np.array([0, 0]), ShapeError, "scores", id="no-classes"),
        pytest.param(np.zeros((1, 2), complex), np.array([0]), DtypeError, "scores", id="complex"),
    ],
)
def test_loss_rejects(scores: Any, y: Any, error: type, arg: str) -> None:
    with pytest.raises(error) as info:
        softmax_cross_entropy(scores, y)
    assert info.value.arg == arg
