"""Graph ops that wrap the layer functions: conv2d, pool2d, linear, relu, identity.

Forward against the layer functions themselves (the graph must compute exactly what
they compute) or, for the padding only the graph op has (asymmetric pooling pads),
against a loop over the output pixels; backward against central differences.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import cnncore
from tests.cnncore.graph_helpers import assert_refused, check_gradients, one_node, run

# float32 against a float64 oracle: each output is a sum of at most ~100 products of
# values of order 1, so rounding is within ~100 * 6e-8 of the sum of |terms| (~10).
F32 = {"rtol": 1e-5, "atol": 1e-5}


def distinct(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Values 0.01 apart in random order: every max-pool window has one clear maximum,
    and no ReLU input is within 1e-3 of 0, so central differences (step 1e-6) never
    straddle a kink."""
    n = int(np.prod(shape))
    return (rng.permutation(n) - n / 2 + 0.5).reshape(shape) * 0.01


# --------------------------------------------------------------------------- conv2d

CONVS = [
    pytest.param((2, 3, 6, 6), (4, 3, 3, 3), True, {"padding": 1}, id="pad1-bias"),
    pytest.param((1, 4, 7, 6), (4, 1, 3, 3), False, {"groups": 4, "stride": 2}, id="depthwise-s2"),
    pytest.param(
        (1, 2, 7, 7),
        (2, 2, 3, 2),
        True,
        {"padding": (0, 1, 2, 0), "dilation": (2, 1)},
        id="asym-dil",
    ),
    pytest.param(
        (1, 4, 5, 5), (6, 2, 1, 1), True, {"groups": 2, "stride": (2, 1)}, id="1x1-groups"
    ),
    pytest.param((1, 2, 5, 4), (3, 2, 2, 3), False, {"padding": "same"}, id="same"),
]


@pytest.mark.parametrize(("xs", "ws", "bias", "attrs"), CONVS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_conv2d_is_conv2d_forward(
    rng: np.random.Generator, xs: tuple, ws: tuple, bias: bool, attrs: dict, dtype: Any
) -> None:
    arrays = {
        "x": rng.standard_normal(xs).astype(dtype),
        "w": rng.standard_normal(ws).astype(dtype),
    }
    if bias:
        arrays["b"] = rng.standard_normal(ws[0]).astype(dtype)
    out = run("conv2d", arrays, attrs)
    expected, _ = cnncore.conv2d_forward(*arrays.values(), **attrs)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected)  # the same function on the same arrays


@pytest.mark.parametrize(("xs", "ws", "bias", "attrs"), CONVS)
def test_conv2d_gradients(
    rng: np.random.Generator, xs: tuple, ws: tuple, bias: bool, attrs: dict
) -> None:
    arrays = {"x": rng.standard_normal(xs), "w": rng.standard_normal(ws)}
    if bias:
        arrays["b"] = rng.standard_normal(ws[0])
    check_gradients(rng, "conv2d", arrays, attrs)


# --------------------------------------------------------------------------- pool2d


