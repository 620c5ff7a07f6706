"""2-D convolution (cross-correlation, as PyTorch's ``F.conv2d``), forward and backward.

The tutorial writes one output pixel of a ``f×f`` kernel as

    u_ij = sum_p sum_q x_{i+p-1, j+q-1} * w_pq + b

and observes, for the backward pass, that

- ``dL/dW`` is the input ``X`` cross-correlated with ``dL/dU``;
- ``dL/dX`` is the zero-padded ``dL/dU`` cross-correlated with the kernel
  rotated by 180°;
- ``dL/db`` is the sum of ``dL/dU``.

Here all three are computed with matrix products over an *im2col* matrix: every
receptive field of the padded input, one column each, so that the forward pass
is a single (batched) GEMM ``W @ cols``; ``dW`` is ``dU @ colsᵀ`` (the first
observation), and ``dX`` is ``Wᵀ @ dU`` scattered back onto the input ("col2im",
one strided add per kernel offset), which is the second observation written as
a sum over kernel offsets instead of a convolution with the rotated kernel. For
wide layers ``Wᵀ @ dU`` is computed a group of kernel rows at a time
(:func:`_row_groups`), so that the shares never exist all at once. Both the
forward GEMM and ``Wᵀ @ dU`` run over chunks of the batch of about
:data:`_SHARE_BYTES` (:func:`_sample_chunks`): the columns a chunk just copied,
or the shares it just computed, are still in cache for the next step, and the
temporaries are small enough to be reused from the heap instead of faulted in.

Not done, measured on the benchmark's stride-1 cases: an implicit GEMM (one
``W[:, :, i, j] @ X[:, shift:shift + L]`` per kernel offset on a channel-major
input, no im2col matrix) was not faster: 0.97-2.0x the time of this path in
float32 (noisy runs) and 1.4x in float64. Its ``dW`` GEMMs (tiny output, very
long inner dimension) ran at half the BLAS rate, and ``np.matmul`` cannot
accumulate into its output, so the forward pass pays an extra pass over the
output per kernel offset.

The plain-loop twins that read like the tutorial are
:func:`cnncore.reference.conv_forward_naive` and
:func:`cnncore.reference.conv_backward_naive`.

The bias is one more column of ``W`` against a row of ones appended to ``cols``,
so the forward GEMM adds it and the ``dW`` GEMM returns ``db`` as its last column
(no separate pass over the output for either).

Layout of the columns. ``cols`` has shape ``(N, G, C/G * KH * KW, out_h * L)``
(plus the row of ones):
the batch stays outermost so that the GEMM output is already ``(N, F, ...)``
and needs no transpose. When the horizontal stride is 1, each output row is
computed ``L = Wp`` (padded width) wide instead of ``out_w`` wide: a window
then moves through memory by a constant shift, so building the columns and
scattering them back are copies and adds of long contiguous runs instead of
short rows. The extra ``Wp - out_w`` "junk" columns are cropped from the output,
and their upstream gradient is zero, so they contribute nothing to ``dW`` or
``dX``. With a horizontal stride above 1, ``L = out_w``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .geometry import Conv2dGeometry, conv2d_geometry
from .validation import as_float_array, check_bias, check_dout, common_dtype

__all__ = ["Conv2dCache", "conv2d_backward", "conv2d_forward"]


@dataclass(frozen=True)
class Conv2dCache:
    """What :func:`conv2d_backward` needs from :func:`conv2d_forward`.

    Attributes
    ----------
    geom
        The resolved geometry (shapes, stride, padding, dilation, groups).
    cols
        The im2col matrix, shape ``(N, G, C/G * KH * KW + bias, out_h * L)``, whose
        last row is ones when there is a bias; kept so the backward pass does not
        rebuild it (it is ``KH*KW`` times the input's size).
    w
        The weight in the computation's dtype, shape ``(F, C/G, KH, KW)``.
    has_bias
        Whether the forward pass had a bias (``db`` is ``None`` otherwise).
    """

    geom: Conv2dGeometry
    cols: np.ndarray
    w: np.ndarray
    has_bias: bool


def conv2d_forward(
    x: Any,
    w: Any,
    b: Any = None,
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: Any = 1,
) -> tuple[np.ndarray, Conv2dCache]:
    """Forward pass of a 2-D convolution: ``out = x ⋆ w + b`` (cross-correlation).

    The vectorised twin of :func:`cnncore.reference.conv_forward_naive`: one batched
    GEMM over an im2col matrix, no Python loop over the batch, channels or pixels.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        Input. float32 and float64 keep their dtype; integer and bool become float64.
    w : array_like, shape (F, C // groups, KH, KW)
        Kernels.
    b : array_like, shape (F,), optional
        Bias, one per kernel; ``None`` for none.
    stride : int or (int, int)
        Step between windows, ``>= 1``.
    padding : int, (int, int), (int, int, int, int), "same" or "valid"
        Zero padding: on every side, ``(ph, pw)``, ``(top, bottom, left, right)``,
        ``"same"`` (stride 1 only; the extra pixel of an odd total goes to the
        bottom/right) or ``"valid"`` (none).
    dilation : int or (int, int)
        Spacing between kernel taps, ``>= 1``.
    groups : int
        Channel groups: input channels ``g*C/G .. (g+1)*C/G`` feed only kernels
        ``g*F/G .. (g+1)*F/G``. ``groups=C`` is a depthwise convolution.

    Returns
    -------
    out : numpy.ndarray, shape (N, F, H', W')
        ``H' = floor((H + pad_top + pad_bottom - dilation*(KH - 1) - 1) / stride) + 1``,
        likewise ``W'``. The dtype is float64 if any of ``x``, ``w``, ``b`` is
        float64 (or integer), else float32.
    cache : Conv2dCache
        For :func:`conv2d_backward`. Holds the im2col matrix, ``KH*KW`` times the
        size of the (padded) input.

    Raises
    ------
    DtypeError
        If an array is not float32, float64, integer or bool (complex, say).
    ShapeError
        If ``x`` or ``w`` is not 4-D, the channels do not match ``groups``, ``b`` is
        not ``(F,)``, or the output would have a non-positive size.
    ParameterError
        If ``stride``, ``padding``, ``dilation`` or ``groups`` is malformed or out
        of range (for instance ``stride=0``, ``stride=True``, ``stride=1.5``, or
        ``padding="same"`` with a stride above 1).
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w")
    b = None if b is None else as_float_array(b, "b")
    geom = conv2d_geometry(
        x.shape,
        w.shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=b is not None,
    )
    dtype = common_dtype(x, w, b)
    x = x.astype(dtype, copy=False)
    w = w.astype(dtype, copy=False)
    b = check_bias(b, geom.f, dtype)

    g = geom
    G, lw = g.groups, _row_len(g)
    # The bias rides in the GEMM (see the module docstring).
    k = g.c // G * g.kh * g.kw
    cols = np.empty((g.n, G, k + (b is not None), g.out_h * lw), dtype=dtype)
    windows = _windows(_padded_buffer(x, g), g)
    shape = (g.n, G, g.c // G, *windows.shape[2:])  # (N, G, C/G, KH, KW, out_h, L)
    receptive = cols[:, :, :k].reshape(shape)
    assert np.may_share_memory(receptive, cols)  # a view: only the K axis was split
    windows = windows.reshape(shape)
    wmat = w.reshape(G, g.f // G, k)
    if b is not None:
        cols[:, :, k] = 1
        wmat = np.concatenate([wmat, b.reshape(G, g.f // G, 1)], axis=-1)
    out = np.empty((g.n, G, g.f // G, g.out_h * lw), dtype=dtype)
    # A chunk of samples at a time, so that the GEMM reads columns still in cache.
    for samples in _sample_chunks(g, slice(0, g.kh), dtype.itemsize):
        receptive[samples] = windows[samples]
        np.matmul(wmat, cols[samples], out=out[samples])
    out = out.reshape(g.n, g.f, g.out_h, lw)
    if lw != g.out_w:
        out = np.ascontiguousarray(out[..., : g.out_w])
    return out, Conv2dCache(geom=g, cols=cols, w=w, has_bias=b is not None)


def conv2d_backward(
    dout: Any, cache: Conv2dCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Backward pass of :func:`conv2d_forward`.

    The vectorised twin of :func:`cnncore.reference.conv_backward_naive`. In the
    tutorial's terms: ``dw`` is the input correlated with ``dout`` (one GEMM with
    the cached im2col matrix), ``dx`` is the padded ``dout`` correlated with the
    180°-rotated kernel (computed as ``Wᵀ @ dout`` scattered back with one strided
    add per kernel offset), and ``db`` is the sum of ``dout``.

    Parameters
    ----------
    dout : array_like, shape (N, F, H', W')
        Upstream gradient, the shape of the forward output. Cast to the forward
        pass's dtype.
    cache : Conv2dCache
        The second value returned by :func:`conv2d_forward`.

    Returns
    -------
    dx : numpy.ndarray, shape (N, C, H, W)
        Gradient with respect to ``x``. Input rows/columns that no window covered
        get zero.
    dw : numpy.ndarray, shape (F, C // groups, KH, KW)
        Gradient with respect to ``w``.
    db : numpy.ndarray of shape (F,), or None
        Gradient with respect to ``b``; ``None`` when the forward pass had no bias.

    Raises
    ------
    ShapeError
        If ``dout``'s shape differs from the forward output's.
    DtypeError
        If ``dout`` is not float32, float64, integer or bool.
    """
    g, w = cache.geom, cache.w
    dout = check_dout(dout, g.output_shape, w.dtype)
    G, lw = g.groups, _row_len(g)

    if lw != g.out_w:
        # Junk columns get a zero gradient, so they add nothing below.
        wide = np.zeros((g.n, g.f, g.out_h, lw), dtype=w.dtype)
        wide[..., : g.out_w] = dout
        dout = wide
    d = dout.reshape(g.n, G, g.f // G, g.out_h * lw)

    # dW: the input correlated with dout, one GEMM per sample, summed over the batch;
    # with a bias, the row of ones in the columns makes the last column db.
    k = g.c // G * g.kh * g.kw
    dwb = np.matmul(d, cache.cols.swapaxes(-1, -2)).sum(axis=0)  # (G, F/G, k [+ 1])
    dw = dwb[..., :k].reshape(w.shape)
    db = dwb[..., k].reshape(g.f) if cache.has_bias else None

    # dX: Wᵀ @ dout gives every window's share; col2im adds them back in place, one
    # strided add per kernel offset. A chunk of samples and a group of kernel rows
    # at a time, so that the shares (KH*KW times the input) never exist all at once.
    dxbuf = np.zeros(_buffer_size(g), dtype=w.dtype)
    dwin = _windows(dxbuf, g, writeable=True)
    for rows in _row_groups(g):
        wt = _kernel_rows(w, g, rows).swapaxes(-1, -2)
        for samples in _sample_chunks(g, rows, w.itemsize):
            dcols = np.matmul(wt, d[samples])
            dcols = dcols.reshape(-1, g.c, rows.stop - rows.start, g.kw, g.out_h, lw)
            for k, i in enumerate(range(rows.start, rows.stop)):
                for j in range(g.kw):
                    dwin[samples, :, i, j] += dcols[:, :, k, j]
    dx = _unpad(dxbuf, g)
    return dx, dw, db


# --------------------------------------------------------------------------- im2col helpers


def _row_len(g: Conv2dGeometry) -> int:
    """Length of a computed output row: the padded width when ``sw == 1``, else ``out_w``."""
    return g.w + g.pl + g.pr if g.sw == 1 else g.out_w


_MIN_DEPTH = 128
"""Smallest inner dimension (rows of ``Wᵀ``) of a dX GEMM worth its own call.

Wide layers (``C/G * KW >= 128``, e.g. 64 channels of 3x3) take one kernel row at
a time, which cuts their backward peak memory by the shares of the other rows
(x(8,64,56,56)·w(64,64,3,3) float32: 146 -> 120 MB) at no measurable cost;
narrow ones (3 input channels) keep a single GEMM, which their small ``Wᵀ`` needs
to stay efficient.
"""


def _row_groups(g: Conv2dGeometry) -> list[slice]:
    """Kernel rows whose share of dX is one GEMM ``Wᵀ @ dout``, at least ``_MIN_DEPTH`` deep."""
    per_row = g.c // g.groups * g.kw
    r = min(g.kh, max(1, -(-_MIN_DEPTH // per_row)))
    return [slice(i, min(i + r, g.kh)) for i in range(0, g.kh, r)]


_SHARE_BYTES = 1 << 20
"""Size of the dX shares (``Wᵀ @ dout``) computed at once, rounded up to one sample.

x(100,3,31,31)·w(25,3,3,3) stride 2, float64: shares for chunks of 19 samples instead
of all 100 take the dX step from 3.0 to 2.5 ms. The chunk's shares are still in
cache when col2im adds them, and a buffer this size is reused from the heap where
a 5.5 MB one got fresh zero pages from the OS on every call.
"""


def _sample_chunks(g: Conv2dGeometry, rows: slice, itemsize: int) -> list[slice]:
    """Chunks of the batch whose dX shares for kernel ``rows`` fill about ``_SHARE_BYTES``."""
    per_sample = g.c * (rows.stop - rows.start) * g.kw * g.out_h * _row_len(g) * itemsize
    r = max(1, _SHARE_BYTES // per_sample)
    return [slice(i, min(i + r, g.n)) for i in range(0, g.n, r)]


def _kernel_rows(w: np.ndarray, g: Conv2dGeometry, rows: slice) -> np.ndarray:
    """The kernel rows ``rows`` as GEMM operands: shape ``(G, F/G, C/G * len(rows) * KW)``."""
    wg = w.reshape(g.groups, g.f // g.groups, g.c // g.groups, g.kh, g.kw)
    return wg[:, :, :, rows].reshape(g.groups, g.f // g.groups, -1)


def _buffer_size(g: Conv2dGeometry) -> int:
    """Elements of the flat padded-input buffer, with slack for the last junk columns."""
    hp, wp = g.h + g.pt + g.pb, g.w + g.pl + g.pr
    slack = g.dw * (g.kw - 1) if g.sw == 1 else 0
    return g.n * g.c * hp * wp + slack


def _padded_buffer(x: np.ndarray, g: Conv2dGeometry) -> np.ndarray:
    """``x`` zero-padded, as a flat buffer of :func:`_buffer_size` elements."""
    hp, wp = g.h + g.pt + g.pb, g.w + g.pl + g.pr
    buf = np.zeros(_buffer_size(g), dtype=x.dtype)
    xp = buf[: g.n * g.c * hp * wp].reshape(g.n, g.c, hp, wp)
    xp[:, :, g.pt : g.pt + g.h, g.pl : g.pl + g.w] = x
    return buf


def _unpad(buf: np.ndarray, g: Conv2dGeometry) -> np.ndarray:
    """The ``(N, C, H, W)`` interior of a flat padded buffer, as a new array."""
    hp, wp = g.h + g.pt + g.pb, g.w + g.pl + g.pr
    xp = buf[: g.n * g.c * hp * wp].reshape(g.n, g.c, hp, wp)
    return np.ascontiguousarray(xp[:, :, g.pt : g.pt + g.h, g.pl : g.pl + g.w])


def _windows(buf: np.ndarray, g: Conv2dGeometry, *, writeable: bool = False) -> np.ndarray:
    """View ``(N, C, KH, KW, out_h, L)`` of every receptive field of the padded input.

    Element ``[n, c, i, j, y, l]`` is the padded input at row ``y*sh + i*dh`` and
    column ``l*sw + j*dw`` (which runs into the next row for the junk columns
    ``l >= out_w`` when ``L`` is the padded width; the buffer's slack covers the end).
    """
    hp, wp = g.h + g.pt + g.pb, g.w + g.pl + g.pr
    e = buf.itemsize
    shape = (g.n, g.c, g.kh, g.kw, g.out_h, _row_len(g))
    strides = (g.c * hp * wp * e, hp * wp * e, g.dh * wp * e, g.dw * e, g.sh * wp * e, g.sw * e)
    return as_strided(buf, shape, strides, writeable=writeable)
