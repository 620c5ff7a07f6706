"""Small helpers shared by the tests: comparisons with bounds from an error analysis.

A float sum of ``K`` products, computed in any order (any BLAS kernel, thread count or
SIMD width), is within ``K · eps · sum|products|`` of the exact sum (Higham, *Accuracy
and Stability of Numerical Algorithms*, 2nd ed., §3.1). Two such computations of the same
quantity therefore differ by at most ``2 · K · eps · M`` element-wise, where ``M`` is
the sum of the products' magnitudes: for a bilinear op (conv, linear, their gradients,
average pooling) that is the op applied to the absolute values of its arguments. The
``*_magnitudes`` helpers below compute ``(K, M)`` for each result that way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from cnncore import (
    conv2d_backward,
    conv2d_forward,
    linear_backward,
    linear_forward,
    pool2d_backward,
    pool2d_forward,
)
from tests import tolerance_log

#: Without a magnitude, the two results are the same computation in possibly different
#: summation orders (the service against the library, or BLAS thread counts), each
#: within ``K · eps · M``. The service tests' tensors are small enough that ``K · M`` stays
#: under 2000 (at most ~100 products per element, their magnitudes summing to at most
#: ~20), so the difference is at most ``2 · 2000 · eps`` absolute; the same allowance
#: relative covers larger values. The wide cnncore comparisons pass their own (K, M).
UNITS = 4000
TOL = {
    np.dtype(dt): {"rtol": UNITS * float(np.finfo(dt).eps), "atol": UNITS * float(np.finfo(dt).eps)}
    for dt in (np.float64, np.float32)
}


def assert_close(
    actual: np.ndarray,
    expected: np.ndarray,
    dtype: np.dtype | type | None = None,
    *,
    bound: tuple[int, np.ndarray | float] | None = None,
) -> None:
    """Assert that two computations of the same values agree up to rounding.

    Parameters
    ----------
    actual, expected : ndarray, same shape
        The two results.
    dtype
        The precision the results were computed in (default: ``actual``'s dtype).
    bound
        ``(K, M)``: each element is a sum of at most ``K`` products whose magnitudes sum
        to ``M`` (array broadcastable to the shape). The elements must then agree within
        ``2 · (K + 1) · eps · M`` (the ``+ 1`` for rounding inputs to ``dtype``). Without
        it, :data:`TOL`'s allowance for small sums.

    Raises
    ------
    AssertionError
        If some element is farther apart than the bound.
    """
    dt = np.dtype(dtype if dtype is not None else actual.dtype)
    eps = float(np.finfo(dt).eps)
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shapes differ: {a.shape} and {e.shape}"
    diff = np.abs(a - e)
    if bound is None:
        limit = TOL[dt]["atol"] + TOL[dt]["rtol"] * np.abs(e)
        check = f"close-small-sum-{dt.name}"
    else:
        terms, magnitude = bound
        limit = np.broadcast_to(2.0 * (terms + 1) * eps * np.asarray(magnitude), diff.shape)
        check = f"close-K-eps-M-{dt.name}"
    over = diff - limit
    worst = np.unravel_index(np.argmax(over), over.shape) if over.size else ()
    if over.size:
        tolerance_log.record(check, float(diff[worst]), float(limit[worst]))
    assert not over.size or over[worst] <= 0, (
        f"|actual - expected| = {diff[worst]:.3g} exceeds the bound {limit[worst]:.3g} at "
        f"index {[int(i) for i in worst]} (actual {a[worst]!r}, expected {e[worst]!r})"
    )


def conv_magnitudes(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    dout: np.ndarray,
    kwargs: Mapping[str, Any],
) -> dict[str, tuple[int, np.ndarray]]:
    """``(K, M)`` for conv's ``out``, ``dx``, ``dw``, ``db``, by the conv on ``|x|, |w|, |b|``.

    ``out`` sums ``C/groups · kh · kw`` products and the bias; ``dx`` at most
    ``F/groups · kh · kw``; ``dw`` and ``db`` ``N · out_h · out_w``.
    """
    ax, aw = np.abs(x).astype(np.float64), np.abs(w).astype(np.float64)
    ab = None if b is None else np.abs(b).astype(np.float64)
    m_out, cache = conv2d_forward(ax, aw, ab, **kwargs)
    m_dx, m_dw, m_db = conv2d_backward(np.abs(dout).astype(np.float64), cache)
    f, cg, kh, kw = w.shape
    groups = int(kwargs.get("groups", 1))
    per_image = math.prod(m_out.shape[2:]) * x.shape[0]
    result = {
        "out": (cg * kh * kw + 1, m_out),
        "dx": (f // groups * kh * kw, m_dx),
        "dw": (per_image, m_dw),
    }
    if m_db is not None:
        result["db"] = (per_image, m_db)
    return result


def linear_magnitudes(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, dout: np.ndarray
) -> dict[str, tuple[int, np.ndarray]]:
    """``(K, M)`` for linear's ``out`` (``D + 1`` terms), ``dx`` (``M``), ``dw``/``db`` (``N``)."""
    ax, aw = np.abs(x).astype(np.float64), np.abs(w).astype(np.float64)
    ab = None if b is None else np.abs(b).astype(np.float64)
    m_out, cache = linear_forward(ax, aw, ab)
    m_dx, m_dw, m_db = linear_backward(np.abs(dout).astype(np.float64), cache)
    d, m = w.shape
    result = {"out": (d + 1, m_out), "dx": (m, m_dx), "dw": (x.shape[0], m_dw)}
    if m_db is not None:
        result["db"] = (x.shape[0], m_db)
    return result


def pool_magnitudes(
    x: np.ndarray, dout: np.ndarray, kwargs: Mapping[str, Any]
) -> dict[str, tuple[int, np.ndarray]]:
    """``(K, M)`` for pooling's ``out`` and ``dx``.

    Max pooling selects: its ``out`` is exact (``K = 0``, ``M = 0``), and ``dx`` sums the
    ``dout`` of the windows that picked an element, at most ``ceil(kh/sh)·ceil(kw/sw)``
    of them; average pooling sums ``kh·kw`` inputs and divides once (``K = kh·kw + 1``).
    ``M`` is pooling's backward of ``|dout|`` (the same selection and divisors), and for
    the average ``out`` the average of ``|x|``.
    """
    kh, kw = np.broadcast_to(kwargs["kernel_size"], 2)
    stride = kwargs.get("stride")
    sh, sw = np.broadcast_to(stride if stride is not None else (kh, kw), 2)
    overlaps = math.ceil(kh / sh) * math.ceil(kw / sw)
    x64 = x.astype(np.float64)
    if kwargs.get("mode", "max") == "max":
        _, cache = pool2d_forward(x64, **kwargs)
        m_out: np.ndarray | float = 0.0
        k_out = 0
    else:
        m_out, cache = pool2d_forward(np.abs(x64), **kwargs)
        k_out = int(kh * kw + 1)
    m_dx = pool2d_backward(np.abs(dout).astype(np.float64), cache)
    return {"out": (k_out, np.asarray(m_out)), "dx": (overlaps, m_dx)}
