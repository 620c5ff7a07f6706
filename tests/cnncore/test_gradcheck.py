"""cnncore.gradcheck: the bound passes right gradients and fails ones wrong by 1e-5."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest

from cnncore import (
    MeanSquaredError,
    conv2d_backward,
    conv2d_forward,
    linear_backward,
    linear_forward,
    network_loss,
    pool2d_backward,
    pool2d_forward,
    relu_backward,
    relu_forward,
    softmax_cross_entropy,
)
from cnncore.gradcheck import assert_gradient, check_gradient, numerical_gradient

# A case: (f, x, analytic, dout) for one op, built from a seeded generator.
Case = tuple[Callable[[], np.ndarray | float], np.ndarray, np.ndarray, np.ndarray | float]


def conv_dw(rng: np.random.Generator) -> Case:
    x = rng.standard_normal((2, 3, 6, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    out, cache = conv2d_forward(x, w, b, padding=1)
    dout = rng.standard_normal(out.shape)
    return (lambda: conv2d_forward(x, w, b, padding=1)[0]), w, conv2d_backward(dout, cache)[1], dout


def conv_dx(rng: np.random.Generator) -> Case:
    x = rng.standard_normal((2, 2, 5, 6))
    w = rng.standard_normal((3, 2, 3, 2))
    out, cache = conv2d_forward(x, w, stride=2, padding=1)
    dout = rng.standard_normal(out.shape)
    f = lambda: conv2d_forward(x, w, stride=2, padding=1)[0]  # noqa: E731
    return f, x, conv2d_backward(dout, cache)[0], dout


def linear_dx(rng: np.random.Generator) -> Case:
    x = rng.standard_normal((4, 7))
    w = rng.standard_normal((7, 5))
    b = rng.standard_normal(5)
    out, cache = linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    return (lambda: linear_forward(x, w, b)[0]), x, linear_backward(dout, cache)[0], dout


def max_pool(rng: np.random.Generator) -> Case:
    x = rng.permutation(2 * 2 * 6 * 6).reshape(2, 2, 6, 6) / 10.0  # no ties
    out, cache = pool2d_forward(x, kernel_size=3, stride=2, padding=1)
    dout = rng.standard_normal(out.shape)
    f = lambda: pool2d_forward(x, kernel_size=3, stride=2, padding=1)[0]  # noqa: E731
    return f, x, pool2d_backward(dout, cache), dout


def avg_pool(rng: np.random.Generator) -> Case:
    x = rng.standard_normal((2, 2, 6, 6))
    out, cache = pool2d_forward(x, kernel_size=2, mode="avg")
    dout = rng.standard_normal(out.shape)
    f = lambda: pool2d_forward(x, kernel_size=2, mode="avg")[0]  # noqa: E731
    return f, x, pool2d_backward(dout, cache), dout


def relu(rng: np.random.Generator) -> Case:
    x = rng.standard_normal((3, 10))
    x += np.where(x >= 0, 0.1, -0.1)  # away from the kink at 0
    out, cache = relu_forward(x)
    dout = rng.standard_normal(out.shape)
    return (lambda: relu_forward(x)[0]), x, relu_backward(dout, cache), dout


def softmax_ce(rng: np.random.Generator) -> Case:
    scores = rng.standard_normal((5, 6))
    y = rng.integers(0, 6, size=5)
    _, dscores = softmax_cross_entropy(scores, y)
    return (lambda: softmax_cross_entropy(scores, y)[0]), scores, dscores, 1.0


def mse(rng: np.random.Generator) -> Case:
    out = rng.standard_normal((4, 3))
    loss = MeanSquaredError(rng.standard_normal((4, 3)))
    _, dout = network_loss(out, loss)
    return (lambda: network_loss(out, loss)[0]), out, dout, 1.0


OPS = [
    pytest.param(conv_dw, id="conv-dw"),
    pytest.param(conv_dx, id="conv-stride2-dx"),
    pytest.param(linear_dx, id="linear-dx"),
    pytest.param(max_pool, id="max-pool"),
    pytest.param(avg_pool, id="avg-pool"),
    pytest.param(relu, id="relu"),
    pytest.param(softmax_ce, id="softmax-ce"),
    pytest.param(mse, id="mse"),
]


@pytest.mark.parametrize("make", OPS)
def test_a_right_gradient_passes(rng: np.random.Generator, make: Callable[..., Case]) -> None:
    f, x, analytic, dout = make(rng)
    result = assert_gradient(f, x, analytic, dout)
    assert result.passed
    assert 0.0 <= result.error <= result.bound
    # The bound is tight enough to see an error of 1e-5 of the gradient's scale.
    assert result.bound < 1e-6


def largest(g: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(g)), g.shape))


def smallest_nonzero(g: np.ndarray) -> tuple[int, ...]:
    magnitude = np.where(g != 0, np.abs(g), np.inf)
    return tuple(int(i) for i in np.unravel_index(np.argmin(magnitude), g.shape))


@pytest.mark.parametrize("where", [largest, smallest_nonzero], ids=["largest", "smallest"])
@pytest.mark.parametrize("make", OPS)
def test_an_element_wrong_by_1e5_of_the_scale_fails(
    rng: np.random.Generator,
    make: Callable[..., Case],
    where: Callable[[np.ndarray], tuple[int, ...]],
) -> None:
    f, x, analytic, dout = make(rng)
    wrong = analytic.copy()
    i = where(wrong)
    # A relative error of 1e-5 of the gradient's scale max|g| in one element: on the
    # largest element that is 1e-5 of its own value.
    wrong[i] += 1e-5 * np.max(np.abs(analytic)) * np.sign(wrong[i])
    result = check_gradient(f, x, wrong, dout)
    assert not result.passed
    assert result.index == i
    assert result.error == pytest.approx(1e-5, rel=0.01)
    with pytest.raises(AssertionError, match=re.escape(f"worst index {list(i)}")):
        assert_gradient(f, x, wrong, dout)


def test_the_message_names_error_bound_and_index(rng: np.random.Generator) -> None:
    f, x, analytic, dout = linear_dx(rng)
    wrong = analytic.copy()
    wrong[2, 3] += 0.5
    result = check_gradient(f, x, wrong, dout)
    with pytest.raises(AssertionError) as info:
        assert_gradient(f, x, wrong, dout)
    message = str(info.value)
    assert f"gradient error {result.error:.3g}" in message
    assert f"exceeds the bound {result.bound:.3g}" in message
    assert "worst index [2, 3]" in message


def test_x_is_restored_bit_for_bit(rng: np.random.Generator) -> None:
    f, x, analytic, dout = conv_dx(rng)
    before = x.copy()
    check_gradient(f, x, analytic, dout)
    np.testing.assert_array_equal(x, before)


def test_a_zero_gradient_compares_absolute_errors() -> None:
    x = -np.ones((2, 3))  # relu is flat here: the gradient is exactly zero
    result = check_gradient(lambda: relu_forward(x)[0], x, np.zeros_like(x))
    assert result.passed
    assert (result.error, result.scale) == (0.0, 1.0)
    assert not check_gradient(lambda: relu_forward(x)[0], x, np.full_like(x, 1e-9)).passed


def test_the_step_is_the_stored_one() -> None:
    # At x = 3, 3 ± 1e-6 round to neighbours of 3 whose difference is not 2e-6; dividing
    # by 2h would leave an error of ~eps·3/h = 7e-10 on the exact derivative 1 of f(x) = x.
    x = np.array([3.0])
    assert numerical_gradient(lambda: x.copy(), x)[0] == 1.0


@pytest.mark.parametrize(
    ("x", "analytic", "error", "match"),
    [
        pytest.param(np.ones(3, np.float32), np.ones(3), TypeError, "float64", id="float32"),
        pytest.param(np.ones(3), np.ones(4), ValueError, "shape", id="shape"),
        pytest.param(np.ones(0), np.ones(0), ValueError, "empty", id="empty"),
    ],
)
def test_rejects(x: np.ndarray, analytic: np.ndarray, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        check_gradient(lambda: x * 2, x, analytic)
