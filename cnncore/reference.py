"""Plain-loop layers that read like the tutorial: the oracle for the fast paths.

Each function keeps the tutorial's signature and dictionaries::

    out, cache = conv_forward_naive(x, w, b, conv_param)  # conv_param = {'stride', 'pad'}
    dx, dw, db = conv_backward_naive(dout, cache)
    out, cache = max_pool_forward_naive(x, pool_param)  # {'pool_height', 'pool_width', 'stride'}
    dx = max_pool_backward_naive(dout, cache)
    out, cache = avg_pool_forward_naive(x, pool_param)
    dx = avg_pool_backward_naive(dout, cache)

and loops as the tutorial does: the convolution's forward pass over filters and
output pixels (vectorised over the batch and the channels), its backward pass
over samples, filters and output pixels, and pooling over output pixels (vectorised
over the batch and the channels). Where the tutorial is loose, these follow the
contract:

- output sizes use floor division, through :mod:`cnncore.geometry`;
- overlapping pooling windows *accumulate* gradients (``+=``, never ``=``);
- with tied maxima, the whole gradient goes to the *first* maximum in row-major
  window order (the tutorial's ``square == max`` mask would give it to every tie).

Optional keys, so the fast paths can be tested over their whole parameter grid
(the tutorial's keys keep their meaning, and the defaults reproduce it):

- ``conv_param``: ``'dilation'`` (default 1), ``'groups'`` (default 1); ``'pad'``
  and ``'stride'`` accept anything :func:`cnncore.conv2d_forward` does
  (pairs, ``(top, bottom, left, right)``, ``'same'``...). ``b`` may be ``None``.
- ``pool_param``: ``'pad'`` (default 0), ``'ceil_mode'`` (default False),
  ``'count_include_pad'`` (default True, average pooling only), as in PyTorch.

dtypes follow the contract: the arithmetic runs in float32 when every array is
float32, else in float64 (integer and bool arrays count as float64); the backward
passes return the forward pass's dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .checks import as_float_array, common_dtype
from .geometry import Conv2dGeometry, Pool2dGeometry, conv2d_geometry, pool2d_geometry

# --------------------------------------------------------------------------- convolution


def _conv_geometry(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, conv_param: dict[str, Any]
) -> Conv2dGeometry:
    return conv2d_geometry(
        x.shape,
        w.shape,
        stride=conv_param["stride"],
        padding=conv_param["pad"],
        dilation=conv_param.get("dilation", 1),
        groups=conv_param.get("groups", 1),
        bias=b is not None,
    )


def _conv_dtype(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.dtype:
    return common_dtype(
        as_float_array(x, "x"),
        as_float_array(w, "w"),
        as_float_array(b, "b") if b is not None else None,
    )


def conv_forward_naive(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, conv_param: dict[str, Any]
) -> tuple[np.ndarray, tuple[Any, ...]]:
    """Convolution (cross-correlation) by loops over filters and output pixels.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    w : ndarray, shape (F, C // groups, HH, WW)
    b : ndarray, shape (F,), or None
    conv_param : dict
        ``'stride'`` and ``'pad'`` (zero padding on every side), optionally
        ``'dilation'`` and ``'groups'``.

    Returns
    -------
    out : ndarray, shape (N, F, H', W')
        ``H' = 1 + (H + 2 * pad - HH) // stride`` (with dilation, the kernel extent
        ``dilation * (HH - 1) + 1`` replaces ``HH``).
    cache : tuple
        ``(x, w, b, conv_param)``.

    Raises
    ------
    cnncore.CnnError
        If the shapes or parameters are invalid (checked by :mod:`cnncore.geometry`).
    """
    g = _conv_geometry(x, w, b, conv_param)
    dtype = _conv_dtype(x, w, b)
    xpad = np.pad(x.astype(dtype), ((0, 0), (0, 0), (g.pt, g.pb), (g.pl, g.pr)))
    f_per_group, c_per_group = g.f // g.groups, g.c // g.groups
    out = np.zeros((g.n, g.f, g.out_h, g.out_w), dtype=dtype)
    for f in range(g.f):
        group = f // f_per_group
        xs = xpad[:, group * c_per_group : (group + 1) * c_per_group]
        for j in range(g.out_h):
            for k in range(g.out_w):
                rows = slice(j * g.sh, j * g.sh + g.dh * (g.kh - 1) + 1, g.dh)
                cols = slice(k * g.sw, k * g.sw + g.dw * (g.kw - 1) + 1, g.dw)
                out[:, f, j, k] = np.sum(xs[:, :, rows, cols] * w[f], axis=(1, 2, 3))
                if b is not None:
                    out[:, f, j, k] += b[f]
    return out, (x, w, b, conv_param)


def conv_backward_naive(
    dout: np.ndarray, cache: tuple[Any, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`conv_forward_naive`, by loops over samples, filters and pixels.

    Each output pixel ``out[n, f, j, k]`` adds ``dout[n, f, j, k]`` times its
    window of ``x`` to ``dw[f]``, times ``w[f]`` to that window of ``dx``, and
    ``dout[n, f, j, k]`` itself to ``db[f]``.

    Parameters
    ----------
    dout : ndarray, shape (N, F, H', W')
    cache : tuple
        ``(x, w, b, conv_param)`` from :func:`conv_forward_naive`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dw : ndarray, shape (F, C // groups, HH, WW)
    db : ndarray, shape (F,), or None when ``b`` was None
    """
    x, w, b, conv_param = cache
    g = _conv_geometry(x, w, b, conv_param)
    dtype = _conv_dtype(x, w, b)
    dout = np.asarray(dout, dtype=dtype)
    xpad = np.pad(x.astype(dtype), ((0, 0), (0, 0), (g.pt, g.pb), (g.pl, g.pr)))
    dxpad = np.zeros_like(xpad)
    dw = np.zeros(w.shape, dtype=dtype)
    db = np.zeros(g.f, dtype=dtype)
    f_per_group, c_per_group = g.f // g.groups, g.c // g.groups
    for n in range(g.n):
        for f in range(g.f):
            group = f // f_per_group
            channels = slice(group * c_per_group, (group + 1) * c_per_group)
            for j in range(g.out_h):
                for k in range(g.out_w):
                    rows = slice(j * g.sh, j * g.sh + g.dh * (g.kh - 1) + 1, g.dh)
                    cols = slice(k * g.sw, k * g.sw + g.dw * (g.kw - 1) + 1, g.dw)
                    db[f] += dout[n, f, j, k]
                    dw[f] += xpad[n, channels, rows, cols] * dout[n, f, j, k]
                    dxpad[n, channels, rows, cols] += w[f] * dout[n, f, j, k]
    dx = dxpad[:, :, g.pt : g.pt + g.h, g.pl : g.pl + g.w]
    return dx, dw, (db if b is not None else None)


