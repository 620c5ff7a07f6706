"""2-D max and average pooling, vectorised, with the semantics of PyTorch's pooling.

The tutorial's pooling layer keeps the depth and shrinks the plane to
``W2 = (W1 - F) / S + 1``; here with floor division, optional symmetric padding
(at most half the kernel) and ``ceil_mode``, all resolved by
:func:`cnncore.geometry.pool2d_geometry`.

Vectorisation: window cell ``(a, b)`` of every output pixel is one strided view
of the input (:func:`_cell`), so each op is a loop over the ``KH * KW`` cells of
the window, never over pixels. Where windows may run past the input (padding,
``ceil_mode``) the input is padded once first (``-inf`` for max, zeros for average).

- max forward: separable, like the average: a running ``np.maximum`` over the
  window's columns for every input row, then over its rows. Each window's first
  maximum (its cell index in row-major order, as ``np.argmax`` of the flattened
  window) is the first maximum of the first window row that holds the maximum,
  found at both stages by comparing the cells with the maximum. No copy of the
  windows (``docs/decisions/2026-11-26-pool-max-separable.md``).
- max backward: when the windows tile the input exactly (stride = kernel, no
  padding, sizes divisible: the ``x.reshape(N, C, H', KH, W', KW)`` case), each
  input cell belongs to one window and is *written* once per cell view; otherwise
  the positions of the first maxima in the flattened input go to ``np.bincount``,
  which adds overlapping windows' contributions (faster than ``argmax`` over a window
  copy, and than a per-cell ``+=``; same record);
- average: forward sums the window's columns, then its rows (separable, fewer
  passes than summing the cell views), and divides by the window's count;
  backward spreads ``dout / count`` over them (written when the windows tile the
  input, added otherwise).

The plain-loop twins are :func:`cnncore.reference.max_pool_forward_naive`,
:func:`~cnncore.reference.max_pool_backward_naive`,
:func:`~cnncore.reference.avg_pool_forward_naive` and
:func:`~cnncore.reference.avg_pool_backward_naive`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .activations import masked_gradient
from .checks import as_float_array, check_dout
from .geometry import Pool2dGeometry, pool2d_geometry

PoolCache = tuple[Pool2dGeometry, np.dtype, np.ndarray | None]
"""``(geometry, dtype, first)``: ``first`` (max mode) indexes each window's first maximum."""


def pool2d_forward(
    x: Any,
    *,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    mode: Any = "max",
    ceil_mode: Any = False,
    count_include_pad: Any = True,
) -> tuple[np.ndarray, PoolCache]:
    """Max or average pooling over each channel of a batch of images.

    Plain-loop twins: :func:`cnncore.reference.max_pool_forward_naive` and
    :func:`cnncore.reference.avg_pool_forward_naive`.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        float32 or float64 (kept); integer or bool (converted to float64).
    kernel_size : int or (int, int)
        Window size ``(KH, KW)``, each >= 1.
    stride : int or (int, int) or None
        Step between windows; ``None`` means ``kernel_size``.
    padding : int or (int, int)
        Symmetric padding ``(PH, PW)``, at most half the kernel. Max pooling pads
        with ``-inf`` (a padding cell is never a window's maximum, even against
        an input of ``-inf``), average pooling with zeros.
    mode : {"max", "avg"}
    ceil_mode : bool
        Use the ceiling instead of the floor for the output size (a last, partial
        window, which must start inside the input or the leading padding).
    count_include_pad : bool
        Average pooling only: divide by the number of window cells inside the
        padded input (True) or inside the real input (False).

    Returns
    -------
    out : ndarray, shape (N, C, H', W')
        ``H' = floor((H + 2*PH - KH) / SH) + 1`` (ceiling with ``ceil_mode``);
        same dtype as ``x`` after conversion.
    cache : tuple
        For :func:`pool2d_backward`.

    Raises
    ------
    cnncore.DtypeError
        If ``x`` is not a real numeric array.
    cnncore.ShapeError
        If ``x`` is not 4-D, has an empty dimension, or the output would be empty.
    cnncore.ParameterError
        If a hyper-parameter is malformed or out of range.
    """
    x = as_float_array(x, "x")
    g = pool2d_geometry(
        x.shape,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        mode=mode,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )
    if g.mode == "max":
        out = np.empty(g.output_shape, dtype=x.dtype)
        first = np.empty(g.output_shape, dtype=np.min_scalar_type(g.kh * g.kw - 1))
        for block in _blocks(x, g):
            out[block], first[block] = _max_forward(x[block], g)
        return out, (g, x.dtype, first)
    return _avg_forward(x, g), (g, x.dtype, None)


