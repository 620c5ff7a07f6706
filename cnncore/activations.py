"""Element-wise activations."""

from __future__ import annotations

from typing import Any

import numpy as np

from .checks import as_float_array, check_dout
from .geometry import elementwise_info


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
    return relu_into(x, np.empty_like(x)), x


_ZERO_BLOCK = 1 << 15
"""Elements of the zeros :func:`relu_into` compares with, a block at a time."""

_zeros: dict[np.dtype, np.ndarray] = {}


def relu_into(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.maximum(x, 0, out=out)`` (``out`` may be ``x``), the same bits, faster.

    numpy's ``maximum`` has a SIMD loop for two arrays but not for an array and a scalar
    (``docs/decisions/2026-12-02-relu-simd-loops.md``), so contiguous float arrays are
    compared with a block of zeros, a block at a time. NaN stays NaN, and -0.0 becomes
    +0.0, as with a scalar 0.
    """
    if x.dtype not in (np.float32, np.float64) or not (
        x.flags.c_contiguous and out.flags.c_contiguous and out.dtype == x.dtype
    ):
        return np.maximum(x, 0, out=out)
    zeros = _zeros.get(x.dtype)
    if zeros is None:
        zeros = np.zeros(_ZERO_BLOCK, dtype=x.dtype)
        zeros.flags.writeable = False
        _zeros[x.dtype] = zeros
    flat, into = x.reshape(-1), out.reshape(-1)
    for start in range(0, flat.size, zeros.size):
        stop = min(start + zeros.size, flat.size)
        np.maximum(flat[start:stop], zeros[: stop - start], out=into[start:stop])
    return out


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

    Computed on ``dout``'s bits as unsigned integers, times ``keep`` (0 or 1): the kept
    values exactly (NaN and infinities included) and all-zero bits, +0.0, elsewhere, in
    one pass with a SIMD loop, which ``np.where`` of a float array and a scalar lacks
    (``docs/decisions/2026-12-02-relu-simd-loops.md``).

    Parameters
    ----------
    dout : ndarray
        Float gradient.
    keep : ndarray of bool, broadcastable to ``dout``
    """
    uint = _BITS.get(dout.dtype)
    if uint is None:
        return np.where(keep, dout, dout.dtype.type(0))
    return np.multiply(dout.view(uint), keep, dtype=uint).view(dout.dtype)


_BITS = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}
"""The unsigned integers of a float's width, for :func:`masked_gradient`."""
