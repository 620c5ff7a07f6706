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
    return np.where(x > 0, dout, x.dtype.type(0))
