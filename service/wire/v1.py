"""The ``/v1`` tensor forms <-> numpy arrays.

A tensor arrives in one of three forms::

    [[1.0, 2.0], [3.0, 4.0]]                                     nested list, row-major
    {"shape": [2, 2], "dtype": "float32", "data": [1, 2, 3, 4]}  flat data + shape
    {"shape": [2, 2], "dtype": "float32", "b64": "AACAPw..."}    base64 little-endian C order

Decoding goes straight to numpy (``frombuffer`` for base64, one ``np.asarray`` for
lists) after the element limit has been checked against the declared (or, for
nested lists, the inferred) shape, so nothing large is allocated for a request
that is going to be refused.

The checks are those of every framing (:mod:`service.wire.checks`); their refusals
become pydantic errors here, since ``/v1`` tensors are decoded while the request model
validates (``too_large``: a 413; the others a 422). Limits come from a context
variable that the app sets per request (:func:`limits_scope`); outside a request the
defaults of :class:`Settings` apply.
"""

from __future__ import annotations

import binascii
import contextlib
import math
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import orjson
import pybase64
from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from ..errors import ServiceError, TooLargeError
from .checks import MAX_NDIM, check_elements, check_finite, from_numbers
from .datatypes import V1_DTYPES, v1_name

#: ``/v1`` dtype name -> numpy dtype (a view of the one table, :mod:`service.wire.datatypes`).
DTYPES = V1_DTYPES
Encoding = Literal["list", "b64"]


@dataclass(frozen=True)
class TensorLimits:
    """Per-request limits applied while decoding."""

    max_elements: int = 16_777_216


# TensorLimits is a frozen dataclass, so sharing one default instance is safe.
_limits: ContextVar[TensorLimits] = ContextVar("tensor_limits", default=TensorLimits())  # noqa: B039


@contextlib.contextmanager
def limits_scope(limits: TensorLimits) -> Iterator[None]:
    """Apply ``limits`` to every tensor decoded inside the ``with`` block."""
    token = _limits.set(limits)
    try:
        yield
    finally:
        _limits.reset(token)


_list_dtype: ContextVar[np.dtype] = ContextVar("list_dtype", default=DTYPES["float64"])


@contextlib.contextmanager
def list_dtype_scope(dtype: np.dtype) -> Iterator[None]:
    """Decode nested-list tensors to ``dtype`` inside the ``with`` block (default float64)."""
    token = _list_dtype.set(dtype)
    try:
        yield
    finally:
        _list_dtype.reset(token)


class _BodyBools:
    """Whether a JSON body has any ``true`` or ``false`` at all, found on first use.

    Only nested-list tensors ask, so a body of base64 tensors is never scanned
    (``b"true" in body`` costs 4 ms on the 5.6 MB body of a 4 MiB float32 tensor).
    """

    __slots__ = ("_body", "_found")

    def __init__(self, body: bytes | None) -> None:
        self._body = body
        self._found: bool | None = None if body is not None else True

    def __call__(self) -> bool:
        if self._found is None:
            assert self._body is not None
            self._found = b"true" in self._body or b"false" in self._body
            self._body = None
        return self._found


_may_hold_bools: ContextVar[_BodyBools] = ContextVar("may_hold_bools", default=_BodyBools(None))  # noqa: B039


def note_body_bools(body: bytes) -> None:
    """Record the current request's JSON body: when it has no ``true`` or ``false`` at
    all, tensors skip the scan of their lists for booleans."""
    _may_hold_bools.set(_BodyBools(body))


#: A ``b64`` string at least this long is decoded straight from the request body.
LONG_B64 = 1 << 16
_TAKEN_PREFIX = "\x00b64:"  # no client string can hold a raw NUL (see parse_json_body)
_B64_KEY = re.compile(rb'"b64"[ \t\r\n]*:[ \t\r\n]*\Z')


@dataclass(frozen=True)
class TakenB64:
    """A ``b64`` string taken out of a body before parsing: its length and its bytes."""

    length: int
    raw: bytes