# --------------------------------------------------------------------------- pooling


def _pool_geometry(
    x_shape: tuple[int, ...], pool_param: dict[str, Any], mode: str
) -> Pool2dGeometry:
    return pool2d_geometry(
        x_shape,
        kernel_size=(pool_param["pool_height"], pool_param["pool_width"]),
        stride=pool_param["stride"],
        padding=pool_param.get("pad", 0),
        mode=mode,
        ceil_mode=pool_param.get("ceil_mode", False),
        count_include_pad=pool_param.get("count_include_pad", True),
    )


def _window(
    j: int, s: int, k: int, p: int, size: int, count_include_pad: bool
) -> tuple[slice, int]:
    """Input slice of window ``j`` along one axis, and how many of its cells count.

    The window starts at ``j*s - p`` in input coordinates. It is clipped to the
    padded input (``ceil_mode`` windows may run past it), which gives the cells
    counted with ``count_include_pad``, then to the real input.
    """
    start = j * s - p
    stop = min(start + k, size + p)
    lo, hi = max(start, 0), min(stop, size)
    return slice(lo, hi), (stop - start if count_include_pad else hi - lo)


def _pool_windows(g: Pool2dGeometry) -> Iterator[tuple[int, int, slice, slice, int]]:
    """Every output position ``(j, k)`` with its input window and the window's cell count."""
    for j in range(g.out_h):
        rows, count_h = _window(j, g.sh, g.kh, g.ph, g.h, g.count_include_pad)
        for k in range(g.out_w):
            cols, count_w = _window(k, g.sw, g.kw, g.pw, g.w, g.count_include_pad)
            yield j, k, rows, cols, count_h * count_w


def _pool_dtype(x: np.ndarray) -> np.dtype:
    return as_float_array(x, "x").dtype


