"""Central-difference gradients: the one numerical check every gradient test uses."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_gradient(
    f: Callable[[], np.ndarray | float], x: np.ndarray, dout: np.ndarray | float = 1.0, h: float = 1e-6
) -> np.ndarray:
    """Gradient of ``sum(f() * dout)`` with respect to ``x``, by central differences.

    ``f`` is called with no arguments and must read ``x`` (which is perturbed in
    place, one element at a time, and restored). Use float64 for meaningful results.

    Parameters
    ----------
    f
        Function of the current contents of ``x``; returns an array or a scalar.
    x
        Array of any shape, modified in place during the call and restored after.
    dout
        Upstream gradient, broadcastable to ``f()``'s shape.
    h
        Step size.

    Returns
    -------
    numpy.ndarray
        Same shape as ``x``.
    """
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = np.sum(np.asarray(f()) * dout)
        x[i] = old - h
        minus = np.sum(np.asarray(f()) * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max(1e-8, |a| + |b|)``, the customary check of a gradient."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b)), initial=0.0))
