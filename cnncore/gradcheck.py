"""Numerical checks: central-difference gradients and relative errors.

:func:`check_gradient` / :func:`assert_gradient` are the one gradient check every
test uses: central differences against an analytic gradient, with a pass bound
derived from the floating-point error analysis below, not a tolerance tuned on one
CPU. :func:`numerical_gradient` is the bare finite-difference estimate;
:func:`relative_error` is the customary element-wise measure of agreement, and
:func:`compare` applies it to a claimed answer (``POST /v1/check``).

Error analysis of the gradient check
------------------------------------
The check estimates the derivative of the scalar ``L(x) = sum(f(x) * dout)`` along
each element ``x_i`` by ``(L(x + h e_i) - L(x - h e_i)) / (x_i⁺ - x_i⁻)``, where
``x_i^± = fl(x_i ± h)`` are the perturbed values as stored: dividing by their exact
difference instead of by ``2h`` keeps the rounding of ``x_i ± h`` out of the error.
The estimate differs from the true derivative by

- truncation, ``h² |L'''| / 6``. The checked ops are piecewise polynomials of low
  degree in any one element (conv, linear, pooling, relu: degree 1) or smooth with
  unit-scale derivatives (softmax cross-entropy, MSE on O(1) values), so
  ``|L'''| <~ T`` with ``T`` the scale of ``L``'s terms (next item);
- round-off. Each float64 evaluation of ``L`` is off by a few ``eps·T`` at most
  (``eps = 2.2e-16``), where ``T = sum |f(x) · dout| + sum |x · analytic|`` is the
  magnitude of the terms ``L`` adds up: the output terms, and the input
  contributions ``x_i ∂L/∂x_i`` that the sums inside ``f`` accumulate. The order of
  the sums (BLAS kernel, thread count, numpy's SIMD width) decides which rounding
  errors occur, not their scale. The difference of two evaluations over the step
  ``2h`` is then off by at most ``ROUNDOFF_TERMS · eps · T / h``.

Hence every element obeys ``|numerical_i - analytic_i| <= (ROUNDOFF_TERMS·eps/h +
h²/6) · T``. The step ``h = 1e-6`` keeps truncation (``1.7e-13·T``) far below
round-off (``ROUNDOFF_TERMS · 2.2e-10·T``) and is small enough not to step over the
kinks tests keep their inputs away from (relu at 0, ties in max pooling).

The criterion is that absolute error, relative to the largest gradient magnitude
``G``: ``error = max_i |numerical_i - analytic_i| / G`` against ``bound =
(ROUNDOFF_TERMS·eps/h + h²/6) · T / G``. An element-wise relative error
``|a - b| / (|a| + |b|)`` is the wrong measure here: for an element whose gradient is
near zero it measures the round-off of the whole sum, not the gradient, which is
why a fixed ``relative_error < 1e-7`` passes on one BLAS kernel and fails on
another. For the tests' sizes the bound is 7e-9 to 3e-6 (docs/kernel-audit.md), so
a gradient wrong by 1e-5 of its scale in a single element fails the check
(``tests/cnncore/test_gradcheck.py`` plants such errors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Step of the central differences (the module docstring explains the choice).
STEP = 1e-6

#: Rounding stages an evaluation of ``L`` may accumulate, each at most ``eps·T``:
#: the products, the blocked or pairwise sums inside ``f`` (numpy's pairwise
#: summation and BLAS's blocked dot products add error like log2 of the length:
#: under 16 stages for any size a gradient check can afford) and the reduction with
#: ``dout``.
ROUNDOFF_TERMS = 16


def numerical_gradient(
    f: Callable[[], np.ndarray | float],
    x: np.ndarray,
    dout: np.ndarray | float = 1.0,
    h: float = STEP,
) -> np.ndarray:
    """Gradient of ``sum(f() * dout)`` with respect to ``x``, by central differences.

    ``f`` is called with no arguments and must read ``x`` (which is perturbed in
    place, one element at a time, and restored). Each difference is divided by the
    stored step ``fl(x_i + h) - fl(x_i - h)``. Use float64 for meaningful results,
    and :func:`check_gradient` to compare with an analytic gradient.

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
        Same shape as ``x``, float64.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        upper = float(x[i])
        plus = np.sum(np.asarray(f()) * dout)
        x[i] = old - h
        lower = float(x[i])
        minus = np.sum(np.asarray(f()) * dout)
        x[i] = old
        grad[i] = (plus - minus) / (upper - lower)
    return grad


