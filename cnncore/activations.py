"""Element-wise activations."""

from __future__ import annotations

from typing import Any

import numpy as np

from .geometry import elementwise_info
from .validation import as_float_array, check_dout


def relu_forward(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rectified linear unit, ``max(x, 0)``.

    Parameters
    ----------
    x : array_like, any shape with at least one dimension, none empty
        float32 or float64 (kept); integer or bool (converted to float64).

    Returns
    -------
    out : ndarray, shape of ``x``
    cache : ndarray, shape of ``x``
        The input, for :func:`relu_backward`.

    Raises
    ------
    cnncore.DtypeError
        If ``x`` is not real numeric.
    cnncore.ShapeError
        If ``x`` is 0-D or has an empty dimension.
    """
    x = as_float_array(x, "x")
    elementwise_info(x.shape)
    return np.maximum(x, 0), x


def relu_backward(dout: Any, cache: np.ndarray) -> np.ndarray:
    """Gradient of :func:`relu_forward`: ``dout`` where ``x > 0``, else 0 (also at 0).

    Parameters
    ----------
    dout : array_like, shape of ``x``
    cache : ndarray
        From :func:`relu_forward`.

    Returns
    -------
    dx : ndarray, shape of ``x``

    Raises
    ------
    cnncore.ShapeError
        If ``dout``'s shape differs from ``x``'s.
    cnncore.DtypeError
        If ``dout`` is not real numeric.
    """
    x = cache
    dout = check_dout(dout, x.shape, x.dtype)
    return masked_gradient(dout, x > 0)


def masked_gradient(dout: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``np.where(keep, dout, 0)``: ``dout`` where ``keep`` is true, else +0.0.

    Computed as ``dout * keep`` (``np.where`` of a float array and a scalar has no SIMD
    loop: 32 ms against 8.5 for 6.4M float32 values here), then ``+ 0`` so that the
    dropped negative values give +0.0, not -0.0. When the product has a NaN (``dout``
    has one, or a dropped value is infinite: ``inf * 0`` is NaN) it falls back to
    ``np.where``.

    Parameters
    ----------
    dout : ndarray
        Float gradient.
    keep : ndarray of bool, broadcastable to ``dout``
    """
    with np.errstate(invalid="ignore"):  # inf * 0: handled just below
        dx = np.multiply(dout, keep)
    if np.isnan(dx).any():  # a NaN of dout, or a dropped inf: the exact, slower way
        return np.where(keep, dout, dout.dtype.type(0))
    dx += dout.dtype.type(0)
    return dx