# Replaced (never mutated) per request by parse_json_body.
_taken_b64: ContextVar[dict[str, TakenB64]] = ContextVar("taken_b64", default={})  # noqa: B039


def parse_json_body(body: bytes) -> Any:
    """Parse a JSON request body; its long ``"b64"`` values are decoded straight from the
    bytes (:func:`take_long_b64`) and resolved by :func:`decode_tensor`.

    Raises
    ------
    orjson.JSONDecodeError
        If the body is not valid JSON (exactly when orjson would refuse it whole).
    """
    body, taken = take_long_b64(body)
    doc = orjson.loads(body)
    _taken_b64.set(taken)
    return doc


def take_long_b64(body: bytes) -> tuple[bytes, dict[str, TakenB64]]:
    """Decode the long ``"b64"`` values of a JSON document straight from its bytes.

    orjson turns a JSON string into a ``str`` at a few hundred MB/s (17 ms for the
    5.6 MB of base64 of a 4 MiB float32 tensor, a busy machine), then the text is
    decoded again. Instead, each ``"b64": "..."`` value of at least :data:`LONG_B64`
    characters is decoded here from the body's bytes and replaced by a short
    placeholder string; returns the new body and the decoded values by placeholder.

    This only happens in a body without any backslash: there, no string has an escape,
    so every ``"`` delimits a string and consecutive quotes pair up exactly as a JSON
    parser would pair them. A value is replaced only if it is valid base64 (only
    ASCII letters, digits, ``+``, ``/`` and padding: no control character, nothing
    non-ASCII), so replacing it with another valid string changes neither the
    document's validity nor anything else in it. The placeholder is spelled
    ``\\u0000...``: a NUL that no string in a backslash-free body can contain.
    """
    taken: dict[str, TakenB64] = {}
    if len(body) > LONG_B64 and b"\\" not in body:
        view = memoryview(body)
        parts: list[bytes | memoryview] = []
        start = pos = 0
        while (opening := body.find(b'"', pos)) >= 0 and (
            closing := body.find(b'"', opening + 1)
        ) >= 0:
            pos = closing + 1
            length = closing - opening - 1
            if length < LONG_B64 or not _B64_KEY.search(body, max(0, opening - 64), opening):
                continue
            try:
                raw = pybase64.b64decode(view[opening + 1 : closing], validate=True)
            except (binascii.Error, ValueError):
                continue  # left for orjson and decode_tensor to judge, as any string
            key = f"{_TAKEN_PREFIX}{len(taken)}"
            taken[key] = TakenB64(length, raw)
            parts += [view[start : opening + 1], f"\\u0000b64:{len(taken) - 1}".encode()]
            start = closing
        if taken:
            parts.append(view[start:])
            body = b"".join(parts)
    return body, taken


def is_placeholder(text: Any) -> bool:
    """Whether ``text`` may be a placeholder of :func:`take_long_b64` (cheap: no hashing)."""
    return isinstance(text, str) and text.startswith(_TAKEN_PREFIX)


def _fail(kind: str, msg: str) -> PydanticCustomError:
    # kind "too_large" is rendered as 413 by the problem handler; the rest as 422.
    return PydanticCustomError(kind, msg)


def _check_elements(shape: tuple[int, ...]) -> int:
    return check_elements(shape, _limits.get().max_elements, "tensor")


def _check_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not shape:
        raise _fail("tensor_shape", "shape must be a non-empty list of positive integers")
    if len(shape) > MAX_NDIM:
        raise _fail("tensor_shape", f"shape has {len(shape)} dimensions; at most {MAX_NDIM}")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise _fail("tensor_shape", "shape must be a list of positive integers")
    return tuple(shape)


def _dtype(value: Any) -> np.dtype:
    if not isinstance(value, str) or value not in DTYPES:  # {} or [] are not hashable
        raise _fail("tensor_dtype", "dtype must be 'float32' or 'float64'")
    return DTYPES[value]


