"""2-D max and average pooling, vectorised, with the semantics of PyTorch's pooling.

The tutorial's pooling layer keeps the depth and shrinks the plane to
``W2 = (W1 - F) / S + 1``; here with floor division, optional symmetric padding
(at most half the kernel) and ``ceil_mode``, all resolved by
:func:`cnncore.geometry.pool2d_geometry`.

Vectorisation: each op is a loop over the ``KH * KW`` cells of the window, never over
pixels. Where windows may run past the input (padding, ``ceil_mode``) the input is
padded first (``-inf`` for max, zeros for average).

- max forward: the padded input is split into its stride phases (:class:`_Phases`), in
  which window cell ``(a, b)`` of every output pixel, computed in rows a few junk pixels
  wide, is one contiguous slice; a running ``np.maximum`` over the cells in row-major
  order, and each window's first maximum (its cell index, as ``np.argmax`` of the
  flattened window) counted down by comparing the cells with the maximum. No copy of the
  windows, and each step one long unit-stride ufunc call, a block of channels or of
  samples at a time so that the buffers stay in cache
  (``docs/decisions/2026-12-05-pool-phases.md``).
- max backward: each window's gradient goes to its first maximum's place in the
  phases, where ``np.bincount`` adds up overlapping windows; the phases are then
  written back, a block at a time (same record);
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

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

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
        out, first = _max_pool(x, g, first=True)
        return out, (g, x.dtype, first)
    return _avg_forward(x, g), (g, x.dtype, None)


def pool2d_inference(x: Any, **params: Any) -> np.ndarray:
    """:func:`pool2d_forward`'s output alone, for a pass no backward follows.

    Same parameters, result (the same bits) and errors. Max pooling skips the first-
    maximum bookkeeping the backward pass needs, about half the time on ResNet-18's
    stem pool (``docs/decisions/2026-12-05-pool-phases.md``).
    """
    x = as_float_array(x, "x")
    g = pool2d_geometry(x.shape, **params)
    if g.mode == "max":
        return _max_pool(x, g, first=False)[0]
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
sample or a few samples, so that its passes over them (the phases, the maxima, the
count of first maxima; the sums of the backward pass) find them in cache
(``docs/decisions/2026-12-02-pool-inference-and-channel-blocks.md``)."""


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


_Span = tuple[slice, slice]
"""Rows and columns."""


