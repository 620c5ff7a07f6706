"""Pooling: the tutorial's worked example, fast path against the plain loops, gradients."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from cnncore import CnnError, DtypeError, ParameterError, ShapeError, reference
from cnncore import pool as pool_module
from cnncore.gradcheck import assert_gradient
from cnncore.graph import Graph, Node
from cnncore.pool import pool2d_backward, pool2d_forward, pool2d_inference
from tests.helpers import assert_close, pool_magnitudes

NAIVE = {
    "max": (reference.max_pool_forward_naive, reference.max_pool_backward_naive),
    "avg": (reference.avg_pool_forward_naive, reference.avg_pool_backward_naive),
}


def pool_param(kernel: tuple[int, int], stride: Any, **extra: Any) -> dict[str, Any]:
    return {"pool_height": kernel[0], "pool_width": kernel[1], "stride": stride, **extra}


# --------------------------------------------------------------------------- the tutorial

DU = np.array([[1.0, 2.0], [3.0, 4.0]])
# Window maxima at (0,0), (1,3), (3,1), (2,2): the tutorial's max-pooling result.
X_TUTORIAL = np.array(
    [
        [9.0, 1.0, 0.0, 2.0],
        [3.0, 2.0, 1.0, 8.0],
        [0.0, 1.0, 7.0, 3.0],
        [2.0, 6.0, 5.0, 4.0],
    ]
)
DX_MAX = np.array([[1, 0, 0, 0], [0, 0, 0, 2], [0, 0, 4, 0], [0, 3, 0, 0]], dtype=float)
DX_AVG = np.array(
    [
        [0.25, 0.25, 0.5, 0.5],
        [0.25, 0.25, 0.5, 0.5],
        [0.75, 0.75, 1.0, 1.0],
        [0.75, 0.75, 1.0, 1.0],
    ]
)


@pytest.mark.parametrize(
    ("mode", "expected"), [("max", DX_MAX), ("avg", DX_AVG)], ids=["max", "avg"]
)
def test_tutorial_example_fast(mode: str, expected: np.ndarray) -> None:
    _, cache = pool2d_forward(X_TUTORIAL[None, None], kernel_size=2, stride=2, mode=mode)
    np.testing.assert_array_equal(pool2d_backward(DU[None, None], cache)[0, 0], expected)


@pytest.mark.parametrize(
    ("mode", "expected"), [("max", DX_MAX), ("avg", DX_AVG)], ids=["max", "avg"]
)
def test_tutorial_example_reference(mode: str, expected: np.ndarray) -> None:
    forward, backward = NAIVE[mode]
    _, cache = forward(X_TUTORIAL[None, None], pool_param((2, 2), 2))
    np.testing.assert_array_equal(backward(DU[None, None], cache)[0, 0], expected)


# --------------------------------------------------------------------------- reference semantics


def test_reference_max_ties_go_to_first_maximum() -> None:
    x = np.ones((1, 1, 2, 2))
    _, cache = reference.max_pool_forward_naive(x, pool_param((2, 2), 2))
    dx = reference.max_pool_backward_naive(np.full((1, 1, 1, 1), 5.0), cache)
    np.testing.assert_array_equal(dx[0, 0], [[5.0, 0.0], [0.0, 0.0]])


def test_reference_max_overlapping_windows_accumulate() -> None:
    # 3x3 windows, stride 1, over a 4x4 input whose maximum (at (1,1)) lies in all four windows.
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = 10.0
    _, cache = reference.max_pool_forward_naive(x, pool_param((3, 3), 1))
    dout = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    dx = reference.max_pool_backward_naive(dout, cache)
    assert dx[0, 0, 1, 1] == 10.0
    assert dx.sum() == 10.0


def test_reference_avg_overlapping_windows_accumulate() -> None:
    x = np.zeros((1, 1, 3, 3))
    _, cache = reference.avg_pool_forward_naive(x, pool_param((2, 2), 1))
    dx = reference.avg_pool_backward_naive(np.ones((1, 1, 2, 2)), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])


# --------------------------------------------------------------------------- fast vs reference

# (kernel, stride, padding, ceil_mode, count_include_pad, input H, W)
GRID = [
    pytest.param((2, 2), None, 0, False, True, 8, 8, id="k2-s2-exact"),
    pytest.param((2, 2), None, 0, False, True, 7, 9, id="k2-s2-crop"),
    pytest.param((3, 3), 2, 0, False, True, 9, 8, id="k3-s2-overlap"),
    pytest.param((3, 3), 1, 1, False, True, 6, 7, id="k3-s1-pad1"),
    pytest.param((3, 3), 1, 1, False, False, 6, 7, id="k3-s1-pad1-nopadcount"),
    pytest.param((3, 2), (2, 1), (1, 1), False, True, 7, 6, id="k3x2-s2x1-pad"),
    pytest.param((2, 3), (1, 2), 0, True, True, 6, 8, id="k2x3-s1x2-ceil"),
    pytest.param((3, 3), 2, 1, True, True, 8, 8, id="k3-s2-pad1-ceil"),
    pytest.param((3, 3), 2, 1, True, False, 8, 8, id="k3-s2-pad1-ceil-nopadcount"),
    pytest.param((4, 4), 3, 2, True, True, 9, 10, id="k4-s3-pad2-ceil"),
    pytest.param((2, 2), 3, 0, False, True, 8, 8, id="k2-s3-gaps"),
    pytest.param((1, 1), 1, 0, False, True, 3, 4, id="k1-identity"),
    pytest.param((5, 5), 1, 2, False, False, 5, 5, id="k5-s1-pad2-same"),
    # Windows that tile the input (stride = kernel, no padding, divisible): own path.
    pytest.param((3, 3), None, 0, False, True, 9, 6, id="k3-tiles"),
    pytest.param((2, 3), None, 0, False, True, 6, 9, id="k2x3-tiles"),
    pytest.param((2, 2), 2, 0, True, True, 6, 8, id="k2-tiles-ceil-exact"),
    pytest.param((3, 3), None, 0, True, True, 7, 8, id="k3-s3-ceil-partial"),
    pytest.param((3, 2), None, 0, False, True, 10, 7, id="k3x2-crop"),
    pytest.param((16, 17), (1, 2), 0, False, True, 17, 20, id="k16x17-272-cells"),
]


def check_against_reference(
    x: np.ndarray, dout_rng: np.random.Generator, mode: str, *case: Any
) -> None:
    kernel, stride, padding, ceil_mode, count_include_pad = case
    kwargs = dict(
        kernel_size=kernel, stride=stride, padding=padding, mode=mode,
        ceil_mode=ceil_mode, count_include_pad=count_include_pad,
    )  # fmt: skip
    out, cache = pool2d_forward(x, **kwargs)
    param = pool_param(
        kernel,
        kernel if stride is None else stride,
        pad=padding,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )
    forward, backward = NAIVE[mode]
    x64 = x.astype(np.float64)
    expected, ref_cache = forward(x64, param)
    dout = dout_rng.standard_normal(out.shape).astype(x.dtype)
    assert out.dtype == x.dtype
    assert out.shape == expected.shape
    bound = pool_magnitudes(x, dout, kwargs)
    assert_close(out, expected, bound=bound["out"])  # max: exact; avg: a sum of kh·kw
    dx = pool2d_backward(dout, cache)
    assert dx.dtype == x.dtype
    assert_close(dx, backward(dout.astype(np.float64), ref_cache), bound=bound["dx"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize(("kernel", "stride", "padding", "ceil_mode", "cip", "h", "w"), GRID)
def test_fast_matches_reference(
    rng: np.random.Generator, dtype: type, mode: str, kernel: Any, stride: Any,
    padding: Any, ceil_mode: bool, cip: bool, h: int, w: int,
) -> None:  # fmt: skip
    x = rng.standard_normal((2, 3, h, w)).astype(dtype)
    check_against_reference(x, rng, mode, kernel, stride, padding, ceil_mode, cip)


@pytest.mark.parametrize(("kernel", "stride", "padding", "ceil_mode", "cip", "h", "w"), GRID)
def test_fast_matches_reference_with_many_ties(
    rng: np.random.Generator, kernel: Any, stride: Any,
    padding: Any, ceil_mode: bool, cip: bool, h: int, w: int,
) -> None:  # fmt: skip
    x = rng.integers(0, 3, size=(2, 3, h, w))  # integers: converted to float64, many ties
    check_against_reference(
        x.astype(np.float64), rng, "max", kernel, stride, padding, ceil_mode, cip
    )


@pytest.mark.parametrize(("kernel", "stride"), [(2, 2), (3, 1), ((2, 3), (1, 2))], ids=str)
def test_all_equal_windows_send_gradient_to_first_cell(kernel: Any, stride: Any) -> None:
    x = np.full((1, 2, 6, 6), 7.0)
    out, cache = pool2d_forward(x, kernel_size=kernel, stride=stride)
    dout = np.ones_like(out)
    expected = reference.max_pool_backward_naive(
        dout, reference.max_pool_forward_naive(x, pool_param(np.broadcast_to(kernel, 2), stride))[1]
    )
    dx = pool2d_backward(dout, cache)
    np.testing.assert_array_equal(dx, expected)
    assert dx.sum() == out.size  # each window's gradient lands once, not once per tie


@pytest.mark.parametrize(
    ("kernel", "stride"), [(2, 2), (3, 2), ((2, 3), (2, 3))], ids=["tiles", "overlap", "tiles-2x3"]
)
def test_nan_takes_the_window_and_its_gradient(kernel: Any, stride: Any) -> None:
    x = np.arange(72.0).reshape(1, 2, 6, 6)
    x[0, 0, 1, 1] = x[0, 0, 1, 0] = x[0, 1, 4, 5] = np.nan
    param = pool_param(np.broadcast_to(kernel, 2), stride)
    expected, ref_cache = reference.max_pool_forward_naive(x, param)
    out, cache = pool2d_forward(x, kernel_size=kernel, stride=stride)
    np.testing.assert_array_equal(out, expected)  # NaN where a window holds one
    dout = np.arange(1.0, out.size + 1).reshape(out.shape)
    dx = pool2d_backward(dout, cache)
    np.testing.assert_array_equal(dx, reference.max_pool_backward_naive(dout, ref_cache))


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "ceil_mode"),
    [
        pytest.param(2, 1, 1, False, id="k2-s1-pad1"),
        pytest.param(3, 2, 1, True, id="k3-s2-pad1-ceil"),
        pytest.param((3, 2), (2, 1), (1, 0), False, id="k3x2-pad-rows-only"),
        pytest.param((2, 3), (1, 2), (0, 1), False, id="k2x3-pad-cols-only"),
    ],
)
def test_minus_inf_windows_send_gradient_to_first_input_cell(
    kernel: Any, stride: Any, padding: Any, ceil_mode: bool
) -> None:
    # Padding is not input: a window whose input cells are all -inf ties only among
    # those cells (as in PyTorch), so no gradient is lost to a padding cell.
    x = np.full((1, 2, 4, 5), -np.inf)
    x[0, 1, 2:, 3:] = 1.0  # some windows also hold a finite maximum
    param = pool_param(np.broadcast_to(kernel, 2), stride, pad=padding, ceil_mode=ceil_mode)
    expected, ref_cache = reference.max_pool_forward_naive(x, param)
    out, cache = pool2d_forward(
        x, kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode
    )
    np.testing.assert_array_equal(out, expected)
    dout = np.arange(1.0, out.size + 1).reshape(out.shape)
    dx = pool2d_backward(dout, cache)
    np.testing.assert_array_equal(dx, reference.max_pool_backward_naive(dout, ref_cache))
    assert dx.sum() == dout.sum()


@pytest.mark.parametrize("values", ["normal", "ties", "nan-inf"])
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize(("kernel", "stride", "padding", "ceil_mode", "cip", "h", "w"), GRID)
def test_inference_gives_the_forward_bits(
    rng: np.random.Generator, values: str, mode: str, kernel: Any, stride: Any,
    padding: Any, ceil_mode: bool, cip: bool, h: int, w: int,
) -> None:  # fmt: skip
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    if values == "ties":
        x = rng.integers(0, 3, size=x.shape).astype(np.float32)
    elif values == "nan-inf":
        x.flat[rng.choice(x.size, size=x.size // 3, replace=False)] = -np.inf
        x.flat[rng.choice(x.size, size=2, replace=False)] = np.nan
    kwargs = dict(
        kernel_size=kernel, stride=stride, padding=padding, mode=mode,
        ceil_mode=ceil_mode, count_include_pad=cip,
    )  # fmt: skip
    out = pool2d_inference(x, **kwargs)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, pool2d_forward(x, **kwargs)[0])  # NaN where equal


@pytest.mark.parametrize("padding", [(1, 1, 1, 1), (0, 1, 1, 0)], ids=["symmetric", "asymmetric"])
def test_graph_inference_pass_gives_the_forward_bits(
    rng: np.random.Generator, padding: tuple[int, ...]
) -> None:
    attrs = {"mode": "max", "kernel_size": (3, 3), "stride": (2, 2), "padding": padding}
    graph = Graph([Node("pool", "pool2d", ("x",), "out", attrs)], params={}, input="x")
    x = rng.standard_normal((2, 3, 9, 8))
    out, cache = graph.forward(x)
    np.testing.assert_array_equal(graph.forward(x, backward=False)[0], out)
    dx = graph.backward(np.ones_like(out), cache)["x"]  # the training pass still has its cache
    assert dx.sum() == out.size


def test_integer_input_becomes_float64() -> None:
    out, cache = pool2d_forward(np.arange(16).reshape(1, 1, 4, 4), kernel_size=2)
    np.testing.assert_array_equal(out[0, 0], [[5, 7], [13, 15]])
    assert out.dtype == np.float64
    assert pool2d_backward(np.ones((1, 1, 2, 2), dtype=np.float32), cache).dtype == np.float64


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "ceil_mode", "cip"),
    [
        pytest.param(2, None, 0, False, True, id="k2-s2"),
        pytest.param(3, 2, 1, True, False, id="k3-s2-pad1-ceil"),
        pytest.param((3, 2), 1, (1, 0), False, True, id="k3x2-s1-overlap"),
    ],
)
def test_gradient_matches_central_differences(
    rng: np.random.Generator, mode: str, kernel: Any, stride: Any,
    padding: Any, ceil_mode: bool, cip: bool,
) -> None:  # fmt: skip
    # A permutation of distinct, well separated values: no ties, so max is differentiable.
    x = rng.permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6).astype(np.float64) / 10
    kwargs = dict(
        kernel_size=kernel, stride=stride, padding=padding, mode=mode,
        ceil_mode=ceil_mode, count_include_pad=cip,
    )  # fmt: skip
    out, cache = pool2d_forward(x, **kwargs)
    dout = rng.standard_normal(out.shape)
    assert_gradient(lambda: pool2d_forward(x, **kwargs)[0], x, pool2d_backward(dout, cache), dout)


# --------------------------------------------------------------------------- torch


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize(("kernel", "stride", "padding", "ceil_mode", "cip", "h", "w"), GRID)
def test_matches_torch(
    rng: np.random.Generator, mode: str, kernel: Any, stride: Any,
    padding: Any, ceil_mode: bool, cip: bool, h: int, w: int,
) -> None:  # fmt: skip
    torch = pytest.importorskip("torch")
    fn = torch.nn.functional
    x = rng.integers(0, 4, size=(2, 3, h, w)).astype(np.float64)  # ties included
    kwargs = dict(
        kernel_size=kernel, stride=stride, padding=padding, mode=mode,
        ceil_mode=ceil_mode, count_include_pad=cip,
    )  # fmt: skip
    out, cache = pool2d_forward(x, **kwargs)
    dout = rng.standard_normal(out.shape)
    xt = torch.tensor(x, requires_grad=True)
    if mode == "max":
        ot = fn.max_pool2d(xt, kernel, stride, padding, ceil_mode=ceil_mode)
    else:
        ot = fn.avg_pool2d(xt, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=cip)
    ot.backward(torch.tensor(dout))
    bound = pool_magnitudes(x, dout, kwargs)
    assert_close(out, ot.detach().numpy(), bound=bound["out"])
    assert_close(pool2d_backward(dout, cache), xt.grad.numpy(), bound=bound["dx"])


# --------------------------------------------------------------------------- errors


X4 = (1, 1, 4, 4)


@pytest.mark.parametrize(
    ("x_shape", "kwargs", "error", "arg"),
    [
        pytest.param((3, 4, 4), {"kernel_size": 2}, ShapeError, "x", id="3d-input"),
        pytest.param((1, 1, 0, 4), {"kernel_size": 2}, ShapeError, "x", id="empty-dim"),
        pytest.param((1, 1, 2, 2), {"kernel_size": 3}, ShapeError, "x", id="kernel-over-input"),
        pytest.param(X4, {"kernel_size": 0}, ParameterError, "kernel_size", id="zero-kernel"),
        pytest.param(X4, {"kernel_size": True}, ParameterError, "kernel_size", id="bool-kernel"),
        pytest.param(
            X4, {"kernel_size": 2, "stride": 1.5}, ParameterError, "stride", id="float-stride"
        ),
        pytest.param(
            X4, {"kernel_size": 2, "stride": 0}, ParameterError, "stride", id="zero-stride"
        ),
        pytest.param(
            X4, {"kernel_size": 2, "padding": 2}, ParameterError, "padding", id="pad-over-half"
        ),
        pytest.param(
            X4, {"kernel_size": 2, "padding": -1}, ParameterError, "padding", id="negative-pad"
        ),
        pytest.param(X4, {"kernel_size": 2, "mode": "min"}, ParameterError, "mode", id="bad-mode"),
        pytest.param(
            X4, {"kernel_size": 2, "ceil_mode": 1}, ParameterError, "ceil_mode", id="int-flag"
        ),
    ],
)
def test_rejected_arguments(
    x_shape: tuple[int, ...], kwargs: dict[str, Any], error: type, arg: str
) -> None:
    with pytest.raises(error) as info:
        pool2d_forward(np.zeros(x_shape), **kwargs)
    assert info.value.arg == arg


def test_rejects_complex_input() -> None:
    with pytest.raises(DtypeError) as info:
        pool2d_forward(np.zeros((1, 1, 4, 4), dtype=complex), kernel_size=2)
    assert info.value.arg == "x"


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_backward_rejects_wrong_dout_shape(mode: str) -> None:
    _, cache = pool2d_forward(np.zeros((1, 1, 4, 4)), kernel_size=2, mode=mode)
    with pytest.raises(CnnError) as info:
        pool2d_backward(np.zeros((1, 1, 4, 4)), cache)
    assert info.value.arg == "dout"


@pytest.mark.parametrize("values", ["normal", "ties", "nan-inf"])
@pytest.mark.parametrize(
    ("planes", "blocks"),
    [(1, 15), (2, 9), (5, 3), (10, 2)],
    ids=["1-channel", "2-and-1-channels", "1-sample", "2-and-1-samples"],
)
def test_max_pooling_by_blocks_gives_the_same_bits(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, values: str, planes: int,
    blocks: int,
) -> None:  # fmt: skip
    x = rng.standard_normal((3, 5, 9, 8))
    if values == "ties":
        x = rng.integers(0, 3, size=x.shape).astype(np.float64)
    elif values == "nan-inf":
        x.flat[rng.choice(x.size, size=x.size // 3, replace=False)] = -np.inf
        x.flat[rng.choice(x.size, size=2, replace=False)] = np.nan
    kwargs = {"kernel_size": 3, "stride": 2, "padding": 1, "mode": "max", "ceil_mode": True}
    out, cache = pool2d_forward(x, **kwargs)  # one block: all 15 planes fit
    dout = rng.standard_normal(out.shape)
    dx = pool2d_backward(dout, cache)
    monkeypatch.setattr(pool_module, "_BLOCK_BYTES", planes * 9 * 8 * 8)
    assert len(pool_module._blocks(cache[0], x.itemsize)) == blocks
    blocked, blocked_cache = pool2d_forward(x, **kwargs)
    np.testing.assert_array_equal(blocked, out)
    np.testing.assert_array_equal(pool2d_inference(x, **kwargs), out)
    np.testing.assert_array_equal(pool2d_backward(dout, blocked_cache), dx)


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan"])
@pytest.mark.parametrize("planes", [None, 3], ids=["one-block", "blocks-of-3-planes"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_max_pool_bytes_bounds_what_the_passes_allocate(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, dtype: Any, planes: Any, nan: bool
) -> None:
    # The graph engine budgets max pooling by max_pool_bytes: the passes' buffers beside
    # their input, output (and cached index) and gradients, measured by tracemalloc.
    x = rng.standard_normal((2, 5, 13, 11)).astype(dtype)
    if nan:
        x[1, 2, 4, 4] = np.nan  # the count of first maxima takes its NaN path
    if planes is not None:
        monkeypatch.setattr(pool_module, "_BLOCK_BYTES", planes * 13 * 11 * x.itemsize)
    kwargs = {"kernel_size": 3, "stride": 2, "padding": 1, "mode": "max", "ceil_mode": True}
    out, cache = pool2d_forward(x, **kwargs)
    dout = rng.standard_normal(out.shape).astype(dtype)
    forward, backward = pool_module.max_pool_bytes(cache[0], x.itemsize)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        out, cache = pool2d_forward(x, **kwargs)
        measured_forward = tracemalloc.get_traced_memory()[1] - start - out.nbytes
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        dx = pool2d_backward(dout, cache)
        measured_backward = tracemalloc.get_traced_memory()[1] - start - dx.nbytes
    finally:
        tracemalloc.stop()
    python = 4096  # the Python objects of the block loop (views, slices, lists)
    assert measured_forward <= forward + python
    assert measured_backward <= backward + python
