"""Numerical checks: central-difference gradients and relative errors.

:func:`numerical_gradient` is the one finite-difference check every gradient test
uses; :func:`relative_error` is the customary measure of agreement, and
:func:`compare` applies it to a claimed answer (``POST /v1/check``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def numerical_gradient(
    f: Callable[[], np.ndarray | float],
    x: np.ndarray,
    dout: np.ndarray | float = 1.0,
    h: float = 1e-6,
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
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = np.sum(np.asarray(f()) * dout)
        x[i] = old - h
        minus = np.sum(np.asarray(f()) * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def relative_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise ``|a - b| / max(1e-8, |a| + |b|)`` in float64 (``a``, ``b`` broadcast)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max(1e-8, |a| + |b|)``, the customary check of a gradient."""
    return float(np.max(relative_errors(a, b), initial=0.0))


#: Default tolerance on :func:`relative_error` when checking an answer, by dtype.
DEFAULT_TOLERANCE: dict[np.dtype, float] = {
    np.dtype(np.float32): 1e-3,
    np.dtype(np.float64): 1e-7,
}


def default_tolerance(*dtypes: np.dtype) -> float:
    """The loosest :data:`DEFAULT_TOLERANCE` among ``dtypes`` (float32's if any is float32)."""
    return max((DEFAULT_TOLERANCE.get(np.dtype(d), 1e-7) for d in dtypes), default=1e-7)


@dataclass(frozen=True)
class Comparison:
    """The verdict on one claimed array against the expected one.

    Attributes
    ----------
    passed
        Shapes equal and :func:`relative_error` at most ``tolerance``.
    max_rel_error, max_abs_error
        Largest element-wise relative and absolute errors (None when the shapes differ).
    worst_index
        Index of the largest relative error (the first, on ties), or None.
    expected, got
        The two values at ``worst_index``, or None.
    expected_shape, got_shape
        Shapes of the expected and the claimed array.
    message
        One line for a person: what was wrong, or that it matches.
    """

    passed: bool
    max_rel_error: float | None
    max_abs_error: float | None
    worst_index: tuple[int, ...] | None
    expected: float | None
    got: float | None
    expected_shape: tuple[int, ...]
    got_shape: tuple[int, ...]
    message: str


def compare(expected: np.ndarray, got: np.ndarray, tolerance: float) -> Comparison:
    """Check ``got`` against ``expected`` element by element, with :func:`relative_errors`.

    Parameters
    ----------
    expected : ndarray
        The right answer.
    got : ndarray
        The claimed answer; a different shape is a failed comparison, not an error.
    tolerance
        Largest relative error accepted.
    """
    exp_shape, got_shape = tuple(expected.shape), tuple(got.shape)
    if exp_shape != got_shape:
        return Comparison(
            passed=False,
            max_rel_error=None,
            max_abs_error=None,
            worst_index=None,
            expected=None,
            got=None,
            expected_shape=exp_shape,
            got_shape=got_shape,
            message=f"expected shape {exp_shape}, got {got_shape}",
        )
    rel = relative_errors(expected, got)
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(rel), rel.shape))
    max_rel = float(rel[worst])
    passed = bool(max_rel <= tolerance)
    verdict = "within" if passed else "exceeds"
    return Comparison(
        passed=passed,
        max_rel_error=max_rel,
        max_abs_error=float(np.max(np.abs(expected.astype(np.float64) - got))),
        worst_index=worst,
        expected=float(expected[worst]),
        got=float(got[worst]),
        expected_shape=exp_shape,
        got_shape=got_shape,
        message=f"max relative error {max_rel:.3g} at index {list(worst)} {verdict} "
        f"the tolerance {tolerance:.3g} (expected {float(expected[worst]):.6g}, "
        f"got {float(got[worst]):.6g})",
    )