def pool_loops(
    x: np.ndarray, mode: str, k: tuple, s: tuple, pads: tuple, ceil: bool, include: bool
) -> np.ndarray:
    """PyTorch's pooling rules, one output pixel at a time, with (top, bottom, left, right)
    padding: a ceil-mode window must start inside the input or the leading padding; an
    average's divisor counts the window's cells inside the padded input (include) or
    inside the input."""
    n, c, h, w = x.shape
    top, bottom, left, right = pads

    def size(length: int, kk: int, ss: int, lo: int, hi: int) -> int:
        span = length + lo + hi - kk
        out = (-(-span // ss) if ceil else span // ss) + 1
        if ceil and (out - 1) * ss >= length + lo:
            out -= 1
        return out

    oh, ow = size(h, k[0], s[0], top, bottom), size(w, k[1], s[1], left, right)
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s[0] - top, j * s[1] - left
            r1, c1 = min(r0 + k[0], h + bottom), min(c0 + k[1], w + right)
            win = x[:, :, max(r0, 0) : min(r1, h), max(c0, 0) : min(c1, w)]
            if mode == "max":
                out[:, :, i, j] = win.max(axis=(2, 3))
            else:
                cells = (r1 - r0) * (c1 - c0) if include else win.shape[2] * win.shape[3]
                out[:, :, i, j] = win.sum(axis=(2, 3)) / cells
    return out


POOLS = [
    pytest.param({"kernel_size": 2}, id="max2"),
    pytest.param(
        {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, id="max3s2-ceil"
    ),
    pytest.param({"mode": "avg", "kernel_size": 3, "stride": 1, "padding": 1}, id="avg3-pad"),
    pytest.param(
        {
            "mode": "avg",
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "count_include_pad": False,
            "ceil_mode": True,
        },
        id="avg-exclude-ceil",
    ),
    pytest.param({"kernel_size": 3, "stride": 2, "padding": (0, 1, 1, 0)}, id="max-asym"),
    pytest.param(
        {"kernel_size": (2, 3), "stride": 2, "padding": (1, 1, 2, 2)}, id="max-pad-over-half"
    ),
    pytest.param(
        {"mode": "avg", "kernel_size": 3, "stride": 2, "padding": (0, 2, 1, 0), "ceil_mode": True},
        id="avg-asym-ceil-include",
    ),
    pytest.param(
        {
            "mode": "avg",
            "kernel_size": 3,
            "stride": 2,
            "padding": (0, 2, 1, 0),
            "ceil_mode": True,
            "count_include_pad": 0,
        },
        id="avg-asym-ceil-exclude",
    ),
]


def _pool_args(attrs: dict) -> tuple:
    k = attrs["kernel_size"]
    k = (k, k) if isinstance(k, int) else k
    s = attrs.get("stride", k)
    s = (s, s) if isinstance(s, int) else s
    p = attrs.get("padding", 0)
    p = (p, p, p, p) if isinstance(p, int) else p
    return (
        attrs.get("mode", "max"),
        k,
        s,
        p,
        bool(attrs.get("ceil_mode", False)),
        bool(attrs.get("count_include_pad", True)),
    )


@pytest.mark.parametrize("attrs", POOLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_pool2d_forward(rng: np.random.Generator, attrs: dict, dtype: Any) -> None:
    x = rng.standard_normal((2, 3, 7, 8))
    out = run("pool2d", {"x": x.astype(dtype)}, attrs)
    expected = pool_loops(x, *_pool_args(attrs))
    assert out.dtype == dtype
    # float64: a mean of at most 9 terms differs from the loop's by a few ulps.
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == np.float64 else F32
    np.testing.assert_allclose(out, expected, **tol)


@pytest.mark.parametrize("attrs", POOLS)
def test_pool2d_gradients(rng: np.random.Generator, attrs: dict) -> None:
    check_gradients(rng, "pool2d", {"x": distinct(rng, 1, 2, 7, 8)}, attrs)


def test_symmetric_pool2d_is_pool2d_forward(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3, 7, 8))
    out = run("pool2d", {"x": x}, {"kernel_size": 3, "stride": 2, "padding": (1, 1, 1, 1)})
    np.testing.assert_array_equal(
        out, cnncore.pool2d_forward(x, kernel_size=3, stride=2, padding=1)[0]
    )


# --------------------------------------------------------------------------- linear, relu, identity


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_linear(rng: np.random.Generator, bias: bool, dtype: Any) -> None:
    arrays = {"x": rng.standard_normal((3, 2, 2)), "w": rng.standard_normal((4, 5))}
    if bias:
        arrays["b"] = rng.standard_normal(5)
    out = run("linear", {k: v.astype(dtype) for k, v in arrays.items()})
    expected = arrays["x"].reshape(3, 4) @ arrays["w"] + (arrays["b"] if bias else 0)
    assert out.dtype == dtype
    # float64: 4-term dot products, a few ulps.
    np.testing.assert_allclose(
        out, expected, **({"rtol": 1e-12, "atol": 1e-13} if dtype == np.float64 else F32)
    )
    check_gradients(rng, "linear", arrays)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_relu_and_identity(rng: np.random.Generator, dtype: Any) -> None:
    x = distinct(rng, 2, 3, 4).astype(dtype)
    out = run("relu", {"x": x})
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    assert out.dtype == dtype
    assert run("identity", {"x": x}) is x  # a pass-through, no copy
    check_gradients(rng, "relu", {"x": distinct(rng, 2, 3, 4)})
    check_gradients(rng, "identity", {"x": rng.standard_normal((2, 3))})


def test_relu_gradient_at_zero_is_zero() -> None:
    g = one_node("relu", {"x": np.array([-1.0, 0.0, 2.0])})
    _, cache = g.forward(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(g.backward(np.ones(3), cache)["x"], [0.0, 0.0, 1.0])


# --------------------------------------------------------------------------- refusals

REFUSED = [
    pytest.param(
        "conv2d",
        [(1, 3, 5, 5), (2, 3, 3, 3), (3,)],
        {},
        "b",
        "b must have shape (2,) (one per filter), got (3,)",
        id="conv-b",
    ),
    pytest.param(
        "conv2d",
        [(1, 3, 5, 5), (2, 3, 3, 3)],
        {"padding": -1},
        "padding",
        "padding must be >= 0",
        id="conv-pad",
    ),
    pytest.param(
        "conv2d",
        [(1, 3, 5, 5), (2, 3, 3, 3)],
        {"stride": 0},
        "stride",
        "stride must be >= 1",
        id="conv-stride",
    ),
    pytest.param(
        "conv2d",
        [(1, 3, 5, 5), (2, 3, 3, 3)],
        {"padding": "same", "stride": 2},
        "padding",
        "padding='same' needs stride 1",
        id="conv-same-s2",
    ),
    pytest.param(
        "conv2d",
        [(1, 4, 5, 5), (2, 3, 3, 3)],
        {},
        "w",
        "w has 3 input channels but x has 4",
        id="conv-channels",
    ),
    pytest.param(
        "pool2d", [(1, 1, 4, 4)], {}, "kernel_size", "pool2d needs kernel_size", id="pool-no-kernel"
    ),
    pytest.param(
        "pool2d",
        [(1, 1, 4, 4)],
        {"kernel_size": 2, "mode": "min"},
        "mode",
        "mode must be 'max' or 'avg', got 'min'",
        id="pool-mode",
    ),
    pytest.param(
        "pool2d",
        [(1, 1, 4, 4)],
        {"kernel_size": 2, "padding": (0, 2, 0, 0)},
        "padding",
        "pooling padding must be smaller than the kernel: height padding (0, 2) "
        "with kernel height 2",
        id="pool-pad-kernel",
    ),
    pytest.param(
        "pool2d",
        [(1, 1, 4, 4)],
        {"kernel_size": 2, "ceil_mode": 2},
        "ceil_mode",
        "ceil_mode must be true/false (or 0/1), got 2",
        id="pool-ceil",
    ),
    pytest.param(
        "pool2d",
        [(1, 4, 4)],
        {"kernel_size": 2},
        "x",
        "x must be 4-D, got shape (1, 4, 4)",
        id="pool-3d",
    ),
    pytest.param(
        "pool2d",
        [(1, 1, 2, 2)],
        {"kernel_size": 3, "padding": (0, 0, 1, 1)},
        None,
        "output height would be 0",
        id="pool-empty",
    ),
    pytest.param(
        "linear",
        [(2, 3), (4, 5)],
        {},
        "w",
        "w has 4 rows but x has 3 features per sample",
        id="linear-rows",
    ),
    pytest.param(
        "linear",
        [(2, 3), (3, 5), (4,)],
        {},
        "b",
        "b must have shape (5,) (one per output), got (4,)",
        id="linear-b",
    ),
    pytest.param(
        "relu",
        [(2,)],
        {"max": 1},
        "max",
        "unknown attribute 'max' (relu takes no attributes)",
        id="relu-attr",
    ),
]


@pytest.mark.parametrize(("op", "shapes", "attrs", "arg", "message"), REFUSED)
def test_refused(op: str, shapes: list, attrs: dict, arg: str | None, message: str) -> None:
    assert_refused(op, shapes, attrs, arg, message, names=("x", "w", "b")[: len(shapes)])
