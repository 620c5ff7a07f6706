"""Convolution: the tutorial's worked example, fast path against the plain loops, gradients."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnncore import CnnError, DtypeError, ParameterError, ShapeError, reference
from cnncore.conv import (
    ConvLimits,
    ConvPath,
    ConvPlan,
    DxPath,
    conv2d_backward,
    conv2d_forward,
    conv2d_inference,
    conv2d_plan,
)
from cnncore.geometry import conv2d_geometry
from cnncore.gradcheck import assert_gradient
from tests.helpers import assert_close, conv_magnitudes

# --------------------------------------------------------------------------- the tutorial

# The tutorial's example: a 3×3 input X, a 2×2 kernel W, a bias b, a 2×2 output U.
X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
W = np.array([[1.0, 2.0], [3.0, 4.0]])
B = 1.0
# u11 = x11 w11 + x12 w12 + x21 w21 + x22 w22 + b = 1 + 4 + 12 + 20 + 1, and so on.
U = np.array([[38.0, 48.0], [68.0, 78.0]])
DU = np.array([[1.0, 0.0], [2.0, -1.0]])
# dL/dw_pq = sum_ij dU_ij x_{i+p-1, j+q-1}: e.g. dw11 = 1*1 + 0*2 + 2*4 - 1*5 = 4.
DW = np.array([[4.0, 6.0], [10.0, 12.0]])
# dL/dX = sum_ij dU_ij * (W placed at (i, j)): 1*W at the top left, 2*W one row down,
# -1*W one row down and one column right.
DX = np.array([[1.0, 2.0, 0.0], [5.0, 7.0, -2.0], [6.0, 5.0, -4.0]])
DB = 2.0


def tutorial_forward() -> tuple[np.ndarray, Any]:
    return conv2d_forward(X[None, None], W[None, None], np.array([B]))


def test_tutorial_output_is_the_four_sums() -> None:
    out, _ = tutorial_forward()
    np.testing.assert_array_equal(out[0, 0], U)


def test_tutorial_gradients() -> None:
    _, cache = tutorial_forward()
    dx, dw, db = conv2d_backward(DU[None, None], cache)
    np.testing.assert_array_equal(dx[0, 0], DX)
    np.testing.assert_array_equal(dw[0, 0], DW)
    np.testing.assert_array_equal(db, [DB])


def test_tutorial_dw_is_x_correlated_with_du() -> None:
    dw_as_conv, _ = conv2d_forward(X[None, None], DU[None, None])
    np.testing.assert_array_equal(dw_as_conv[0, 0], DW)


def test_tutorial_dx_is_padded_du_correlated_with_rotated_kernel() -> None:
    rotated = W[::-1, ::-1]  # [[w22, w21], [w12, w11]]
    dx_as_conv, _ = conv2d_forward(DU[None, None], rotated[None, None], padding=1)
    np.testing.assert_array_equal(dx_as_conv[0, 0], DX)


def test_tutorial_db_is_sum_of_du() -> None:
    assert DU.sum() == DB


def test_reference_matches_tutorial() -> None:
    out, cache = reference.conv_forward_naive(
        X[None, None], W[None, None], np.array([B]), {"stride": 1, "pad": 0}
    )
    dx, dw, db = reference.conv_backward_naive(DU[None, None], cache)
    np.testing.assert_array_equal(out[0, 0], U)
    np.testing.assert_array_equal(dx[0, 0], DX)
    np.testing.assert_array_equal(dw[0, 0], DW)
    np.testing.assert_array_equal(db, [DB])


# --------------------------------------------------------------------------- fast vs reference

# (x shape, w shape, keyword arguments); w is (F, C // groups, KH, KW).
GRID = [
    pytest.param((2, 3, 7, 7), (4, 3, 3, 3), {}, id="plain"),
    pytest.param((2, 3, 8, 9), (4, 3, 3, 3), {"stride": 2}, id="stride2"),
    pytest.param((2, 3, 10, 11), (4, 3, 3, 2), {"stride": 3, "padding": 1}, id="stride3-pad1"),
    pytest.param((2, 3, 7, 9), (4, 3, 3, 3), {"stride": (1, 2)}, id="stride(1,2)"),
    pytest.param((2, 3, 9, 7), (4, 3, 3, 3), {"stride": (2, 1)}, id="stride(2,1)"),
    pytest.param((2, 3, 6, 7), (4, 3, 3, 3), {"padding": 2}, id="pad-int"),
    pytest.param((2, 3, 6, 7), (4, 3, 3, 3), {"padding": (2, 0)}, id="pad-pair"),
    pytest.param((2, 3, 6, 7), (4, 3, 3, 3), {"padding": (0, 2, 1, 3)}, id="pad-4tuple"),
    pytest.param(
        (2, 3, 8, 8), (4, 3, 3, 3), {"stride": 2, "padding": (1, 0, 0, 2)}, id="pad-4tuple-stride2"
    ),
    pytest.param((2, 3, 6, 7), (4, 3, 3, 5), {"padding": "same"}, id="same-odd"),
    pytest.param((2, 3, 6, 7), (4, 3, 2, 4), {"padding": "same"}, id="same-even"),
    pytest.param(
        (2, 3, 7, 8), (4, 3, 2, 3), {"padding": "same", "dilation": 2}, id="same-even-dilated"
    ),
    pytest.param((2, 3, 6, 7), (4, 3, 3, 3), {"padding": "valid"}, id="valid"),
    pytest.param((2, 3, 9, 9), (4, 3, 3, 3), {"dilation": 2}, id="dilation2"),
    pytest.param(
        (2, 3, 9, 10),
        (4, 3, 2, 3),
        {"dilation": (2, 3), "stride": 2, "padding": 1},
        id="dil-stride",
    ),
    pytest.param((2, 4, 6, 6), (6, 2, 3, 3), {"groups": 2, "padding": 1}, id="groups2"),
    pytest.param((2, 4, 7, 6), (4, 1, 3, 3), {"groups": 4, "stride": 2}, id="depthwise"),
    pytest.param((2, 4, 6, 6), (8, 1, 3, 3), {"groups": 4, "padding": "same"}, id="depthwise-x2"),
    pytest.param((2, 3, 8, 9), (4, 3, 3, 4), {"stride": 3}, id="not-divisible"),
    pytest.param((1, 1, 5, 5), (2, 1, 5, 5), {}, id="kernel-fills-input"),
    pytest.param((3, 2, 5, 4), (5, 2, 1, 1), {}, id="1x1"),
    # Enough channels that the columns come in several groups of kernel rows.
    pytest.param((2, 64, 5, 6), (3, 64, 3, 3), {"padding": 1}, id="wide-3-row-groups"),
    pytest.param(
        (2, 48, 7, 6), (4, 48, 3, 2), {"dilation": (2, 1), "stride": (1, 2)}, id="wide-2-row-groups"
    ),
    pytest.param((2, 48, 9, 8), (3, 48, 5, 3), {"stride": 2, "padding": 2}, id="wide-stride2"),
    pytest.param((2, 128, 5, 5), (4, 64, 3, 3), {"groups": 2}, id="wide-groups2"),
    # "same" layers computed in wide rows (a window is a constant shift of the input):
    # taps reaching past the whole plane, and asymmetric padding with dilation.
    pytest.param(
        (2, 3, 5, 2), (4, 3, 3, 3), {"padding": "same", "dilation": 3}, id="same-wider-than-x"
    ),
    pytest.param(
        (2, 4, 6, 7),
        (6, 2, 3, 2),
        {"padding": (3, 1, 0, 2), "dilation": (2, 2), "groups": 2},
        id="same-asymmetric-dilated-groups",
    ),
    # Padding beyond the kernel's reach: dX by col2im, not by correlation.
    pytest.param((2, 3, 5, 4), (4, 3, 1, 2), {"padding": (1, 0, 2, 1)}, id="pad-beyond-reach"),
]


def plan_for(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    kwargs: dict[str, Any],
    *,
    bias: bool = True,
    dtype: Any = np.float64,
    **options: Any,
) -> ConvPlan:
    """The plan of this layer (``options``: ``path``, ``dx``, ``limits`` of conv2d_plan)."""
    geom = conv2d_geometry(x_shape, w_shape, bias=bias, **kwargs)
    return conv2d_plan(geom, np.dtype(dtype).itemsize, **options)


def grid_case(case: str) -> tuple[tuple[int, ...], tuple[int, ...], dict[str, Any]]:
    (param,) = [p for p in GRID if p.id == case]
    return param.values  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("case", "correlates"),
    [
        ("plain", True),
        ("same-odd", True),
        ("same-asymmetric-dilated-groups", True),
        ("1x1", True),
        ("stride2", False),
        ("stride(1,2)", False),
        ("pad-beyond-reach", False),
    ],
)
def test_which_layers_compute_dx_by_correlation(case: str, correlates: bool) -> None:
    # Stride 1 with padding within the kernel's reach: dX is dout correlated with the
    # rotated kernel; the rest scatter it back by col2im. Both are checked against the
    # reference loops by every test of the grid.
    plan = plan_for(*grid_case(case))
    assert plan.dx is (DxPath.CORRELATION if correlates else DxPath.COL2IM)
    assert (plan.dx_plan is not None) == correlates


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kwargs", "path"),
    [
        # Small outputs of a batch: one GEMM over the whole batch.
        pytest.param((8, 64, 7, 7), (64, 64, 3, 3), {"padding": 1}, ConvPath.WHOLE_BATCH, id="7x7"),
        pytest.param(
            (8, 64, 28, 28), (64, 64, 3, 3), {"padding": 1}, ConvPath.WHOLE_BATCH, id="28x28"
        ),
        # Strided layers switch at 14x14 only.
        pytest.param(
            (8, 64, 56, 56),
            (64, 64, 3, 3),
            {"stride": 2, "padding": 1},
            ConvPath.BANDS,
            id="s2-28x28",
        ),
        pytest.param(
            (8, 64, 28, 28),
            (64, 64, 3, 3),
            {"stride": 2, "padding": 1},
            ConvPath.WHOLE_BATCH,
            id="s2-14x14",
        ),
        # One sample has no batch to share a GEMM: bands.
        pytest.param(
            (1, 64, 7, 7), (64, 64, 3, 3), {"padding": 1}, ConvPath.BANDS, id="one-sample"
        ),
        pytest.param((4, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, ConvPath.BANDS, id="56x56"),
        # Many small per-sample GEMMs: chunks of the batch (on threads when there are two).
        pytest.param(
            (100, 3, 31, 31), (25, 3, 3, 3), {"stride": 2}, ConvPath.PER_SAMPLE, id="chunks"
        ),
    ],
)
def test_the_path_each_layer_takes(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], kwargs: dict[str, Any], path: ConvPath
) -> None:
    limits = ConvLimits(workers=2)
    plan = plan_for(x_shape, w_shape, kwargs, dtype=np.float32, limits=limits)
    assert plan.path is path
    assert plan.forward_workers == (2 if path is ConvPath.PER_SAMPLE else 1)


def test_inference_keeps_whole_batch_gemms_up_to_14x14() -> None:
    at_28 = plan_for((8, 64, 28, 28), (64, 64, 3, 3), {"padding": 1})
    assert (at_28.path, at_28.inference_path) == (ConvPath.WHOLE_BATCH, ConvPath.BANDS)
    at_14 = plan_for((8, 64, 14, 14), (64, 64, 3, 3), {"padding": 1})
    assert at_14.inference_path is ConvPath.WHOLE_BATCH


def conv_param(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "stride": kwargs.get("stride", 1),
        "pad": kwargs.get("padding", 0),
        "dilation": kwargs.get("dilation", 1),
        "groups": kwargs.get("groups", 1),
    }


def check_against_reference(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    kwargs: dict[str, Any],
    rng: Any,
    plan: ConvPlan | None = None,
) -> None:
    out, cache = conv2d_forward(x, w, b, **kwargs, plan=plan)
    ref_out, ref_cache = reference.conv_forward_naive(x, w, b, conv_param(kwargs))
    assert out.shape == ref_out.shape
    dout = rng.standard_normal(out.shape).astype(out.dtype)
    bound = conv_magnitudes(x, w, b, dout, kwargs)
    assert_close(out, ref_out, bound=bound["out"])
    # The inference pass: the same sums, possibly over other GEMM shapes.
    inferred = conv2d_inference(x, w, b, **kwargs, plan=plan)
    assert inferred.dtype == out.dtype
    assert inferred.flags.c_contiguous
    assert_close(inferred, ref_out, bound=bound["out"])
    dx, dw, db = conv2d_backward(dout, cache)
    ref_dx, ref_dw, ref_db = reference.conv_backward_naive(dout, ref_cache)
    assert (dx.shape, dw.shape) == (x.shape, w.shape)
    assert dx.dtype == dw.dtype == out.dtype
    assert_close(dx, ref_dx, bound=bound["dx"])
    assert_close(dw, ref_dw, bound=bound["dw"])
    if b is None:
        assert db is None
    else:
        assert db is not None
        assert ref_db is not None
        assert db.dtype == out.dtype
        assert_close(db, ref_db, bound=bound["db"])


@pytest.mark.parametrize("path", list(ConvPath), ids=[p.value for p in ConvPath])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("x_shape", "w_shape", "kwargs"), GRID)
def test_matches_reference(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    kwargs: dict[str, Any],
    dtype: Any,
    path: ConvPath,
    rng: np.random.Generator,
) -> None:
    plan = plan_for(x_shape, w_shape, kwargs, dtype=dtype, path=path)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    out, cache = conv2d_forward(x, w, b, **kwargs, plan=plan)
    assert out.dtype == dtype
    assert cache.plan is plan
    check_against_reference(x, w, b, kwargs, rng, plan)


@pytest.mark.parametrize("dx", list(DxPath), ids=[p.value for p in DxPath])
@pytest.mark.parametrize("path", list(ConvPath), ids=[p.value for p in ConvPath])
@pytest.mark.parametrize(
    "case", ["plain", "same-odd", "same-asymmetric-dilated-groups", "1x1", "wide-3-row-groups"]
)
def test_both_dx_paths_on_every_forward_path(
    case: str, path: ConvPath, dx: DxPath, rng: np.random.Generator
) -> None:
    x_shape, w_shape, kwargs = grid_case(case)
    plan = plan_for(x_shape, w_shape, kwargs, path=path, dx=dx)
    assert plan.dx is dx
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    check_against_reference(x, w, b, kwargs, rng, plan)


@pytest.mark.parametrize(("x_shape", "w_shape", "kwargs"), GRID[:3] + GRID[15:17])
def test_matches_reference_without_bias(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    kwargs: dict[str, Any],
    rng: np.random.Generator,
) -> None:
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    check_against_reference(x, w, None, kwargs, rng)


def share_bytes_for(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    kwargs: dict[str, Any],
    samples: int,
    itemsize: int,
) -> int:
    """A dX share budget of ``samples`` samples of the forward's columns (every kernel
    row), so that the forward pass and each dX row group chunk too."""
    plan = plan_for(x_shape, w_shape, kwargs)
    g = plan.geom
    row_len = g.padded_hw[1] if g.sw == 1 else g.out_w
    return samples * g.c * g.kh * g.kw * g.out_h * row_len * itemsize


# Batches of 3 and 5 samples cut into chunks of one, two or three samples (the chunk's
# shares fill ConvLimits.share_bytes), including a short last chunk.
CHUNKED = [
    pytest.param((5, 3, 9, 8), (4, 3, 3, 3), {"stride": 2, "padding": 1}, 1, id="stride2-by-1"),
    pytest.param((5, 3, 9, 9), (4, 3, 3, 3), {"stride": 2, "padding": 1}, 2, id="stride2-by-2"),
    pytest.param((3, 4, 8, 9), (6, 2, 3, 2), {"groups": 2, "dilation": 2}, 2, id="groups-dil-by-2"),
    pytest.param((5, 2, 7, 7), (2, 2, 2, 3), {"padding": (1, 0, 2, 1)}, 3, id="pad4-by-3"),
    pytest.param((3, 48, 7, 6), (4, 48, 3, 2), {"dilation": (2, 1)}, 1, id="row-groups-by-1"),
]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(("x_shape", "w_shape", "kwargs", "chunk"), CHUNKED)
def test_matches_reference_in_sample_chunks(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    kwargs: dict[str, Any],
    chunk: int,
    with_bias: bool,
    rng: np.random.Generator,
) -> None:
    default = plan_for(x_shape, w_shape, kwargs, bias=with_bias)
    assert default.forward_chunks == (slice(0, x_shape[0]),)  # the default holds the batch
    limits = ConvLimits(share_bytes=share_bytes_for(x_shape, w_shape, kwargs, chunk, 8))
    plan = plan_for(
        x_shape, w_shape, kwargs, bias=with_bias, path=ConvPath.PER_SAMPLE, limits=limits
    )
    assert plan.forward_chunks[0] == slice(0, chunk)
    assert len(plan.backward_chunks) > 1 or chunk >= x_shape[0]
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if with_bias else None
    check_against_reference(x, w, b, kwargs, rng, plan)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(
    "rows", [1, 2, 3, 100], ids=["band1", "band2", "band3-short-last", "whole"]
)
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kwargs"),
    [*GRID[0:3:2], GRID[7], GRID[9], GRID[11], *GRID[15:18:2], *GRID[21:23], *GRID[25:]],
)
def test_in_bands_of_output_rows(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    kwargs: dict[str, Any],
    rows: int,
    with_bias: bool,
    dtype: Any,
    rng: np.random.Generator,
) -> None:
    geom = conv2d_geometry(x_shape, w_shape, bias=with_bias, **kwargs)
    column = (geom.c // geom.groups * geom.kh * geom.kw + 1) * geom.out_w * np.dtype(dtype).itemsize
    limits = ConvLimits(band_bytes=rows * column)
    plan = conv2d_plan(geom, np.dtype(dtype).itemsize, path=ConvPath.BANDS, limits=limits)
    assert plan.band_rows == min(rows, geom.out_h)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if with_bias else None
    out = conv2d_inference(x, w, b, **kwargs, plan=plan)
    ref_out, ref_cache = reference.conv_forward_naive(x, w, b, conv_param(kwargs))
    dout = rng.standard_normal(out.shape).astype(dtype)
    bound = conv_magnitudes(x, w, b, dout, kwargs)
    assert out.dtype == dtype
    assert_close(out, ref_out, bound=bound["out"])
    # The training pass computes in the same bands (the same bits) and keeps the padded
    # input, not the columns; its backward pass copies each band's columns again for dW.
    trained, cache = conv2d_forward(x, w, b, **kwargs, plan=plan)
    assert cache.cols is None
    np.testing.assert_array_equal(trained, out)
    dx, dw, db = conv2d_backward(dout, cache)
    ref_dx, ref_dw, ref_db = reference.conv_backward_naive(dout, ref_cache)
    assert dx.dtype == dw.dtype == dtype
    assert_close(dx, ref_dx, bound=bound["dx"])
    assert_close(dw, ref_dw, bound=bound["dw"])
    if b is None:
        assert db is None
    else:
        assert db is not None
        assert ref_db is not None
        assert_close(db, ref_db, bound=bound["db"])
    if cache.padded is not None and not np.shares_memory(cache.padded, x):
        return
    x_before = x.copy()  # an unpadded input is read in place, never written
    conv2d_backward(dout, conv2d_forward(x, w, b, **kwargs, plan=plan)[1])
    np.testing.assert_array_equal(x, x_before)


# Layers whose chunks of the batch run on threads (ConvPlan.forward_workers): chunks of
# two samples, several of them, with a short last chunk.
THREADED = [
    pytest.param((5, 3, 9, 8), (4, 3, 3, 3), {"stride": 2, "padding": 1}, id="stride2"),
    pytest.param((7, 3, 10, 9), (5, 3, 2, 3), {"stride": 2, "dilation": 2}, id="stride2-dil2"),
    pytest.param(
        (5, 4, 9, 9), (6, 2, 3, 3), {"stride": 2, "groups": 2, "padding": 1}, id="stride2-groups2"
    ),
    pytest.param((5, 4, 8, 7), (4, 1, 3, 3), {"stride": (1, 2), "groups": 4}, id="depthwise"),
]


def threaded_plan(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    kwargs: dict[str, Any],
    *,
    bias: bool = True,
    dtype: Any = np.float64,
    workers: int = 2,
) -> ConvPlan:
    """A plan that runs this layer in chunks of two samples, on ``workers`` threads."""
    itemsize = np.dtype(dtype).itemsize
    limits = ConvLimits(
        share_bytes=share_bytes_for(x_shape, w_shape, kwargs, 2, itemsize),
        min_chunk_macs=0,
        workers=workers,
    )
    plan = plan_for(
        x_shape, w_shape, kwargs, bias=bias, dtype=dtype, path=ConvPath.PER_SAMPLE, limits=limits
    )
    chunks = plan.forward_chunks
    assert len(chunks) >= 2
    assert chunks[-1].stop - chunks[-1].start < chunks[0].stop  # a short last chunk
    assert plan.forward_workers == workers
    return plan


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(("x_shape", "w_shape", "kwargs"), THREADED)
def test_matches_reference_on_threads(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    kwargs: dict[str, Any],
    with_bias: bool,
    dtype: Any,
    rng: np.random.Generator,
) -> None:
    plan = threaded_plan(x_shape, w_shape, kwargs, bias=with_bias, dtype=dtype)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if with_bias else None
    check_against_reference(x, w, b, kwargs, rng, plan)


def forward_backward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    dout: np.ndarray,
    kwargs: dict[str, Any],
    plan: ConvPlan,
) -> list[np.ndarray]:
    out, cache = conv2d_forward(x, w, b, **kwargs, plan=plan)
    dx, dw, db = conv2d_backward(dout, cache)
    assert db is not None
    return [out, dx, dw, db]


@pytest.mark.parametrize(("x_shape", "w_shape", "kwargs"), THREADED)
def test_threads_give_the_same_bits_as_one_thread(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    kwargs: dict[str, Any],
    rng: np.random.Generator,
) -> None:
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    dout = rng.standard_normal(conv2d_forward(x, w, b, **kwargs)[0].shape)
    runs = [
        forward_backward(x, w, b, dout, kwargs, threaded_plan(x_shape, w_shape, kwargs, workers=n))
        for n in (1, 2, 2)  # serial, then the same chunks twice on threads
    ]
    for run in runs[1:]:
        for got, want in zip(run, runs[0], strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kwargs"),
    [
        # Stride 1: junk columns of one chunk reach into the next chunk's samples.
        pytest.param((5, 3, 9, 8), (4, 3, 3, 3), {"padding": 1}, id="junk-columns"),
        # Per-sample GEMMs big enough for BLAS's own threads.
        pytest.param((4, 32, 32, 32), (64, 32, 3, 3), {"stride": 2}, id="blas-threads"),
    ],
)
def test_serial_chunks_where_threads_would_race_or_oversubscribe(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], kwargs: dict[str, Any]
) -> None:
    # One sample a chunk, any work worth a thread, two workers: still serial.
    limits = ConvLimits(share_bytes=1, min_chunk_macs=0, workers=2)
    plan = plan_for(x_shape, w_shape, kwargs, path=ConvPath.PER_SAMPLE, limits=limits)
    assert len(plan.forward_chunks) == len(plan.backward_chunks) == x_shape[0]
    assert plan.forward_workers == plan.backward_workers == 1


def test_a_plan_for_another_convolution_is_refused() -> None:
    plan = plan_for((1, 3, 5, 5), (4, 3, 3, 3), {}, bias=False)
    with pytest.raises(ParameterError, match=r"plan was made for another convolution") as info:
        conv2d_forward(X4, W4, padding=1, plan=plan)
    assert info.value.arg == "plan"
    # It names what differs, and only that.
    assert str(info.value) == (
        "plan was made for another convolution: pt 0 (this one 1), pb 0 (this one 1), "
        "pl 0 (this one 1), pr 0 (this one 1), out_h 3 (this one 5), out_w 3 (this one 5)"
    )
    with pytest.raises(ParameterError, match=r"^[^,]*itemsize 8 \(this one 4\)$"):
        conv2d_inference(X4.astype(np.float32), W4.astype(np.float32), plan=plan)
    with pytest.raises(ParameterError, match=r"^[^,]*bias False \(this one True\)$"):
        conv2d_forward(X4, W4, np.zeros(4), plan=plan)
    with pytest.raises(ParameterError, match=r"plan must be a ConvPlan, got str"):
        conv2d_forward(X4, W4, plan="bands")  # type: ignore[arg-type]


def test_dx_by_correlation_is_refused_where_it_cannot_compute() -> None:
    with pytest.raises(ParameterError, match=r"needs stride 1 .* got stride \(2, 2\)") as info:
        plan_for((1, 3, 5, 5), (4, 3, 3, 3), {"stride": 2}, dx=DxPath.CORRELATION)
    assert info.value.arg == "plan"


def test_integer_input_becomes_float64(rng: np.random.Generator) -> None:
    x = rng.integers(-5, 5, size=(2, 3, 6, 6))
    w = rng.integers(-3, 3, size=(4, 3, 3, 3))
    b = np.array([1, 0, -1, 2])
    out, _ = conv2d_forward(x, w, b, padding=1)
    assert out.dtype == np.float64
    check_against_reference(
        x.astype(np.float64), w.astype(np.float64), b * 1.0, {"padding": 1}, rng
    )
    np.testing.assert_array_equal(out, conv2d_forward(x * 1.0, w * 1.0, b * 1.0, padding=1)[0])


def test_bool_input_becomes_float64() -> None:
    out, _ = conv2d_forward(np.ones((1, 1, 3, 3), dtype=bool), np.ones((1, 1, 2, 2), dtype=bool))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), 4.0))


@pytest.mark.parametrize(
    ("x_dtype", "w_dtype", "b_dtype"),
    [
        (np.float32, np.float64, np.float32),
        (np.float64, np.float32, np.float32),
        (np.float32, np.float32, np.float64),
    ],
    ids=["w64", "x64", "b64"],
)
def test_mixed_float_dtypes_compute_in_float64(
    x_dtype: Any, w_dtype: Any, b_dtype: Any, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((1, 2, 4, 4)).astype(x_dtype)
    w = rng.standard_normal((3, 2, 3, 3)).astype(w_dtype)
    b: np.ndarray = rng.standard_normal(3).astype(b_dtype)
    out, cache = conv2d_forward(x, w, b)
    dx, dw, db = conv2d_backward(np.ones(out.shape, dtype=np.float32), cache)
    assert out.dtype == dx.dtype == dw.dtype == np.float64
    assert db is not None
    assert db.dtype == np.float64


def test_float32_dout_casts_to_forward_dtype(rng: np.random.Generator) -> None:
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    out, cache = conv2d_forward(x, w)
    dx, dw, db = conv2d_backward(np.ones(out.shape), cache)  # float64 dout
    assert dx.dtype == dw.dtype == np.float32
    assert db is None


def test_unused_trailing_input_gets_zero_gradient(rng: np.random.Generator) -> None:
    # 8 = 3 + 2*2 + 1: with stride 2 and a 3-wide kernel, the last row and column are unused.
    x = rng.standard_normal((1, 1, 8, 8))
    out, cache = conv2d_forward(x, rng.standard_normal((1, 1, 3, 3)), stride=2)
    assert out.shape == (1, 1, 3, 3)
    dx, _, _ = conv2d_backward(np.ones(out.shape), cache)
    np.testing.assert_array_equal(dx[0, 0, -1, :], 0.0)
    np.testing.assert_array_equal(dx[0, 0, :, -1], 0.0)


@pytest.mark.parametrize("padding", [1, 0], ids=["padded", "unpadded-input-read-in-place"])
def test_inputs_are_not_modified(padding: int, rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((2, 3, 3, 3))
    x0, w0 = x.copy(), w.copy()
    out, cache = conv2d_forward(x, w, padding=padding)
    conv2d_inference(x, w, padding=padding)
    dout = np.ones(out.shape)
    conv2d_backward(dout, cache)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(dout, 1.0)


# --------------------------------------------------------------------------- central differences

GRADCHECK = [
    pytest.param((2, 2, 5, 5), (3, 2, 3, 3), {}, id="plain"),
    pytest.param((2, 2, 6, 7), (3, 2, 3, 2), {"stride": 2, "padding": 1}, id="stride2-pad1"),
    pytest.param((1, 2, 5, 6), (2, 2, 2, 2), {"padding": "same"}, id="same-even"),
    pytest.param((1, 2, 6, 5), (2, 2, 3, 3), {"padding": (1, 0, 2, 0)}, id="pad-4tuple"),
    pytest.param((1, 4, 7, 7), (4, 2, 2, 3), {"dilation": 2, "groups": 2}, id="dilation-groups"),
]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(("x_shape", "w_shape", "kwargs"), GRADCHECK)
def test_gradients_match_central_differences(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    kwargs: dict[str, Any],
    with_bias: bool,
    rng: np.random.Generator,
) -> None:
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if with_bias else None
    out, cache = conv2d_forward(x, w, b, **kwargs)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv2d_backward(dout, cache)

    def f() -> np.ndarray:
        return conv2d_forward(x, w, b, **kwargs)[0]

    assert_gradient(f, x, dx, dout)
    assert_gradient(f, w, dw, dout)
    if b is None:
        assert db is None
    else:
        assert db is not None
        assert_gradient(f, b, db, dout)


# --------------------------------------------------------------------------- rejected arguments

X4 = np.zeros((1, 3, 5, 5))
W4 = np.zeros((4, 3, 3, 3))

REJECTED = [
    pytest.param(
        {"x": np.zeros((3, 5, 5))},
        ShapeError,
        "x",
        r"x must be 4-D, got shape \(3, 5, 5\)",
        id="x-3d",
    ),
    pytest.param(
        {"w": np.zeros((4, 3, 3))},
        ShapeError,
        "w",
        r"w must be 4-D, got shape \(4, 3, 3\)",
        id="w-3d",
    ),
    pytest.param(
        {"w": np.zeros((4, 2, 3, 3))},
        ShapeError,
        "w",
        r"w has 2 input channels but x has 3 \(groups=1",
        id="channel-mismatch",
    ),
    pytest.param(
        {"w": np.zeros((3, 3, 3, 3)), "groups": 3},
        ShapeError,
        "w",
        r"w has 3 input channels but x has 3 \(groups=3, so w needs 1\)",
        id="channel-mismatch-groups",
    ),
    pytest.param(
        {"groups": 3, "w": np.zeros((4, 1, 3, 3))},
        ShapeError,
        "w",
        r"w has 4 filters, which groups=3 does not divide",
        id="groups-not-dividing-filters",
    ),
    pytest.param(
        {"w": np.zeros((4, 1, 3, 3)), "groups": 2},
        ShapeError,
        "x",
        r"x has 3 channels, which groups=2 does not divide",
        id="groups-not-dividing-channels",
    ),
    pytest.param(
        {"b": np.zeros(3)},
        ShapeError,
        "b",
        r"b must have shape \(4,\), got \(3,\)",
        id="bias-length",
    ),
    pytest.param(
        {"b": np.zeros((4, 1))}, ShapeError, "b", r"b must have shape \(4,\)", id="bias-2d"
    ),
    pytest.param(
        {"x": np.zeros((1, 3, 2, 5))},
        ShapeError,
        "x",
        r"output height would be 0.*height 2",
        id="non-positive-output",
    ),
    pytest.param(
        {"dilation": 3}, ShapeError, "x", r"output height would be -1", id="dilation-too-large"
    ),
    pytest.param(
        {"padding": "same", "stride": 2},
        ParameterError,
        "padding",
        r"padding='same' needs stride 1, got stride \(2, 2\)",
        id="same-with-stride2",
    ),
    pytest.param({"padding": "full"}, ParameterError, "padding", r"'full'", id="padding-unknown"),
    pytest.param(
        {"padding": -1}, ParameterError, "padding", r">= 0, got -1", id="padding-negative"
    ),
    pytest.param(
        {"padding": (1, 2, 3)}, ParameterError, "padding", r"got 3 values", id="padding-3tuple"
    ),
    pytest.param({"stride": True}, ParameterError, "stride", r"True", id="stride-bool"),
    pytest.param({"stride": 1.5}, ParameterError, "stride", r"1\.5", id="stride-float"),
    pytest.param(
        {"stride": 0}, ParameterError, "stride", r"stride must be >= 1, got 0", id="stride-0"
    ),
    pytest.param(
        {"stride": (1, 0)},
        ParameterError,
        "stride",
        r"stride\[1\] must be >= 1, got 0",
        id="stride-pair-0",
    ),
    pytest.param({"dilation": 0}, ParameterError, "dilation", r">= 1, got 0", id="dilation-0"),
    pytest.param({"groups": 0}, ParameterError, "groups", r">= 1, got 0", id="groups-0"),
    pytest.param(
        {"x": np.zeros((1, 3, 5, 5), dtype=complex)},
        DtypeError,
        "x",
        r"x must be float32 or float64.*complex128",
        id="x-complex",
    ),
    pytest.param(
        {"w": np.zeros((4, 3, 3, 3), dtype=np.float16)},
        DtypeError,
        "w",
        r"got dtype float16",
        id="w-float16",
    ),
    pytest.param({"b": np.zeros(4, dtype=complex)}, DtypeError, "b", r"complex128", id="b-complex"),
]


@pytest.mark.parametrize(("changes", "error", "arg", "message"), REJECTED)
def test_rejected_arguments(
    changes: dict[str, Any], error: type[CnnError], arg: str, message: str
) -> None:
    kwargs: dict[str, Any] = {"x": X4, "w": W4, "b": None, **changes}
    with pytest.raises(error, match=message) as info:
        conv2d_forward(**kwargs)
    assert info.value.arg == arg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("dout", "error", "message"),
    [
        pytest.param(
            np.zeros((1, 4, 3, 4)),
            ShapeError,
            r"dout has shape \(1, 4, 3, 4\) but the forward output has shape \(1, 4, 3, 3\)",
            id="dout-shape",
        ),
        pytest.param(np.zeros((4, 3, 3)), ShapeError, r"\(4, 3, 3\)", id="dout-3d"),
        pytest.param(
            np.zeros((1, 4, 3, 3), dtype=complex), DtypeError, "complex", id="dout-complex"
        ),
    ],
)
def test_rejected_dout(dout: np.ndarray, error: type[CnnError], message: str) -> None:
    _, cache = conv2d_forward(X4, W4)
    with pytest.raises(error, match=message) as info:
        conv2d_backward(dout, cache)
    assert info.value.arg == "dout"


# --------------------------------------------------------------------------- PyTorch, if installed

TORCH_CASES = [
    pytest.param((2, 3, 9, 8), (4, 3, 3, 3), {"stride": 2, "padding": 1}, id="stride2-pad1"),
    pytest.param((2, 4, 8, 8), (6, 2, 3, 2), {"dilation": (2, 1), "groups": 2}, id="dil-groups"),
    pytest.param((2, 4, 7, 7), (4, 1, 3, 3), {"groups": 4, "padding": "same"}, id="depthwise-same"),
    pytest.param((1, 3, 6, 7), (2, 3, 2, 3), {"padding": (0, 1, 2, 1)}, id="pad-4tuple"),
]


@pytest.mark.parametrize(("x_shape", "w_shape", "kwargs"), TORCH_CASES)
def test_matches_torch(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    kwargs: dict[str, Any],
    rng: np.random.Generator,
) -> None:
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    out, cache = conv2d_forward(x, w, b, **kwargs)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv2d_backward(dout, cache)

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    padding = kwargs.get("padding", 0)
    tin = tx
    if isinstance(padding, tuple) and len(padding) == 4:  # F.conv2d takes symmetric padding only
        top, bottom, left, right = padding
        tin, padding = torch.nn.functional.pad(tx, (left, right, top, bottom)), 0
    tout = torch.nn.functional.conv2d(
        tin,
        tw,
        tb,
        stride=kwargs.get("stride", 1),
        padding=padding,
        dilation=kwargs.get("dilation", 1),
        groups=kwargs.get("groups", 1),
    )
    tout.backward(torch.tensor(dout))
    # torch sums the same products in its own order: the same K·eps·M bound.
    bound = conv_magnitudes(x, w, b, dout, kwargs)
    assert_close(out, tout.detach().numpy(), bound=bound["out"])
    assert_close(dx, tx.grad.numpy(), bound=bound["dx"])
    assert_close(dw, tw.grad.numpy(), bound=bound["dw"])
    assert db is not None
    assert_close(db, tb.grad.numpy(), bound=bound["db"])