def max_pool_forward_naive(
    x: np.ndarray, pool_param: dict[str, Any]
) -> tuple[np.ndarray, tuple[np.ndarray, dict[str, Any]]]:
    """Max pooling by a loop over output pixels.

    Padding (optional key ``'pad'``) acts as ``-inf``: a window's maximum is taken
    over its cells inside the input.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    pool_param : dict
        ``'pool_height'``, ``'pool_width'``, ``'stride'``; optionally ``'pad'`` and
        ``'ceil_mode'``.

    Returns
    -------
    out : ndarray, shape (N, C, H', W')
        ``H' = 1 + (H - pool_height) // stride`` (without padding or ceil_mode).
    cache : tuple
        ``(x, pool_param)``.

    Raises
    ------
    cnncore.CnnError
        If the shape or parameters are invalid (checked by :mod:`cnncore.geometry`).
    """
    g = _pool_geometry(x.shape, pool_param, "max")
    out = np.zeros(g.output_shape, dtype=_pool_dtype(x))
    for j, k, rows, cols, _ in _pool_windows(g):
        out[:, :, j, k] = np.max(x[:, :, rows, cols], axis=(2, 3))
    return out, (x, pool_param)


def max_pool_backward_naive(
    dout: np.ndarray, cache: tuple[np.ndarray, dict[str, Any]]
) -> np.ndarray:
    """Gradient of :func:`max_pool_forward_naive`.

    Each window sends its whole ``dout`` to its *first* maximum in row-major
    order; windows that overlap add their contributions.

    Parameters
    ----------
    dout : ndarray, shape (N, C, H', W')
    cache : tuple
        ``(x, pool_param)`` from :func:`max_pool_forward_naive`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    """
    x, pool_param = cache
    g = _pool_geometry(x.shape, pool_param, "max")
    dx = np.zeros(x.shape, dtype=_pool_dtype(x))
    for j, k, rows, cols, _ in _pool_windows(g):
        square = x[:, :, rows, cols]
        flat = square.reshape(g.n, g.c, -1)
        first = np.argmax(flat, axis=2)  # np.argmax returns the first of tied maxima
        mask = np.zeros(flat.shape, dtype=dx.dtype)
        np.put_along_axis(mask, first[:, :, None], 1.0, axis=2)
        dx[:, :, rows, cols] += mask.reshape(square.shape) * dout[:, :, j, k][:, :, None, None]
    return dx


def avg_pool_forward_naive(
    x: np.ndarray, pool_param: dict[str, Any]
) -> tuple[np.ndarray, tuple[np.ndarray, dict[str, Any]]]:
    """Average pooling by a loop over output pixels.

    Each output is the sum of its window's input cells divided by the window's
    cell count: with ``'count_include_pad'`` (default) the cells inside the padded
    input, otherwise only the real input cells (as in PyTorch).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    pool_param : dict
        ``'pool_height'``, ``'pool_width'``, ``'stride'``; optionally ``'pad'``,
        ``'ceil_mode'`` and ``'count_include_pad'``.

    Returns
    -------
    out : ndarray, shape (N, C, H', W')
    cache : tuple
        ``(x, pool_param)``.

    Raises
    ------
    cnncore.CnnError
        If the shape or parameters are invalid (checked by :mod:`cnncore.geometry`).
    """
    g = _pool_geometry(x.shape, pool_param, "avg")
    out = np.zeros(g.output_shape, dtype=_pool_dtype(x))
    for j, k, rows, cols, count in _pool_windows(g):
        out[:, :, j, k] = np.sum(x[:, :, rows, cols], axis=(2, 3)) / count
    return out, (x, pool_param)


def avg_pool_backward_naive(
    dout: np.ndarray, cache: tuple[np.ndarray, dict[str, Any]]
) -> np.ndarray:
    """Gradient of :func:`avg_pool_forward_naive`.

    Each window spreads ``dout / count`` over its input cells; windows that
    overlap add their contributions.

    Parameters
    ----------
    dout : ndarray, shape (N, C, H', W')
    cache : tuple
        ``(x, pool_param)`` from :func:`avg_pool_forward_naive`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    """
    x, pool_param = cache
    g = _pool_geometry(x.shape, pool_param, "avg")
    dx = np.zeros(x.shape, dtype=_pool_dtype(x))
    for j, k, rows, cols, count in _pool_windows(g):
        dx[:, :, rows, cols] += (dout[:, :, j, k] / count)[:, :, None, None]
    return dx
