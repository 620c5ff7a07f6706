"""The plain-loop oracles themselves: the tutorial's formulas and central differences."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnncore import reference
from cnncore.gradcheck import assert_gradient
from tests.helpers import assert_close


def test_conv_matches_tutorial_worked_example(rng: np.random.Generator) -> None:
    # u_ij = sum_p sum_q x_{i+p-1, j+q-1} w_pq + b, for a 3x3 input and a 2x2 kernel.
    x = rng.standard_normal((3, 3))
    w = rng.standard_normal((2, 2))
    b = 0.5
    out, _ = reference.conv_forward_naive(
        x[None, None], w[None, None], np.array([b]), {"stride": 1, "pad": 0}
    )
    expected = np.array(
        [[np.sum(x[i : i + 2, j : j + 2] * w) + b for j in range(2)] for i in range(2)]
    )
    # Sums of 4 products and b: within 5·eps·(sum of magnitudes) each way.
    magnitude = np.array(
        [[np.sum(np.abs(x[i : i + 2, j : j + 2] * w)) + b for j in range(2)] for i in range(2)]
    )
    assert_close(out[0, 0], expected, bound=(5, magnitude))


@pytest.mark.parametrize(
    "conv_param",
    [
        pytest.param({"stride": 1, "pad": 0}, id="seed-defaults"),
        pytest.param({"stride": 2, "pad": 1}, id="stride2-pad1"),
        pytest.param({"stride": 1, "pad": (0, 1, 2, 1), "dilation": 2}, id="asym-pad-dilation"),
        pytest.param({"stride": (2, 1), "pad": 1, "groups": 2}, id="groups"),
    ],
)
def test_conv_gradients_match_central_differences(
    rng: np.random.Generator, conv_param: dict[str, Any]
) -> None:
    groups = conv_param.get("groups", 1)
    # Two images and two channels (one per group with groups=2) are enough for every sum
    # the backward pass makes; each input element costs two runs of the plain loops.
    x = rng.standard_normal((2, 2, 5, 6))
    w = rng.standard_normal((4, 2 // groups, 3, 2))
    b = rng.standard_normal(4)
    out, cache = reference.conv_forward_naive(x, w, b, conv_param)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = reference.conv_backward_naive(dout, cache)

    def f() -> np.ndarray:
        return reference.conv_forward_naive(x, w, b, conv_param)[0]

    assert_gradient(f, x, dx, dout)
    assert_gradient(f, w, dw, dout)
    assert db is not None
    assert_gradient(f, b, db, dout)


def test_conv_groups_equal_separate_convolutions(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 4, 5, 5))
    w = rng.standard_normal((6, 2, 3, 3))
    param = {"stride": 1, "pad": 1}
    out, _ = reference.conv_forward_naive(x, w, None, {**param, "groups": 2})
    first, _ = reference.conv_forward_naive(x[:, :2], w[:3], None, param)
    second, _ = reference.conv_forward_naive(x[:, 2:], w[3:], None, param)
    # The same 2·3·3 products per output either way, perhaps summed in another order.
    magnitude, _ = reference.conv_forward_naive(np.abs(x), np.abs(w), None, {**param, "groups": 2})
    assert_close(out, np.concatenate([first, second], axis=1), bound=(18, magnitude))


def test_conv_without_bias_gives_db_none(rng: np.random.Generator) -> None:
    x, w = rng.standard_normal((1, 1, 3, 3)), rng.standard_normal((1, 1, 2, 2))
    out, cache = reference.conv_forward_naive(x, w, None, {"stride": 1, "pad": 0})
    assert reference.conv_backward_naive(np.ones_like(out), cache)[2] is None


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="seed-keys"),
        pytest.param({"pad": 1, "ceil_mode": True}, id="pad-ceil"),
        pytest.param({"pad": 1, "count_include_pad": False}, id="pad-nopadcount"),
    ],
)
def test_pool_gradients_match_central_differences(
    rng: np.random.Generator, kind: str, extra: dict[str, Any]
) -> None:
    forward = getattr(reference, f"{kind}_pool_forward_naive")
    backward = getattr(reference, f"{kind}_pool_backward_naive")
    x = rng.permutation(2 * 2 * 6 * 7).reshape(2, 2, 6, 7) / 10.0  # no ties
    param = {"pool_height": 3, "pool_width": 2, "stride": 2, **extra}
    out, cache = forward(x, param)
    dout = rng.standard_normal(out.shape)
    assert_gradient(lambda: forward(x, param)[0], x, backward(dout, cache), dout)


def test_pool_output_size_uses_floor_division() -> None:
    out, _ = reference.max_pool_forward_naive(
        np.zeros((1, 1, 7, 6)), {"pool_height": 2, "pool_width": 2, "stride": 2}
    )
    assert out.shape == (1, 1, 3, 3)


# Integer and bool arrays become float64, whatever the other arrays' dtype (as in cnncore).
DTYPE_CASES = [
    pytest.param(np.float32, np.float32, np.float32, id="f32-f32"),
    pytest.param(np.float32, np.float64, np.float64, id="f32-f64"),
    pytest.param(np.int8, np.float32, np.float64, id="int8-f32"),
    pytest.param(np.bool_, np.float32, np.float64, id="bool-f32"),
    pytest.param(np.float32, np.uint8, np.float64, id="f32-uint8"),
]


@pytest.mark.parametrize(("x_dtype", "w_dtype", "expected"), DTYPE_CASES)
def test_conv_dtype_follows_the_contract(x_dtype: Any, w_dtype: Any, expected: Any) -> None:
    x, w = np.ones((1, 1, 3, 3), dtype=x_dtype), np.ones((2, 1, 2, 2), dtype=w_dtype)
    out, cache = reference.conv_forward_naive(x, w, None, {"stride": 1, "pad": 0})
    dx, dw, _ = reference.conv_backward_naive(np.ones(out.shape, dtype=np.float32), cache)
    assert out.dtype == dx.dtype == dw.dtype == expected


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(
    ("x_dtype", "expected"),
    [
        pytest.param(np.float32, np.float32, id="f32"),
        pytest.param(np.float64, np.float64, id="f64"),
        pytest.param(np.int8, np.float64, id="int8"),
        pytest.param(np.bool_, np.float64, id="bool"),
    ],
)
def test_pool_dtype_follows_the_contract(kind: str, x_dtype: Any, expected: Any) -> None:
    forward = getattr(reference, f"{kind}_pool_forward_naive")
    backward = getattr(reference, f"{kind}_pool_backward_naive")
    param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    out, cache = forward(np.ones((1, 1, 4, 4), dtype=x_dtype), param)
    dx = backward(np.ones(out.shape, dtype=np.float64), cache)  # dout takes x's dtype
    assert out.dtype == dx.dtype == expected
