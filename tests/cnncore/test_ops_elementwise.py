"""Graph ops add, clip, softmax, reduce_mean, global_avg_pool and batchnorm.

Forward against direct numpy formulas, float64 and float32 (the dtype is kept);
backward against central differences in float64; every refusal with its message.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnncore.graph import GraphError
from tests.cnncore.graph_helpers import assert_refused, check_gradients, one_node, run

# float64: a handful of operations per element (a mean over <= 64 terms), so a few
# ulps of values of order 1. float32: the same with eps 1.2e-7, times <= 64 terms.
TOL = {
    np.dtype(np.float64): {"rtol": 1e-12, "atol": 1e-13},
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-6},
}


def close(out: np.ndarray, expected: np.ndarray, dtype: Any) -> None:
    assert out.dtype == dtype
    np.testing.assert_allclose(out, expected, **TOL[np.dtype(dtype)])


DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])

# --------------------------------------------------------------------------- add

BROADCASTS = [
    pytest.param((2, 3, 4), (2, 3, 4), id="same"),
    pytest.param((2, 3, 4, 4), (3, 1, 1), id="channel-bias"),
    pytest.param((2, 1, 4), (3, 1), id="both-broadcast"),
    pytest.param((5,), (2, 5), id="a-broadcast"),
]


@pytest.mark.parametrize(("a", "b"), BROADCASTS)
@DTYPES
def test_add(rng: np.random.Generator, a: tuple, b: tuple, dtype: Any) -> None:
    arrays = {"a": rng.standard_normal(a), "b": rng.standard_normal(b)}
    out = run("add", {k: v.astype(dtype) for k, v in arrays.items()})
    close(out, arrays["a"] + arrays["b"], dtype)
    check_gradients(rng, "add", arrays)


# --------------------------------------------------------------------------- clip

CLIPS = [
    pytest.param({"min": 0.0, "max": 6.0}, id="relu6"),
    pytest.param({"min": -0.5}, id="min-only"),
    pytest.param({"max": 0.25}, id="max-only"),
    pytest.param({}, id="unbounded"),
]


def away_from(
    rng: np.random.Generator, shape: tuple, points: list[float], scale: float
) -> np.ndarray:
    """Normal values times ``scale``, none within 1e-3 of a kink in ``points`` (so that
    central differences with step 1e-6 never straddle one)."""
    x = scale * rng.standard_normal(shape)
    for p in points:
        near = np.abs(x - p) < 1e-3
        x[near] += 2e-3
    return x


@pytest.mark.parametrize("attrs", CLIPS)
@DTYPES
def test_clip(rng: np.random.Generator, attrs: dict, dtype: Any) -> None:
    kinks = [v for v in attrs.values() if v is not None]
    x = away_from(rng, (3, 4, 5), kinks, scale=4.0)
    out = run("clip", {"x": x.astype(dtype)}, attrs)
    close(out, np.clip(x, attrs.get("min", -np.inf), attrs.get("max", np.inf)), dtype)
    check_gradients(rng, "clip", {"x": x}, attrs)


def test_clip_gradient_is_zero_at_the_bounds_as_relu6() -> None:
    # PyTorch's hardtanh/relu6 backward (the ReLU6 exported as Clip(0, 6)): 0 at both bounds.
    x = np.array([-1.0, 0.0, 3.0, 6.0, 7.0])
    g = one_node("clip", {"x": x}, {"min": 0.0, "max": 6.0})
    _, cache = g.forward(x)
    np.testing.assert_array_equal(g.backward(np.ones(5), cache)["x"], [0, 0, 1, 0, 0])


# --------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("axis", [-1, 1, 0], ids=["last", "axis1", "axis0"])
@DTYPES
def test_softmax(rng: np.random.Generator, axis: int, dtype: Any) -> None:
    x = 3 * rng.standard_normal((3, 4, 5))
    out = run("softmax", {"x": x.astype(dtype)}, {"axis": axis})
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    close(out, e / e.sum(axis=axis, keepdims=True), dtype)
    check_gradients(rng, "softmax", {"x": x}, {"axis": axis})


def test_softmax_does_not_overflow() -> None:
    out = run("softmax", {"x": np.array([[1000.0, 1000.0, -1000.0]])}, {"axis": 1})
    np.testing.assert_array_equal(out, [[0.5, 0.5, 0.0]])


# --------------------------------------------------------------------------- means

MEANS = [
    pytest.param({"axes": (2, 3)}, (2, 3, 1, 1), id="spatial-keep"),
    pytest.param({"axes": (-1, -2), "keepdims": 0}, (2, 3), id="spatial-drop"),
    pytest.param({"axes": (1,), "keepdims": False}, (2, 4, 4), id="channels"),
    pytest.param({}, (1, 1, 1, 1), id="all"),
]


@pytest.mark.parametrize(("attrs", "shape"), MEANS)
@DTYPES
def test_reduce_mean(rng: np.random.Generator, attrs: dict, shape: tuple, dtype: Any) -> None:
    x = rng.standard_normal((2, 3, 4, 4))
    out = run("reduce_mean", {"x": x.astype(dtype)}, attrs)
    axes = tuple(a % 4 for a in attrs.get("axes", range(4)))
    assert out.shape == shape
    close(out, x.mean(axis=axes).reshape(shape), dtype)
    check_gradients(rng, "reduce_mean", {"x": x}, attrs)


@DTYPES
def test_global_avg_pool(rng: np.random.Generator, dtype: Any) -> None:
    x = rng.standard_normal((2, 3, 4, 5))
    out = run("global_avg_pool", {"x": x.astype(dtype)})
    close(out, x.mean(axis=(2, 3), keepdims=True), dtype)
    check_gradients(rng, "global_avg_pool", {"x": x})


# --------------------------------------------------------------------------- batchnorm


def bn_arrays(rng: np.random.Generator, shape: tuple) -> dict[str, np.ndarray]:
    c = shape[1]
    return {
        "x": rng.standard_normal(shape),
        "scale": 1 + 0.3 * rng.standard_normal(c),
        "bias": rng.standard_normal(c),
        "mean": rng.standard_normal(c),
        "var": 0.5 + rng.random(c),
    }


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (4, 3)], ids=["nchw", "nc"])
@DTYPES
def test_batchnorm_forward(rng: np.random.Generator, shape: tuple, dtype: Any) -> None:
    a = bn_arrays(rng, shape)
    out = run(
        "batchnorm", {k: v.astype(dtype) for k, v in a.items()}, {"epsilon": 1e-3}, ("mean", "var")
    )
    per = (-1,) + (1,) * (len(shape) - 2)
    expected = a["scale"].reshape(per) * (a["x"] - a["mean"].reshape(per)) / np.sqrt(
        a["var"].reshape(per) + 1e-3
    ) + a["bias"].reshape(per)
    close(out, expected, dtype)


@pytest.mark.parametrize("constants", [("mean", "var"), ()], ids=["stats-constant", "stats-params"])
def test_batchnorm_gradients(rng: np.random.Generator, constants: tuple) -> None:
    # With the statistics as parameters, their gradients (dmean, dvar) are checked too.
    check_gradients(rng, "batchnorm", bn_arrays(rng, (2, 3, 3, 3)), {"epsilon": 1e-3}, constants)


def test_batchnorm_refuses_a_zero_denominator(rng: np.random.Generator) -> None:
    a = bn_arrays(rng, (1, 2, 2, 2))
    a["var"][1] = 0.0
    g = one_node("batchnorm", a, {"epsilon": 0.0}, ("mean", "var"))
    with pytest.raises(GraphError, match=r"var\[1\] \+ epsilon is 0.0, not positive") as info:
        g.forward(a["x"])
    assert info.value.arg == "var"


# --------------------------------------------------------------------------- refusals

REFUSED = [
    pytest.param(
        "add", [(2, 3), (4,)], {}, "b", "a (2, 3) and b (4,) do not broadcast together", id="add"
    ),
    pytest.param(
        "clip",
        [(2,)],
        {"min": 1.0, "max": 0.0},
        "min",
        "min 1.0 is larger than max 0.0",
        id="clip-order",
    ),
    pytest.param(
        "clip",
        [(2,)],
        {"min": "0"},
        "min",
        "min must be a finite number or None, got '0'",
        id="clip-type",
    ),
    pytest.param(
        "clip",
        [(2,)],
        {"max": float("nan")},
        "max",
        "max must be a finite number or None",
        id="clip-nan",
    ),
    pytest.param(
        "softmax",
        [(2, 3)],
        {"axis": 2},
        "axis",
        "axis 2 is out of range for a 2-D input (expected -2 <= axis < 2)",
        id="softmax-axis",
    ),
    pytest.param(
        "softmax",
        [(2, 3)],
        {"axis": 1.0},
        "axis",
        "axis must be an integer, got 1.0",
        id="softmax-float",
    ),
    pytest.param(
        "reduce_mean",
        [(2, 3)],
        {"axes": (1, -1)},
        "axes",
        "axes (1, -1) name an axis twice",
        id="mean-twice",
    ),
    pytest.param(
        "reduce_mean", [(2, 3)], {"axes": (3,)}, "axes", "axes 3 is out of range", id="mean-range"
    ),
    pytest.param(
        "reduce_mean",
        [(2, 3)],
        {"axes": 1},
        "axes",
        "axes must be a sequence of integers, got 1",
        id="mean-int",
    ),
    pytest.param(
        "reduce_mean",
        [(2, 3)],
        {"keepdims": 2},
        "keepdims",
        "keepdims must be true/false (or 0/1), got 2",
        id="mean-keepdims",
    ),
    pytest.param(
        "global_avg_pool",
        [(2, 3)],
        {},
        "x",
        "global_avg_pool needs an input (N, C, D1, ...) of at least 3 dimensions",
        id="gap-2d",
    ),
    pytest.param(
        "batchnorm",
        [(2, 3, 4), (3,), (3,), (2,), (3,)],
        {},
        "mean",
        "mean must have shape (3,) (one per channel of x (2, 3, 4)), got (2,)",
        id="bn-mean",
    ),
    pytest.param(
        "batchnorm",
        [(2, 3), (3,), (3,), (3,), (3,)],
        {"epsilon": -1.0},
        "epsilon",
        "epsilon must be >= 0, got -1.0",
        id="bn-eps",
    ),
    pytest.param(
        "batchnorm",
        [(3,), (3,), (3,), (3,), (3,)],
        {},
        "x",
        "x must have at least 2 dimensions",
        id="bn-1d",
    ),
]


@pytest.mark.parametrize(("op", "shapes", "attrs", "arg", "message"), REFUSED)
def test_refused(op: str, shapes: list, attrs: dict, arg: str, message: str) -> None:
    assert_refused(op, shapes, attrs, arg, message)