def pool2d_inference(x: Any, **params: Any) -> np.ndarray:
    """:func:`pool2d_forward`'s output alone, for a pass no backward follows.

    Same parameters, result (the same bits) and errors. Max pooling skips the first-
    maximum bookkeeping the backward pass needs, less than half the time on ResNet-18's
    stem pool (``docs/decisions/2026-12-02-pool-inference-and-channel-blocks.md``).
    """
    x = as_float_array(x, "x")
    g = pool2d_geometry(x.shape, **params)
    if g.mode == "max":
        out = np.empty(g.output_shape, dtype=x.dtype)
        for block in _blocks(x, g):
            out[block] = _max_values(x[block], g)
        return out
    return _avg_forward(x, g)


def pool2d_backward(dout: Any, cache: PoolCache) -> np.ndarray:
    """Gradient of :func:`pool2d_forward` with respect to ``x``.

    Max pooling sends each window's gradient to its first maximum in row-major
    window order; average pooling spreads it evenly over the window's counted
    cells. Overlapping windows (stride < kernel) add their contributions.

    Plain-loop twins: :func:`cnncore.reference.max_pool_backward_naive` and
    :func:`cnncore.reference.avg_pool_backward_naive`.

    Parameters
    ----------
    dout : array_like, shape (N, C, H', W')
        Upstream gradient, the shape of the forward output.
    cache : tuple
        From :func:`pool2d_forward`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
        Same dtype as the forward input.

    Raises
    ------
    cnncore.ShapeError
        If ``dout``'s shape differs from the forward output's.
    cnncore.DtypeError
        If ``dout`` is not a real numeric array.
    """
    g, dtype, first = cache
    dout = check_dout(dout, g.output_shape, dtype)
    if first is not None:
        return _max_backward(dout, g, first)
    return _avg_backward(dout, g)


# --------------------------------------------------------------------------- helpers


_BLOCK_BYTES = 1 << 20
"""Input bytes max pooling works through at once (:func:`_blocks`): a few channels of one
sample, so that its passes over them (the padded copy, the maxima over columns, then
over rows) find them in cache
(``docs/decisions/2026-12-02-pool-inference-and-channel-blocks.md``)."""