def _infer_shape(data: list[Any]) -> tuple[int, ...]:
    """Shape of a nested list from its first elements (raggedness is caught later)."""
    shape: list[int] = []
    node: Any = data
    while isinstance(node, list):
        if not node:
            raise _fail("tensor_shape", "tensor has an empty dimension")
        shape.append(len(node))
        if len(shape) > MAX_NDIM:
            raise _fail("tensor_shape", f"tensor is nested more than {MAX_NDIM} levels deep")
        node = node[0]
    return tuple(shape)


def _from_numbers(data: list[Any], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    out = from_numbers(data, shape, dtype, "tensor", may_hold_bools=_may_hold_bools.get()())
    if out.dtype.kind == "f" and not np.isfinite(out).all():  # named only then: dtype.name is slow
        check_finite(out, f"tensor ({dtype.name})")
    return out


def decode_tensor(value: Any) -> np.ndarray:
    """Decode one wire tensor; nested lists become float64 unless :func:`list_dtype_scope`
    says otherwise (the request's ``dtype``).

    Raises
    ------
    pydantic_core.PydanticCustomError
        ``too_large`` over the element limit; other kinds for malformed tensors.
    """
    try:
        return _decode(value)
    except TooLargeError as exc:
        raise _fail("too_large", exc.errors[0][1] if exc.errors else exc.detail) from None
    except ServiceError as exc:
        raise _fail("tensor_values", exc.detail) from None


def _decode(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):  # already decoded (in-process callers)
        return value
    if isinstance(value, list):
        shape = _infer_shape(value)
        _check_elements(shape)
        return _from_numbers(value, shape, _list_dtype.get())
    if not isinstance(value, dict):
        raise _fail(
            "tensor_type",
            "a tensor must be a nested list, {shape, dtype, data} or {shape, dtype, b64}",
        )
    extra = set(value) - {"shape", "dtype", "data", "b64"}
    if extra:
        raise _fail("tensor_type", f"unexpected tensor keys: {', '.join(sorted(extra))[:80]}")
    if ("data" in value) == ("b64" in value):
        raise _fail("tensor_type", "a tensor object needs exactly one of 'data' and 'b64'")
    shape = _check_shape(value.get("shape"))
    dtype = _dtype(value.get("dtype", "float64"))
    count = _check_elements(shape)
    if "data" in value:
        data = value["data"]
        if not isinstance(data, list) or len(data) != count:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise _fail("tensor_shape", f"data must be a flat list of {count} numbers, got {got}")
        return _from_numbers(data, (count,), dtype).reshape(shape)
    text = value["b64"]
    nbytes = count * dtype.itemsize
    taken = _taken_b64.get().get(text) if is_placeholder(text) else None
    length = taken.length if taken else len(text) if isinstance(text, str) else -1
    if length != 4 * math.ceil(nbytes / 3):
        raise _fail(
            "tensor_b64",
            f"b64 must encode {nbytes} bytes ({count} {dtype.name} values) "
            f"as {4 * math.ceil(nbytes / 3)} base64 characters",
        )
    if taken:
        raw = taken.raw
    else:
        try:
            # pybase64 (SIMD): 40x faster than the standard library's base64, which scans
            # the text with a regular expression before a byte-at-a-time decode.
            raw = pybase64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _fail("tensor_b64", "b64 is not valid base64") from None
    if len(raw) != nbytes:
        raise _fail("tensor_b64", f"b64 decodes to {len(raw)} bytes, expected {nbytes}")
    arr = check_finite(np.frombuffer(raw, dtype=dtype).reshape(shape), "tensor")
    return arr.astype(dtype.newbyteorder("="), copy=False)


def encode_tensor(arr: np.ndarray, encoding: Encoding) -> Any:
    """Wire form of ``arr`` for ``orjson.dumps``: the array itself (orjson writes nested
    lists) or ``{shape, dtype, b64}``, its ``b64`` an ``orjson.Fragment`` holding the
    quoted base64 text, which orjson copies as is (a ``str`` would cost a decode to
    text and a scan for characters to escape: 6 ms for 4 MiB of float32).

    Raises
    ------
    ValueError
        If ``arr`` holds NaN or infinity: JSON cannot carry them, and a silent
        ``null`` would be worse than an error.
    """
    if not np.isfinite(arr).all():
        raise ValueError("the result is not finite (overflow); inputs may be too large")
    if encoding == "b64":
        le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        return {
            "shape": list(arr.shape),
            "dtype": v1_name(arr.dtype),
            "b64": orjson.Fragment(b'"' + pybase64.b64encode(le.data) + b'"'),
        }
    return np.ascontiguousarray(arr)


def _nested_list(ndim: int, max_dim: int | None) -> dict[str, Any]:
    """Schema of an ``ndim``-deep nested list of numbers, each level at most ``max_dim`` long."""
    items: dict[str, Any] = {"type": "number"}
    for _ in range(ndim):
        items = {"type": "array", "minItems": 1, "items": items}
        if max_dim is not None:
            items["maxItems"] = max_dim
    return items


def tensor_schema(max_elements: int | None) -> dict[str, Any]:
    """JSON Schema of a wire tensor; with ``max_elements``, every dimension, flat ``data``
    and ``b64`` text is bounded by it (their product is checked on arrival: a 413)."""
    dim: dict[str, Any] = {"type": "integer", "minimum": 1}
    data: dict[str, Any] = {"type": "array", "items": {"type": "number"}, "minItems": 1}
    b64: dict[str, Any] = {"type": "string", "contentEncoding": "base64"}
    if max_elements is not None:
        dim["maximum"] = max_elements
        data["maxItems"] = max_elements
        b64["maxLength"] = 4 * math.ceil(max_elements * 8 / 3)
    shape = {"type": "array", "items": dim, "minItems": 1, "maxItems": MAX_NDIM}
    dtype = {"type": "string", "enum": list(DTYPES), "default": "float64"}
    return {
        "title": "Tensor",
        "description": (
            "A tensor: a nested list (row-major, float64 unless the request sets `dtype`), "
            "`{shape, dtype, data}` with flat row-major data, or `{shape, dtype, b64}` with "
            "base64 of the little-endian C-order bytes."
        ),
        "anyOf": [
            {
                "title": "NestedList",
                "anyOf": [_nested_list(n, max_elements) for n in range(1, MAX_NDIM + 1)],
            },
            {
                "title": "FlatTensor",
                "type": "object",
                "required": ["shape", "data"],
                "additionalProperties": False,
                "properties": {"shape": shape, "dtype": dtype, "data": data},
            },
            {
                "title": "Base64Tensor",
                "type": "object",
                "required": ["shape", "b64"],
                "additionalProperties": False,
                "properties": {"shape": shape, "dtype": dtype, "b64": b64},
            },
        ],
    }


#: Marks the schema of a tensor in a request, so that :func:`bound_request_tensors` finds it.
_INPUT_MARK = "x-cnn-input-tensor"

TENSOR_SCHEMA: dict[str, Any] = {**tensor_schema(TensorLimits().max_elements), _INPUT_MARK: True}

#: A tensor in a response: its size is bounded by the compute budgets, not the element limit.
TENSOR_RESPONSE_SCHEMA: dict[str, Any] = tensor_schema(None)


def bound_request_tensors(node: Any, max_elements: int) -> Any:
    """Rewrite, in place, every request-tensor schema in an OpenAPI document with the
    bounds of ``max_elements`` (the instance's ``CNN_MAX_ELEMENTS``); returns ``node``."""
    if isinstance(node, dict):
        if node.get(_INPUT_MARK):
            node["anyOf"] = tensor_schema(max_elements)["anyOf"]
        for value in node.values():
            bound_request_tensors(value, max_elements)
    elif isinstance(node, list):
        for value in node:
            bound_request_tensors(value, max_elements)
    return node


#: A request field holding a tensor; validates straight to ``numpy.ndarray``.
Tensor = Annotated[np.ndarray, PlainValidator(decode_tensor), WithJsonSchema(TENSOR_SCHEMA)]
