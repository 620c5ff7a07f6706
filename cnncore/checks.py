"""Argument checks shared by the public entry points (validated once, there).

Integers and pairs of them, shapes, output sizes, and arrays (dtype, bias, upstream
gradient); each raises a :class:`~cnncore.errors.CnnError` naming the argument at fault.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import DtypeError, ParameterError, ShapeError

__all__ = [
    "FLOAT_DTYPES",
    "as_float_array",
    "as_pair",
    "check_bias",
    "check_dout",
    "check_int",
    "check_output_size",
    "check_shape",
    "common_dtype",
    "short_repr",
]

Pair = tuple[int, int]

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


# --------------------------------------------------------------------------- scalars and shapes


def check_int(value: Any, name: str, *, minimum: int | None = None, arg: str | None = None) -> int:
    """Return ``value`` as an ``int``, rejecting booleans, floats and strings.

    Raises
    ------
    ParameterError
        If ``value`` is not an integer, or is below ``minimum``. Its ``arg`` is
        ``arg`` when given (e.g. ``"stride"`` for ``stride[0]``), else ``name``.
    """
    arg = arg or name
    if type(value) is not int:  # the common case skips the abstract-class check (~1 us)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ParameterError(
                f"{name} must be an integer, got {short_repr(value)} ({type(value).__name__})",
                arg=arg,
            )
        value = int(value)
    if minimum is not None and value < minimum:
        raise ParameterError(f"{name} must be >= {minimum}, got {value}", arg=arg)
    return value


def as_pair(value: Any, name: str, *, minimum: int = 1) -> Pair:
    """Normalise an int or an ``(h, w)`` pair to a pair of ints ``>= minimum``.

    Raises
    ------
    ParameterError
        If ``value`` is neither an integer nor a sequence of two integers.
    """
    if type(value) is int:  # the common cases, without the abstract-class checks below
        v = check_int(value, name, minimum=minimum)
        return v, v
    if (
        type(value) is tuple
        and len(value) == 2
        and type(value[0]) is int
        and type(value[1]) is int
        and min(value) >= minimum
    ):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ParameterError(
                f"{name} must be an integer or a pair (h, w), got {len(value)} values", arg=name
            )
        h = check_int(value[0], f"{name}[0]", minimum=minimum, arg=name)
        w = check_int(value[1], f"{name}[1]", minimum=minimum, arg=name)
        return h, w
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(
            f"{name} must be an integer or a pair (h, w), got {short_repr(value)}", arg=name
        )
    v = check_int(value, name, minimum=minimum)
    return v, v


def check_shape(
    shape: Any, name: str, ndim: int | None = None, *, min_ndim: int = 1
) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints, of ``ndim`` dimensions (or at least ``min_ndim``).

    Raises
    ------
    ShapeError
        If ``shape`` is not a sequence of integers, has the wrong number of dimensions,
        or has a zero dimension.
    ParameterError
        If a dimension is not an integer or is negative.
    """
    if type(shape) is tuple and all(type(s) is int and s > 0 for s in shape):
        dims: tuple[int, ...] = shape  # an array's shape: no per-dimension checks (~1 us each)
    else:
        if isinstance(shape, str) or not isinstance(shape, Sequence):
            raise ShapeError(
                f"{name} must be a shape (a sequence of integers), got {short_repr(shape)}",
                arg=name,
            )
        dims = tuple(
            check_int(s, f"{name} dimension {i}", minimum=0, arg=name) for i, s in enumerate(shape)
        )
    if ndim is not None and len(dims) != ndim:
        raise ShapeError(f"{name} must be {ndim}-D, got shape {dims} ({len(dims)}-D)", arg=name)
    if len(dims) < min_ndim:
        raise ShapeError(
            f"{name} must have at least {min_ndim} dimensions, got shape {dims}", arg=name
        )
    if any(s == 0 for s in dims):
        raise ShapeError(f"{name} has an empty dimension: shape {dims}", arg=name)
    return dims


def check_output_size(
    axis: str, out: int, size: int, k: int, s: int, lo: int, hi: int, d: int
) -> None:
    """Refuse a non-positive output size ``out`` along ``axis``, showing the sum that gave it.

    Raises
    ------
    ShapeError
        If ``out <= 0`` (``arg`` is ``"x"``: the input is too small for the kernel).
    """
    if out <= 0:
        extent = d * (k - 1) + 1
        kernel = f"dilation {d}*(kernel {k} - 1) - 1" if d != 1 else f"kernel {k}"
        raise ShapeError(
            f"output {axis} would be {out}: floor(({axis} {size} + padding {lo}+{hi} "
            f"- {kernel}) / stride {s}) + 1 = {out}; "
            f"the padded input ({size + lo + hi}) is smaller than the kernel extent ({extent})",
            arg="x",
        )


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr`` cut to ``limit`` characters: error messages never echo large inputs."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
