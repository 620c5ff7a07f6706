"""Array checks shared by the public entry points (validated once, there)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import DtypeError, ShapeError

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(a: Any, name: str, *, ndim: int | None = None) -> np.ndarray:
    """Return ``a`` as a float32 or float64 array.

    float32 and float64 arrays pass through unchanged (no copy); integer and bool
    arrays (and Python scalars or lists of them) become float64.

    Raises
    ------
    DtypeError
        For any other dtype (complex, float16, strings, objects...).
    ShapeError
        If ``ndim`` is given and the array has another number of dimensions.
    """
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except (ValueError, TypeError) as exc:  # ragged nested lists and the like
            msg = f"{name} is not a rectangular numeric array ({exc})"
            raise DtypeError(msg, arg=name) from None
    if a.dtype not in FLOAT_DTYPES:
        if a.dtype.kind in "biu":
            a = a.astype(np.float64)
        else:
            raise DtypeError(
                f"{name} must be float32 or float64 (integer and bool are converted), "
                f"got dtype {a.dtype}",
                arg=name,
            )
    if ndim is not None and a.ndim != ndim:
        raise ShapeError(f"{name} must be {ndim}-D, got shape {a.shape} ({a.ndim}-D)", arg=name)
    return a


def common_dtype(*arrays: np.ndarray | None) -> np.dtype:
    """The dtype the computation runs in: float64 if any input is float64, else float32."""
    dtypes = [a.dtype for a in arrays if a is not None]
    return np.result_type(*dtypes) if dtypes else np.dtype(np.float64)


def check_bias(b: Any, length: int, dtype: np.dtype) -> np.ndarray | None:
    """Validate an optional bias of shape ``(length,)``.

    Raises
    ------
    ShapeError
        If ``b`` is not 1-D of the expected length.
    """
    if b is None:
        return None
    b = as_float_array(b, "b")
    if b.shape != (length,):
        raise ShapeError(f"b must have shape ({length},), got {b.shape}", arg="b")
    return b.astype(dtype, copy=False)


def check_dout(dout: Any, expected: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Validate the upstream gradient against the forward output's shape.

    Raises
    ------
    ShapeError
        If ``dout``'s shape differs from the forward output's.
    """
    dout = as_float_array(dout, "dout")
    if dout.shape != tuple(expected):
        raise ShapeError(
            f"dout has shape {dout.shape} but the forward output has shape {tuple(expected)}",
            arg="dout",
        )
    return dout.astype(dtype, copy=False)
