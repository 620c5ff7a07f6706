"""Fully connected layer: ``out = x.reshape(N, D) @ w + b``.

The tutorial's third layer type. ``x`` of shape ``(N, D1, ..., Dk)`` (for example
a conv or pooling output) is used as ``(N, D)`` with ``D = D1*...*Dk``; shapes are
checked by :func:`cnncore.geometry.linear_info`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .checks import as_float_array, check_bias, check_dout, common_dtype
from .geometry import linear_info

LinearCache = tuple[np.ndarray, np.ndarray, bool, tuple[int, ...]]
"""``(x as (N, D), w, has_bias, x's original shape)``."""


def linear_forward(x: Any, w: Any, b: Any = None) -> tuple[np.ndarray, LinearCache]:
    """Affine map of each sample's flattened features.

    Parameters
    ----------
    x : array_like, shape (N, D1, ..., Dk)
        At least 2-D; used as ``(N, D)`` with ``D = D1*...*Dk``.
    w : array_like, shape (D, M)
    b : array_like, shape (M,), or None

    Returns
    -------
    out : ndarray, shape (N, M)
        float64 if any input is float64 (integer and bool inputs become float64),
        else float32.
    cache : tuple
        For :func:`linear_backward`.

    Raises
    ------
    cnncore.DtypeError
        If an array is not real numeric.
    cnncore.ShapeError
        If ``x`` is not at least 2-D, ``w`` is not 2-D, ``D`` differs from ``w``'s
        rows, ``b`` is not ``(M,)``, or a dimension is empty.
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w")
    linear_info(x.shape, w.shape, bias=b is not None)
    b_arr = None if b is None else as_float_array(b, "b")
    dtype = common_dtype(x, w, b_arr)
    x2 = x.reshape(x.shape[0], -1).astype(dtype, copy=False)
    w = w.astype(dtype, copy=False)
    bias = check_bias(b_arr, w.shape[1], dtype)
    out = np.matmul(x2, w)  # every product through np.matmul: benchmarks/gemm_floor.py
    if bias is not None:
        out += bias
    return out, (x2, w, bias is not None, x.shape)


def linear_backward(
    dout: Any, cache: LinearCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`linear_forward`.

    Parameters
    ----------
    dout : array_like, shape (N, M)
    cache : tuple
        From :func:`linear_forward`.

    Returns
    -------
    dx : ndarray, shape (N, D1, ..., Dk)
        ``dout @ w.T``, in ``x``'s original shape.
    dw : ndarray, shape (D, M)
        ``x.T @ dout``.
    db : ndarray, shape (M,), or None when the forward had no bias
        ``dout`` summed over the batch.

    Raises
    ------
    cnncore.ShapeError
        If ``dout``'s shape is not ``(N, M)``.
    cnncore.DtypeError
        If ``dout`` is not real numeric.
    """
    x2, w, has_bias, x_shape = cache
    dout = check_dout(dout, (x2.shape[0], w.shape[1]), w.dtype)
    dx = np.matmul(dout, w.T).reshape(x_shape)
    dw = np.matmul(x2.T, dout)
    db = dout.sum(axis=0) if has_bias else None
    return dx, dw, db
