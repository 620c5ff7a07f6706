"""Graph ops flatten, reshape, concat, pad, gemm and matmul.

Forward against numpy (``reshape``, ``concatenate``, ``pad``, ``matmul``) in float64
and float32; backward against central differences in float64; refusals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.cnncore.graph_helpers import assert_refused, check_gradients, run

# Products of K <= 6 terms of order 1: float64 within a few ulps, float32 within
# ~K * 6e-8 of the sum of |terms| (<= ~10).
TOL = {
    np.dtype(np.float64): {"rtol": 1e-12, "atol": 1e-13},
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-5},
}
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])


def close(out: np.ndarray, expected: np.ndarray, dtype: Any) -> None:
    assert out.dtype == dtype
    np.testing.assert_allclose(out, expected, **TOL[np.dtype(dtype)])


# --------------------------------------------------------------------------- moves


@pytest.mark.parametrize(
    ("axis", "shape"),
    [(1, (2, 60)), (0, (1, 120)), (4, (120, 1)), (-1, (24, 5)), (2, (6, 20))],
    ids=["1", "0", "end", "-1", "2"],
)
@DTYPES
def test_flatten(rng: np.random.Generator, axis: int, shape: tuple, dtype: Any) -> None:
    x = rng.standard_normal((2, 3, 4, 5))
    out = run("flatten", {"x": x.astype(dtype)}, {"axis": axis})
    close(out, x.reshape(shape), dtype)
    check_gradients(rng, "flatten", {"x": x}, {"axis": axis})


@pytest.mark.parametrize(
    ("target", "shape"),
    [
        ((0, -1), (2, 60)),
        ((-1, 5), (24, 5)),
        ((0, 3, 0, 5), (2, 3, 4, 5)),
        ((4, 0, -1), (4, 3, 10)),
    ],
    ids=["N,-1", "-1,5", "zeros", "zero-after"],
)
def test_reshape(rng: np.random.Generator, target: tuple, shape: tuple) -> None:
    x = rng.standard_normal((2, 3, 4, 5))
    out = run("reshape", {"x": x}, {"shape": target})
    np.testing.assert_array_equal(out, x.reshape(shape))
    check_gradients(rng, "reshape", {"x": x}, {"shape": target})


@pytest.mark.parametrize("axis", [1, 0, -1, 3], ids=["channels", "batch", "last", "width"])
@DTYPES
def test_concat(rng: np.random.Generator, axis: int, dtype: Any) -> None:
    shapes = [(2, 3, 4, 5), (2, 3, 4, 5), (2, 3, 4, 5)]
    grow = axis % 4
    arrays = {}
    for i, s in enumerate(shapes):
        s = list(s)
        s[grow] = i + 1  # pieces of different sizes along the axis
        arrays[f"x{i}"] = rng.standard_normal(s)
    out = run("concat", {k: v.astype(dtype) for k, v in arrays.items()}, {"axis": axis})
    close(out, np.concatenate(list(arrays.values()), axis=axis), dtype)
    check_gradients(rng, "concat", arrays, {"axis": axis})


PADS = [
    pytest.param((0, 0, 1, 2, 0, 0, 3, 0), 0.0, id="spatial"),
    pytest.param((1, 0, 0, 0, 0, 2, 0, 1), -1.5, id="value"),
    pytest.param((0, 0, -1, 1, 0, 0, 2, -2), 0.0, id="negative-crops"),
]


@pytest.mark.parametrize(("pads", "value"), PADS)
@DTYPES
def test_pad(rng: np.random.Generator, pads: tuple, value: float, dtype: Any) -> None:
    x = rng.standard_normal((2, 3, 4, 5))
    out = run("pad", {"x": x.astype(dtype)}, {"pads": pads, "value": value})
    begins, ends = pads[:4], pads[4:]
    crop = tuple(
        slice(max(-b, 0), n - max(-e, 0)) for b, e, n in zip(begins, ends, x.shape, strict=True)
    )
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends, strict=True)]
    close(out, np.pad(x[crop], widths, constant_values=value), dtype)
    check_gradients(rng, "pad", {"x": x}, {"pads": pads, "value": value})


# --------------------------------------------------------------------------- products

GEMMS = [
    pytest.param({}, (3, 4), (4, 5), (5,), id="plain-c-row"),
    pytest.param({"trans_a": 1, "trans_b": 1}, (4, 3), (5, 4), (3, 5), id="both-transposed"),
    pytest.param(
        {"alpha": 0.5, "beta": -2.0, "trans_b": True}, (3, 4), (5, 4), (3, 1), id="alpha-beta"
    ),
    pytest.param({"alpha": 2.0}, (3, 4), (4, 5), None, id="no-c"),
]


@pytest.mark.parametrize(("attrs", "a", "b", "c"), GEMMS)
@DTYPES
def test_gemm(
    rng: np.random.Generator, attrs: dict, a: tuple, b: tuple, c: tuple | None, dtype: Any
) -> None:
    arrays = {"a": rng.standard_normal(a), "b": rng.standard_normal(b)}
    if c is not None:
        arrays["c"] = rng.standard_normal(c)
    out = run("gemm", {k: v.astype(dtype) for k, v in arrays.items()}, attrs)
    A = arrays["a"].T if attrs.get("trans_a") else arrays["a"]
    B = arrays["b"].T if attrs.get("trans_b") else arrays["b"]
    expected = attrs.get("alpha", 1.0) * A @ B
    if c is not None:
        expected = expected + attrs.get("beta", 1.0) * arrays["c"]
    close(out, expected, dtype)
    check_gradients(rng, "gemm", arrays, attrs)


MATMULS = [
    pytest.param((3, 4), (4, 5), id="2d"),
    pytest.param((2, 3, 4), (4, 5), id="batched-a"),
    pytest.param((2, 1, 3, 4), (3, 4, 2), id="broadcast-batch"),
    pytest.param((4,), (2, 4, 3), id="1d-a"),
    pytest.param((2, 3, 4), (4,), id="1d-b"),
    pytest.param((4,), (4,), id="dot"),
]


@pytest.mark.parametrize(("a", "b"), MATMULS)
@DTYPES
def test_matmul(rng: np.random.Generator, a: tuple, b: tuple, dtype: Any) -> None:
    arrays = {"a": rng.standard_normal(a), "b": rng.standard_normal(b)}
    out = run("matmul", {k: v.astype(dtype) for k, v in arrays.items()})
    close(out, np.matmul(arrays["a"], arrays["b"]), dtype)
    check_gradients(rng, "matmul", arrays)


# --------------------------------------------------------------------------- refusals

REFUSED = [
    pytest.param(
        "flatten",
        [(2, 3)],
        {"axis": 3},
        "axis",
        "axis 3 is out of range for a 2-D input (expected -2 <= axis < 3)",
        id="flatten-axis",
    ),
    pytest.param("reshape", [(2, 3)], {}, "shape", "reshape needs shape", id="reshape-missing"),
    pytest.param(
        "reshape",
        [(2, 3)],
        {"shape": (-1, -1)},
        "shape",
        "shape (-1, -1) has more than one -1",
        id="reshape-two-free",
    ),
    pytest.param(
        "reshape",
        [(2, 3)],
        {"shape": (4, -1)},
        "shape",
        "cannot reshape x (2, 3) (6 elements) to (4, -1): 6 is not a multiple of 4",
        id="reshape-divide",
    ),
    pytest.param(
        "reshape",
        [(2, 3)],
        {"shape": (5,)},
        "shape",
        "cannot reshape x (2, 3) (6 elements) to (5,) (5 elements)",
        id="reshape-size",
    ),
    pytest.param(
        "reshape",
        [(6,)],
        {"shape": (3, 0)},
        "shape",
        "shape (3, 0) has 0 at position 1, but x (6,) has only 1 dimensions to copy",
        id="reshape-zero",
    ),
    pytest.param(
        "reshape",
        [(6,)],
        {"shape": (-2, 3)},
        "shape",
        "shape (-2, 3) has a dimension below -1",
        id="reshape-negative",
    ),
    pytest.param(
        "reshape",
        [(6,)],
        {"shape": (2.0, 3)},
        "shape",
        "shape[0] must be an integer, got 2.0 (float)",
        id="reshape-float",
    ),
    pytest.param(
        "concat",
        [(2, 3), (2, 4)],
        {"axis": 0},
        "x1",
        "x1 has shape (2, 4), which does not match x0 (2, 3) on every axis but 0",
        id="concat-shapes",
    ),
    pytest.param("concat", [(2, 3), (2, 4)], {}, "axis", "concat needs axis", id="concat-axis"),
    pytest.param(
        "pad",
        [(2, 3)],
        {"pads": (1, 1)},
        "pads",
        "pads has 2 values but x (2, 3) needs 4",
        id="pad-length",
    ),
    pytest.param(
        "pad",
        [(2, 3)],
        {"pads": (0, -2, 0, -1)},
        "pads",
        "pads crop axis 1 of x (2, 3) to 0 (begin -2, end -1)",
        id="pad-crop-all",
    ),
    pytest.param(
        "pad",
        [(2, 3)],
        {"pads": (0, 0, 0, 0), "value": None},
        "value",
        "value must be a finite number, got None",
        id="pad-value",
    ),
    pytest.param(
        "gemm",
        [(3, 4), (5, 6)],
        {},
        "b",
        "a is (3, 4) but b is (5, 6): the inner sizes 4 and 5 differ",
        id="gemm-inner",
    ),
    pytest.param(
        "gemm",
        [(3, 4), (4, 6), (2, 6)],
        {},
        "c",
        "c has shape (2, 6), which does not broadcast to (3, 6)",
        id="gemm-c",
    ),
    pytest.param(
        "gemm",
        [(3, 4, 1), (4, 6)],
        {},
        "a",
        "a must be 2-D, got shape (3, 4, 1) (3-D)",
        id="gemm-3d",
    ),
    pytest.param(
        "gemm",
        [(3, 4), (4, 6)],
        {"trans_a": 2},
        "trans_a",
        "trans_a must be true/false (or 0/1), got 2",
        id="gemm-flag",
    ),
    pytest.param(
        "matmul",
        [(3, 4), (5, 6)],
        {},
        "b",
        "a (3, 4) and b (5, 6) do not fit a matrix product",
        id="matmul-inner",
    ),
    pytest.param(
        "matmul",
        [(2, 3, 4), (3, 4, 5)],
        {},
        "b",
        "the batch axes of a (2, 3, 4) and b (3, 4, 5) ((2,) and (3,)) do not broadcast",
        id="matmul-batch",
    ),
]


@pytest.mark.parametrize(("op", "shapes", "attrs", "arg", "message"), REFUSED)
def test_refused(op: str, shapes: list, attrs: dict, arg: str, message: str) -> None:
    assert_refused(op, shapes, attrs, arg, message)
