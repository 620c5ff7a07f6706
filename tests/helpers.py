"""Small helpers shared by the tests."""

from __future__ import annotations

import numpy as np

# Tolerances for comparing a fast path against the float64 reference, per dtype.
TOL = {
    np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12},
    np.dtype(np.float32): {"rtol": 1e-4, "atol": 1e-5},
}


def assert_close(
    actual: np.ndarray, expected: np.ndarray, dtype: np.dtype | type | None = None
) -> None:
    """Compare with the tolerance of ``dtype`` (default: ``actual``'s dtype)."""
    tol = TOL[np.dtype(dtype if dtype is not None else actual.dtype)]
    np.testing.assert_allclose(actual, expected, **tol)