def _blocks(x: np.ndarray, g: Pool2dGeometry) -> list[tuple[slice, slice]]:
    """``(samples, channels)`` blocks of about :data:`_BLOCK_BYTES` of ``x`` each; the
    windows never cross planes, so each block pools on its own."""
    step = max(1, min(g.c, _BLOCK_BYTES // (g.h * g.w * x.itemsize)))
    return [
        (slice(n, n + 1), slice(c, min(c + step, g.c)))
        for n in range(g.n)
        for c in range(0, g.c, step)
    ]


def _offsets(g: Pool2dGeometry) -> list[tuple[int, int]]:
    """Window cells ``(a, b)`` in row-major order (the order that decides tied maxima)."""
    return [(a, b) for a in range(g.kh) for b in range(g.kw)]


def _tiles(g: Pool2dGeometry) -> bool:
    """Whether the windows tile the input exactly, each input cell in one window.

    Stride equal to the kernel, no padding, and sizes the kernel divides: then
    the input is ``x.reshape(N, C, H', KH, W', KW)`` and the cell views partition it.
    """
    return (
        (g.sh, g.sw) == (g.kh, g.kw)
        and g.ph == g.pw == 0
        and (g.out_h * g.kh, g.out_w * g.kw) == (g.h, g.w)
    )


def _cell(xp: np.ndarray, g: Pool2dGeometry, a: int, b: int) -> np.ndarray:
    """View of window cell ``(a, b)`` of every output pixel: shape ``(N, C, H', W')``."""
    return xp[:, :, _steps(a, g.sh, g.out_h), _steps(b, g.sw, g.out_w)]


def _steps(start: int, s: int, out: int) -> slice:
    """Index ``start`` of each of ``out`` windows ``s`` apart along one axis."""
    return slice(start, start + s * (out - 1) + 1, s)


def _padded_extent(g: Pool2dGeometry) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` padding so every window, ceil_mode's too, fits."""
    bottom = max(g.ph, (g.out_h - 1) * g.sh + g.kh - g.h - g.ph)
    right = max(g.pw, (g.out_w - 1) * g.sw + g.kw - g.w - g.pw)
    return g.ph, bottom, g.pw, right


def _pad(x: np.ndarray, g: Pool2dGeometry, fill: float) -> np.ndarray:
    top, bottom, left, right = _padded_extent(g)
    if not (top or bottom or left or right):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)


def _unpad(dxp: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    return dxp[:, :, g.ph : g.ph + g.h, g.pw : g.pw + g.w]


def _zeros_padded(g: Pool2dGeometry, dtype: np.dtype) -> np.ndarray:
    top, bottom, left, right = _padded_extent(g)
    return np.zeros((g.n, g.c, g.h + top + bottom, g.w + left + right), dtype=dtype)


def _counts(out: int, s: int, k: int, p: int, size: int, include_pad: bool) -> np.ndarray:
    """Counted cells of each window along one axis (windows clipped like PyTorch's)."""
    start = np.arange(out) * s - p
    stop = np.minimum(start + k, size + p)
    if include_pad:
        return stop - start
    return np.minimum(stop, size) - np.maximum(start, 0)


def _divisor(g: Pool2dGeometry, dtype: np.dtype) -> np.ndarray:
    """Average pooling's divisor per output pixel, shape ``(H', W')``."""
    rows = _counts(g.out_h, g.sh, g.kh, g.ph, g.h, g.count_include_pad)
    cols = _counts(g.out_w, g.sw, g.kw, g.pw, g.w, g.count_include_pad)
    return np.multiply.outer(rows, cols).astype(dtype)


# --------------------------------------------------------------------------- max


def _max_forward(x: np.ndarray, g: Pool2dGeometry) -> tuple[np.ndarray, np.ndarray]:
    # Separable, like the average: the maximum (and first maximum) over each
    # window row's columns for every input row, then over the window's rows. The
    # first maximum in row-major order is in the first row holding the maximum.
    xp = _pad(x, g, -np.inf)
    col_cells = [xp[..., _steps(b, g.sw, g.out_w)] for b in range(g.kw)]
    row_max = col_cells[0].copy()
    for cell in col_cells[1:]:
        np.maximum(row_max, cell, out=row_max)
    row_first = _first_max(col_cells, row_max)  # column of each row's first maximum
    row_cells = [row_max[:, :, _steps(a, g.sh, g.out_h)] for a in range(g.kh)]
    out = row_cells[0].copy()
    for cell in row_cells[1:]:
        np.maximum(out, cell, out=out)
    a = _first_max(row_cells, out)  # window row of the first maximum
    dtype = np.min_scalar_type(g.kh * g.kw - 1)
    cols = [row_first[:, :, _steps(i, g.sh, g.out_h)] for i in range(g.kh)]
    first = cols[0].astype(dtype)  # the first maximum's column in row a
    for i in range(1, g.kh):
        np.copyto(first, cols[i], where=a == i)
    first += a.astype(dtype) * dtype.type(g.kw)
    if g.ph or g.pw:
        _skip_leading_padding(first, out, g)
    return out, first


def _max_values(x: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    # The maxima of _max_forward, in the same order (so the same bits, NaN included).
    xp = _pad(x, g, -np.inf)
    row_max = xp[..., _steps(0, g.sw, g.out_w)].copy()
    for b in range(1, g.kw):
        np.maximum(row_max, xp[..., _steps(b, g.sw, g.out_w)], out=row_max)
    out = row_max[:, :, _steps(0, g.sh, g.out_h)].copy()
    for a in range(1, g.kh):
        np.maximum(out, row_max[:, :, _steps(a, g.sh, g.out_h)], out=out)
    return out


def _skip_leading_padding(first: np.ndarray, out: np.ndarray, g: Pool2dGeometry) -> None:
    """Move the first maximum of all -inf windows from a padding cell to an input cell.

    The ``-inf`` padding ties with an input of ``-inf``, but padding is not input:
    as in PyTorch, such a window's maximum is its first *input* cell, the top-left
    corner of the input rectangle the window covers (trailing padding comes after it
    in row-major order, so only the leading padding needs this).
    """
    all_inf = np.isneginf(out)
    if not all_inf.any():
        return
    top = np.maximum(g.ph - np.arange(g.out_h) * g.sh, 0)
    left = np.maximum(g.pw - np.arange(g.out_w) * g.sw, 0)
    corner = np.add.outer(top * g.kw, left).astype(first.dtype)
    np.copyto(first, np.broadcast_to(corner, first.shape), where=all_inf)


def _first_max(cells: list[np.ndarray], out: np.ndarray) -> np.ndarray:
    """Cell index of each window's first maximum, ``np.argmax`` of the flattened window.

    Counted down from the last cell: each cell at or after the first maximum
    takes one off. NaN counts as the maximum (``out`` is NaN there), as for
    ``np.argmax``. No copy of the windows is made.
    """
    first = np.full(out.shape, len(cells) - 1, dtype=np.min_scalar_type(len(cells) - 1))
    found = np.zeros(out.shape, dtype=bool)
    hit = np.empty(out.shape, dtype=bool)
    has_nan = bool(np.isnan(out).any())
    for cell in cells[:-1]:
        np.equal(cell, out, out=hit)
        if has_nan:
            hit |= np.isnan(cell)
        found |= hit
        first -= found
    return first


def _max_backward(dout: np.ndarray, g: Pool2dGeometry, first: np.ndarray) -> np.ndarray:
    if _tiles(g):
        dx = np.empty((g.n, g.c, g.h, g.w), dtype=dout.dtype)
        for i, (a, b) in enumerate(_offsets(g)):
            _cell(dx, g, a, b)[...] = masked_gradient(dout, first == i)
        return dx
    # Position of each window's first maximum in the flattened padded input; bincount
    # then adds every dout to its position, so overlapping windows accumulate.
    top, bottom, left, right = _padded_extent(g)
    hp, wp = g.h + top + bottom, g.w + left + right
    cell = np.array([a * wp + b for a, b in _offsets(g)])
    corner = (
        (np.arange(g.n * g.c) * (hp * wp))[:, None, None]
        + (np.arange(g.out_h) * (g.sh * wp))[:, None]
        + np.arange(g.out_w) * g.sw
    )
    where = corner.reshape(g.output_shape) + cell[first]
    dxp = np.bincount(where.ravel(), weights=dout.ravel(), minlength=g.n * g.c * hp * wp)
    return _unpad(dxp.reshape(g.n, g.c, hp, wp), g).astype(dout.dtype, copy=False)


# --------------------------------------------------------------------------- average


def _avg_forward(x: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    # The window sum is separable: over its columns for every input row, then over
    # its rows. KW + KH strided passes instead of KH * KW, each over fewer values.
    xp = _pad(x, g, 0.0)
    cols = xp[..., _steps(0, g.sw, g.out_w)].copy()
    for b in range(1, g.kw):
        cols += xp[..., _steps(b, g.sw, g.out_w)]
    out = cols[:, :, _steps(0, g.sh, g.out_h)].copy()
    for a in range(1, g.kh):
        out += cols[:, :, _steps(a, g.sh, g.out_h)]
    out /= _divisor(g, x.dtype)
    return out


def _avg_backward(dout: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    share = dout / _divisor(g, dout.dtype)
    if _tiles(g):
        dx = np.empty((g.n, g.c, g.h, g.w), dtype=dout.dtype)
        for a, b in _offsets(g):
            _cell(dx, g, a, b)[...] = share
        return dx
    dxp = _zeros_padded(g, dout.dtype)
    for a, b in _offsets(g):
        _cell(dxp, g, a, b)[...] += share
    return _unpad(dxp, g)
