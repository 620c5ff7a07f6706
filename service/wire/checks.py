"""The checks every tensor framing shares, applied before or while an array is made.

``who`` names the tensor in messages (``"input 'x'"``, ``"tensor"``). Each check raises
a domain exception of :mod:`service.errors` (:class:`~service.errors.TooLargeError` over the
element limit, :class:`~service.errors.BadRequestError` otherwise); ``loc`` names the field.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from ..errors import Loc, TooLargeError, bad_request

#: Most dimensions a tensor may have.
MAX_NDIM = 8


def shown(name: Any) -> str:
    """A client-given name quoted for a message, clipped to 40 characters."""
    text = str(name)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def check_shape(shape: Any, who: str, loc: Loc = (), *, positive: bool = False) -> tuple[int, ...]:
    """``shape`` as a tuple, if it is a list of at most :data:`MAX_NDIM` non-negative (with
    ``positive``: positive, and at least one) integers."""
    least = 1 if positive else 0
    kind = "positive" if positive else "non-negative"
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or (positive and not shape):
        raise bad_request(f"{who}: shape must be a list of at most {MAX_NDIM} {kind} integers", loc)
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < least:
            raise bad_request(f"{who}: shape must be {kind} integers, got {shape}"[:200], loc)
    return tuple(shape)


def check_elements(shape: tuple[int, ...], max_elements: int, who: str, loc: Loc = ()) -> int:
    """The element count of ``shape``, refused (too large) beyond ``max_elements``: checked
    before anything of that size is allocated."""
    count = math.prod(shape)
    if count > max_elements:
        dims = "×".join(map(str, shape))
        msg = f"{who} of shape {dims} has {count} elements; the limit is {max_elements}"
        raise TooLargeError(msg + " (CNN_MAX_ELEMENTS)", [(loc, msg)])
    return count


def holds_bool(data: list[Any], ndim: int) -> bool:
    """Whether a regular ``ndim``-deep nested list has a boolean leaf (C-speed scan)."""
    leaves: Any = data
    for _ in range(ndim - 1):
        leaves = itertools.chain.from_iterable(leaves)
    return bool in map(type, leaves)


def from_numbers(
    data: list[Any],
    shape: tuple[int, ...],
    dtype: np.dtype,
    who: str,
    loc: Loc = (),
    *,
    may_hold_bools: bool = True,
) -> np.ndarray:
    """A flat or nested list of numbers as an array of ``shape`` and ``dtype``.

    Refused: ragged lists, a count or nesting that disagrees with ``shape``, anything
    but numbers (booleans included, which numpy would read as 0 and 1; integers only
    for an integer ``dtype``, and within its range). Overflow to infinity is left to
    :func:`check_finite`.
    """
    count = math.prod(shape)
    if data and not isinstance(data[0], list) and len(data) != count:
        raise bad_request(
            f"{who}: data has {len(data)} values; shape {list(shape)} needs {count}", loc
        )
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):
        raise bad_request(f"{who}: data is ragged (rows of different lengths)", loc) from None
    if values.size != count or (values.ndim > 1 and values.shape != shape):
        raise bad_request(
            f"{who}: data has shape {list(values.shape)}; the shape is {list(shape)} "
            "(data may be flat or nested like the shape; ragged rows are refused)",
            loc,
        )
    integral = dtype.kind in "iu"
    allowed = "iub" if dtype.kind == "b" else "iu" if integral else "iuf"
    if count and (
        values.dtype.kind not in allowed
        or (dtype.kind != "b" and may_hold_bools and holds_bool(data, values.ndim))
    ):
        what = "integers" if integral else "numbers"
        raise bad_request(f"{who}: data must be {what}", loc)
    if integral and count:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise bad_request(f"{who}: data does not fit {dtype.name}", loc)
    with np.errstate(over="ignore"):  # an overflow to inf is refused by check_finite
        return values.astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def from_bytes(
    raw: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype, who: str, loc: Loc = ()
) -> np.ndarray:
    """Little-endian row-major bytes as an array of ``shape``, without a copy unless they
    are misaligned for ``dtype``; the byte count must be exactly what ``shape`` takes."""
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise bad_request(
            f"{who}: has {len(raw)} bytes, but shape {list(shape)} of "
            f"{dtype.itemsize}-byte elements takes {expected}",
            loc,
        )
    array = np.frombuffer(raw, dtype=dtype, count=count)
    if not array.flags.aligned:  # e.g. an FP32 tensor after a header of odd length
        array = array.copy()
    return array.reshape(shape)


def check_finite(array: np.ndarray, who: str, loc: Loc = ()) -> np.ndarray:
    """``array`` if it holds no NaN or infinity (floating dtypes only)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise bad_request(f"{who} holds NaN or infinity; values must be finite", loc)
    return array