@dataclass(frozen=True)
class GradientCheck:
    """The verdict of :func:`check_gradient`.

    Attributes
    ----------
    passed
        ``error <= bound``.
    error
        ``max |numerical - analytic|`` divided by ``scale``.
    bound
        ``(ROUNDOFF_TERMS·eps/h + h²/6) · terms / scale``: the largest ``error``
        that rounding and truncation explain (module docstring).
    index
        Index of the largest absolute difference (the first, on ties).
    analytic, numerical
        The two gradients' values at ``index``.
    scale
        The largest gradient magnitude, ``max(|analytic|, |numerical|)`` over all
        elements (1.0 if both gradients are all zero).
    terms
        ``sum |f(x) · dout| + sum |x · analytic|``, the magnitude of ``L``'s terms.
    """

    passed: bool
    error: float
    bound: float
    index: tuple[int, ...]
    analytic: float
    numerical: float
    scale: float
    terms: float

    @property
    def message(self) -> str:
        """One line for a person: the verdict and the worst element."""
        verdict = "within" if self.passed else "exceeds"
        return (
            f"gradient error {self.error:.3g} (relative to the largest gradient "
            f"{self.scale:.3g}) {verdict} the bound {self.bound:.3g}; worst index "
            f"{list(self.index)}: analytic {self.analytic:.12g}, "
            f"numerical {self.numerical:.12g}"
        )


def check_gradient(
    f: Callable[[], np.ndarray | float],
    x: np.ndarray,
    analytic: np.ndarray,
    dout: np.ndarray | float = 1.0,
    h: float = STEP,
) -> GradientCheck:
    """Check an analytic gradient of ``sum(f() * dout)`` against central differences.

    Parameters
    ----------
    f
        Function of the current contents of ``x``; returns an array or a scalar.
        Called ``2 * x.size + 1`` times.
    x : ndarray of float64, any shape
        The variable; perturbed in place one element at a time and restored.
    analytic : ndarray, same shape as ``x``
        The gradient to check.
    dout : ndarray or float
        Upstream gradient, broadcastable to ``f()``'s shape.
    h
        Step of the differences; the default suits float64 inputs of order 1.

    Returns
    -------
    GradientCheck
        ``passed`` is ``error <= bound``, both as defined in the module docstring.

    Raises
    ------
    TypeError
        If ``x`` is not float64 (float32 rounding swamps any useful step).
    ValueError
        If ``analytic`` does not have ``x``'s shape, or ``x`` is empty.
    """
    if x.dtype != np.float64:
        raise TypeError(f"x must be float64 for a gradient check, got {x.dtype}")
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != x.shape:
        raise ValueError(f"analytic gradient has shape {analytic.shape}, x has {x.shape}")
    if x.size == 0:
        raise ValueError("x is empty: there is no gradient to check")
    terms = float(np.sum(np.abs(np.asarray(f(), dtype=np.float64) * dout)))
    terms += float(np.sum(np.abs(x * analytic)))
    numerical = numerical_gradient(f, x, dout, h)
    diff = np.abs(numerical - analytic)
    index = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
    largest = max(float(np.max(np.abs(analytic))), float(np.max(np.abs(numerical))))
    scale = largest if largest > 0.0 else 1.0
    eps = float(np.finfo(np.float64).eps)
    error = float(diff[index]) / scale
    bound = (ROUNDOFF_TERMS * eps / h + h * h / 6) * terms / scale
    return GradientCheck(
        passed=bool(error <= bound),
        error=error,
        bound=bound,
        index=index,
        analytic=float(analytic[index]),
        numerical=float(numerical[index]),
        scale=scale,
        terms=terms,
    )


def assert_gradient(
    f: Callable[[], np.ndarray | float],
    x: np.ndarray,
    analytic: np.ndarray,
    dout: np.ndarray | float = 1.0,
    h: float = STEP,
) -> GradientCheck:
    """:func:`check_gradient`, raising when the check fails.

    Returns
    -------
    GradientCheck
        The passing verdict.

    Raises
    ------
    AssertionError
        If the check fails; the message names the error, the bound and the worst index.
    TypeError, ValueError
        As :func:`check_gradient`.
    """
    result = check_gradient(f, x, analytic, dout, h)
    if not result.passed:
        raise AssertionError(result.message)
    return result


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