@dataclass(frozen=True)
class _Phases:
    """Max pooling's layout: the ``-inf``-padded input split into its stride phases.

    Phase ``(r, s)`` holds padded rows ``r, r + sh, ...`` and columns ``s, s + sw, ...`` of
    each plane, ``hq x wq`` values, the planes one after another in one flat buffer (with
    ``slack`` values after the last). Window cell ``(a, b)`` of output pixel ``(y, x)`` is
    then value ``(y + a // sh, x + b // sw)`` of phase ``(a % sh, b % sw)``: computing every
    output row ``wq`` wide, the cell of every window of every plane is *one contiguous
    slice* of its phase, shifted by ``(a // sh) * wq + b // sw``. So each step over a cell
    is one long unit-stride ufunc call (SIMD, no strided gather); the junk pixels
    (``y >= out_h`` or ``x >= out_w``) read neighbouring rows, are cropped, and get no
    gradient. A valid pixel never reads past its own plane.
    """

    g: Pool2dGeometry
    hq: int
    wq: int
    phases: tuple[tuple[int, int], ...]
    """``(r, s)`` of each phase some cell reads, in buffer order."""
    cells: tuple[tuple[int, int], ...]
    """``(phase index, shift)`` of each window cell, in row-major order."""
    slack: int
    spans: tuple[tuple[int, _Span, _Span], ...]
    """Per phase holding input values: ``(phase index, its rows and columns, the input's
    rows and columns)``."""

    @classmethod
    @functools.lru_cache(maxsize=256)
    def of(cls, g: Pool2dGeometry) -> _Phases:
        top, bottom, left, right = _padded_extent(g)
        hq = -(-(g.h + top + bottom) // g.sh)
        wq = -(-(g.w + left + right) // g.sw)
        phases = tuple((r, s) for r in range(min(g.sh, g.kh)) for s in range(min(g.sw, g.kw)))
        cells = tuple(
            (phases.index((a % g.sh, b % g.sw)), (a // g.sh) * wq + b // g.sw)
            for a, b in _offsets(g)
        )
        spans = []
        for p, (r, s) in enumerate(phases):
            rows = _phase_span(r - top, g.sh, g.h, hq)
            cols = _phase_span(s - left, g.sw, g.w, wq)
            if rows is not None and cols is not None:
                spans.append((p, (rows[0], cols[0]), (rows[1], cols[1])))
        return cls(g, hq, wq, phases, cells, max(shift for _, shift in cells), tuple(spans))

    def length(self, planes: int) -> int:
        """Wide output pixels of ``planes`` planes."""
        return planes * self.hq * self.wq

    def buffer(self, planes: int, dtype: np.dtype, fill: float) -> np.ndarray:
        """Phase buffers for ``planes`` planes, ``(phases, planes * hq * wq + slack)``."""
        return np.full((len(self.phases), self.length(planes) + self.slack), fill, dtype)

    def planes(self, buf: np.ndarray, p: int, planes: int) -> np.ndarray:
        """Phase ``p`` of ``buf`` as ``(planes, hq, wq)``."""
        return buf[p, : self.length(planes)].reshape(planes, self.hq, self.wq)

    def crop(self, wide: np.ndarray) -> np.ndarray:
        """The valid pixels of wide output rows: ``(planes, out_h, out_w)``, a view."""
        return wide.reshape(-1, self.hq, self.wq)[:, : self.g.out_h, : self.g.out_w]


def max_pool_bytes(g: Pool2dGeometry, itemsize: int) -> tuple[int, int]:
    """Bytes max pooling allocates besides its input, output and gradients: ``(forward,
    backward)``, the buffers of :func:`_max_pool` (with the first maxima, and their
    NaN-path temporaries) and :func:`_max_backward` for its largest block (the graph
    engine's budget; measured against tracemalloc in the tests)."""
    lay = _Phases.of(g)
    planes = max(_plane_count(b) for b in _blocks(g, itemsize))
    wide = lay.length(planes)
    buffers = len(lay.phases) * (wide + lay.slack)
    index = np.min_scalar_type(g.kh * g.kw - 1).itemsize
    pixels = planes * g.out_h * g.out_w
    out = g.n * g.c * g.out_h * g.out_w
    # phases, the wide maxima, their count, two masks and the NaN path's two; the index,
    # and the mask of all -inf windows (padding only)
    forward = buffers * itemsize + wide * (itemsize + index + 4) + out * (index + 1)
    # the bincount sums, the pixels' positions (arange, cropped), where, float64 weights
    backward = buffers * 8 + wide * 8 + pixels * 3 * 8
    return forward, backward


def _phase_span(first: int, s: int, size: int, length: int) -> _Span | None:
    """Positions ``i`` of a phase whose input index ``first + i * s`` is in ``[0, size)``:
    ``(slice of the phase, slice of the input)``, or None when there are none."""
    i0 = max(0, -(first // s))  # smallest i with first + i * s >= 0
    stop = min(length, -(-(size - first) // s))  # first + i * s < size
    if stop <= i0:
        return None
    return slice(i0, stop), slice(first + i0 * s, first + (stop - 1) * s + 1, s)


def _blocks(g: Pool2dGeometry, itemsize: int) -> list[tuple[slice, slice]]:
    """``(samples, channels)`` blocks of about :data:`_BLOCK_BYTES` of ``x`` each: a few
    channels of one sample, or a few whole samples (each block is contiguous in ``x``);
    the windows never cross planes, so each block pools on its own."""
    planes = max(1, _BLOCK_BYTES // (g.h * g.w * itemsize))
    if planes >= g.c:
        step = planes // g.c
        return [(slice(n, min(n + step, g.n)), slice(0, g.c)) for n in range(0, g.n, step)]
    return [
        (slice(n, n + 1), slice(c, min(c + planes, g.c)))
        for n in range(g.n)
        for c in range(0, g.c, planes)
    ]


def _plane_count(block: tuple[slice, slice]) -> int:
    samples, channels = block
    return (samples.stop - samples.start) * (channels.stop - channels.start)


def _max_pool(
    x: np.ndarray, g: Pool2dGeometry, *, first: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The maxima, and with ``first`` each window's first maximum: its cell index in
    row-major order (``np.argmax`` of the flattened window), counted down: each cell
    before the first one equal to the maximum (or NaN, when the maximum is) adds one.

    The maximum is taken in row-major cell order, so ties keep the first value and a NaN
    the first NaN: the same bits with and without ``first``. A block of :func:`_blocks` at
    a time, in buffers made once per call (the padding stays ``-inf`` between blocks).
    """
    lay = _Phases.of(g)
    blocks = _blocks(g, x.itemsize)
    most_planes = max(_plane_count(b) for b in blocks)
    most = lay.length(most_planes)
    buf = lay.buffer(most_planes, x.dtype, -np.inf)
    wide = np.empty(most, dtype=x.dtype)
    out = np.empty(g.output_shape, dtype=x.dtype)
    kind = np.min_scalar_type(g.kh * g.kw - 1)
    index = np.empty(g.output_shape, kind) if first else None
    # The count of first maxima; whether no cell so far held the maximum; this cell not.
    tally = (np.empty(most, kind), np.empty(most, bool), np.empty(most, bool)) if first else None
    for block in blocks:
        planes = _plane_count(block)
        n = lay.length(planes)
        xb = x[block].reshape(planes, g.h, g.w)
        for p, (prow, pcol), (xrow, xcol) in lay.spans:
            lay.planes(buf, p, planes)[:, prow, pcol] = xb[:, xrow, xcol]
        cells = [buf[p, shift : shift + n] for p, shift in lay.cells]
        np.copyto(wide[:n], cells[0])
        for cell in cells[1:]:
            np.maximum(wide[:n], cell, out=wide[:n])
        out[block] = lay.crop(wide[:n]).reshape(out[block].shape)
        if index is None or tally is None:
            continue
        count, before, missed = tally
        has_nan = bool(np.isnan(wide[:n]).any())
        count[:n] = 0
        before[:n] = True
        for cell in cells[:-1]:
            np.not_equal(cell, wide[:n], out=missed[:n])
            if has_nan:
                missed[:n] &= ~np.isnan(cell)
            before[:n] &= missed[:n]
            count[:n] += before[:n].view(np.uint8)
        index[block] = lay.crop(count[:n]).reshape(index[block].shape)
    if index is not None and (g.ph or g.pw):
        _skip_leading_padding(index, out, g)
    return out, index


def _max_backward(dout: np.ndarray, g: Pool2dGeometry, first: np.ndarray) -> np.ndarray:
    """dX: each window's ``dout`` goes to the phase cell of its first maximum, where
    ``np.bincount`` adds up the windows that share it (in float64, in window order); the
    phases are then written back in place. A block of :func:`_blocks` at a time, so that
    the sums stay in cache: faster than a masked add per window cell, and than one
    ``bincount`` over the whole padded input (``docs/decisions/2026-12-05-pool-phases.md``).
    """
    lay = _Phases.of(g)
    blocks = _blocks(g, dout.itemsize)
    most = max(_plane_count(b) for b in blocks)
    # Where each cell of each valid pixel's window is in the flat phase buffers.
    span = lay.length(most) + lay.slack
    cell_at = np.array([p * span + shift for p, shift in lay.cells], dtype=np.intp)
    pixel_at = lay.crop(np.arange(lay.length(most), dtype=np.intp)).reshape(most, -1)
    covered = g.kh >= g.sh and g.kw >= g.sw  # every input value is in some phase
    dx = (np.empty if covered else np.zeros)((g.n, g.c, g.h, g.w), dtype=dout.dtype)
    for block in blocks:
        planes = _plane_count(block)
        where = cell_at.take(first[block].reshape(planes, -1))
        where += pixel_at[:planes]
        sums = np.bincount(
            where.ravel(), weights=dout[block].ravel(), minlength=len(lay.phases) * span
        )
        sums = sums.reshape(len(lay.phases), span)
        dxb = dx[block].reshape(planes, g.h, g.w)
        for p, (prow, pcol), (xrow, xcol) in lay.spans:
            dxb[:, xrow, xcol] = lay.planes(sums, p, planes)[:, prow, pcol]
        del where, sums  # before the next block's are made
    return dx


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
