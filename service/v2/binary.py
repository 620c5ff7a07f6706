"""How an Open Inference Protocol body becomes arrays, and arrays become a body.

A request body is a JSON object, optionally followed by the raw bytes of its binary
inputs (Triton's binary tensor data extension)::

    | JSON header (Inference-Header-Content-Length bytes) | input bytes | input bytes | ...

An input sent as binary says so with ``"parameters": {"binary_data_size": <bytes>}``;
its bytes follow the header in the order of the inputs, little-endian, row-major,
without padding. An input without it carries ``"data"``: a flat or nested row-major
list. A body without the ``Inference-Header-Content-Length`` header is all JSON,
whatever its ``Content-Type``.

Every size is checked before anything is sliced or allocated: the header length
against the body, each declared ``binary_data_size`` against the input's shape and
datatype and against the bytes that remain, the element count against
``CNN_MAX_ELEMENTS``, and no byte may be left over. A binary input becomes an
ndarray with ``np.frombuffer`` on the received bytes (no per-element Python, no copy
unless the bytes are misaligned for the dtype). A response writes each binary
output's bytes once, straight from the array, after its JSON header.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..problems import ApiError, Loc
from ..tensors import MAX_NDIM, _holds_bool

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_MEDIA_TYPE = "application/json"
BINARY_MEDIA_TYPE = "application/octet-stream"

#: Every datatype of the protocol with a fixed element size, as little-endian numpy dtypes.
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?",
        "UINT8": "u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "INT8": "i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}
#: The protocol's name of each numpy dtype the service answers in.
DATATYPE_OF: dict[np.dtype, str] = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
}


def bad_request(msg: str, loc: Loc = ()) -> ApiError:
    """A 400 for a request that does not fit the protocol or the model."""
    return ApiError(400, msg, [(loc, msg)])


def _shown(name: Any) -> str:
    text = str(name)
    return repr(text if len(text) <= 40 else text[:37] + "...")


# --------------------------------------------------------------------------- requests


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding`` (``gzip`` or ``deflate``, as
    ``tritonclient``'s ``request_compression_algorithm`` sends it), inflated to at most
    ``limit`` bytes.

    Raises
    ------
    ApiError
        413 when it inflates beyond ``limit`` (``CNN_MAX_BODY_BYTES``: a small body must
        not become a huge one); 400 for data that does not inflate, or another encoding.
    """
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    kind = encoding.strip().lower()
    if kind not in ("gzip", "deflate"):
        raise bad_request(
            f"Content-Encoding {_shown(kind)} is not supported; send gzip, deflate or none",
            ["header", "content-encoding"],
        )
    inflater = zlib.decompressobj(wbits=31 if kind == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit)
        if inflater.unconsumed_tail:
            raise ApiError(
                413,
                f"the request body inflates to more than {limit} bytes (CNN_MAX_BODY_BYTES)",
                [(["header", "content-encoding"], "inflated body too large")],
            )
        out += inflater.flush()
    except zlib.error as exc:
        raise bad_request(f"the {kind} body does not inflate: {exc}") from None
    if not inflater.eof:
        raise bad_request(f"the {kind} body is truncated")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header of a request body and the binary bytes after it.

    Parameters
    ----------
    body
        The whole request body.
    header_length
        The ``Inference-Header-Content-Length`` header's value, or ``None`` (all JSON).

    Raises
    ------
    ApiError
        400 when the header length is not a positive number of bytes within the body,
        when the header is not JSON, or not a JSON object.
    """
    view = memoryview(body)
    if header_length is None:
        size = len(body)
    else:
        text = header_length.strip()
        if not (text.isascii() and text.isdigit()):
            raise bad_request(
                f"{HEADER_LENGTH} must be the JSON header's length in bytes, got {_shown(text)}",
                ["header", HEADER_LENGTH],
            )
        size = int(text)
        if size == 0 or size > len(body):
            raise bad_request(
                f"{HEADER_LENGTH} is {size}, but the JSON header must be 1 to {len(body)} "
                f"bytes: the body has {len(body)}",
                ["header", HEADER_LENGTH],
            )
    if size == 0:
        raise bad_request("the request body is empty; expected a JSON inference request")
    try:
        header = orjson.loads(view[:size])
    except orjson.JSONDecodeError as exc:
        where = f"the first {size} bytes (the JSON header)" if header_length else "the body"
        raise bad_request(f"{where} are not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise bad_request("the inference request must be a JSON object")
    return header, view[size:]


@dataclass(frozen=True)
class WireTensor:
    """One input as it arrived: its name, datatype, shape and values."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


class InputReader:
    """Reads the inputs of one request in order, consuming its binary bytes.

    Parameters
    ----------
    binary
        The bytes after the JSON header.
    max_elements
        Most elements one tensor may have (413 beyond).
    may_hold_bools
        Whether the header contains ``true`` or ``false`` at all; when not, ``data``
        lists skip the scan for booleans (which numpy would read as numbers).
    """

    def __init__(self, binary: memoryview, max_elements: int, may_hold_bools: bool = True):
        self.binary = binary
        self.offset = 0
        self.max_elements = max_elements
        self.may_hold_bools = may_hold_bools

    def read(self, spec: Any, index: int) -> WireTensor:
        """Decode ``inputs[index]``.

        Raises
        ------
        ApiError
            400 naming the input for a malformed description, a datatype the protocol
            does not define, ``data`` that does not fit the shape, or binary sizes that
            disagree with it or with the body; 413 over the element limit.
        """
        loc: list[str | int] = ["inputs", index]
        if not isinstance(spec, dict):
            raise bad_request(f"inputs[{index}] must be an object", loc)
        name = spec.get("name")
        if not isinstance(name, str):
            raise bad_request(f"inputs[{index}] needs a 'name' (a string)", [*loc, "name"])
        who = f"input {_shown(name)}"
        datatype = spec.get("datatype")
        if datatype not in DATATYPES:
            known = "BYTES is not supported" if datatype == "BYTES" else "it is not a datatype"
            raise bad_request(
                f"{who}: datatype {_shown(datatype)} cannot be read ({known}); "
                "send FP32, FP64, INT64 or INT32",
                [*loc, "datatype"],
            )
        dtype = DATATYPES[datatype]
        shape = self._shape(spec.get("shape"), who, [*loc, "shape"])
        count = math.prod(shape)
        params = spec.get("parameters", {})
        if not isinstance(params, dict):
            raise bad_request(f"{who}: parameters must be an object", [*loc, "parameters"])
        if "binary_data_size" in params:
            if "data" in spec:
                raise bad_request(f"{who}: has both data and binary_data_size; send one", loc)
            array = self._binary(params["binary_data_size"], shape, count, dtype, who, loc)
        elif "data" in spec:
            array = self._data(spec["data"], shape, count, dtype, who, [*loc, "data"])
        else:
            raise bad_request(f"{who}: needs data, or parameters.binary_data_size", loc)
        return WireTensor(name, datatype, shape, array)

    def finish(self) -> None:
        """Refuse binary bytes that no input claimed."""
        left = len(self.binary) - self.offset
        if left:
            raise bad_request(
                f"the body has {left} bytes after the binary inputs' "
                f"{self.offset} bytes that no input's binary_data_size accounts for"
            )

    def _shape(self, shape: Any, who: str, loc: Loc) -> tuple[int, ...]:
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise bad_request(f"{who}: shape must be a list of at most {MAX_NDIM} integers", loc)
        for d in shape:
            if isinstance(d, bool) or not isinstance(d, int) or d < 0:
                raise bad_request(f"{who}: shape must be non-negative integers, got {shape}", loc)
        count = math.prod(shape)
        if count > self.max_elements:
            dims = "×".join(map(str, shape))
            msg = f"{who} of shape {dims} has {count} elements; the limit is {self.max_elements}"
            raise ApiError(413, msg + " (CNN_MAX_ELEMENTS)", [(loc, msg)])
        return tuple(shape)

    def _binary(
        self, size: Any, shape: tuple[int, ...], count: int, dtype: np.dtype, who: str, loc: Loc
    ) -> np.ndarray:
        ploc = [*loc, "parameters", "binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad_request(f"{who}: binary_data_size must be a non-negative integer", ploc)
        expected = count * dtype.itemsize
        if size != expected:
            raise bad_request(
                f"{who}: binary_data_size is {size} bytes, but shape {list(shape)} of "
                f"{dtype.itemsize}-byte elements takes {expected}",
                ploc,
            )
        left = len(self.binary) - self.offset
        if size > left:
            raise bad_request(
                f"{who}: needs {size} bytes of binary data, but only {left} remain in the body "
                f"(after {self.offset} bytes of earlier inputs)",
                ploc,
            )
        array = np.frombuffer(self.binary, dtype=dtype, count=count, offset=self.offset)
        self.offset += size
        if not array.flags.aligned:  # e.g. an FP32 tensor after a header of odd length
            array = array.copy()
        return array.reshape(shape)

    def _data(
        self, data: Any, shape: tuple[int, ...], count: int, dtype: np.dtype, who: str, loc: Loc
    ) -> np.ndarray:
        if isinstance(data, np.ndarray):  # gRPC's typed contents: flat, already numbers
            return self._flat_array(data, shape, count, dtype, who, loc)
        if not isinstance(data, list):
            raise bad_request(f"{who}: data must be a flat or nested list of numbers", loc)
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
                f"{who}: data has shape {list(values.shape)}; the input's shape is "
                f"{list(shape)} (data may be flat or nested like the shape)",
                loc,
            )
        integral = dtype.kind in "iu"
        allowed = "iu" if integral else "iuf"
        if count and (
            values.dtype.kind not in allowed
            or (self.may_hold_bools and _holds_bool(data, values.ndim))
        ):
            what = "integers" if integral else "numbers"
            raise bad_request(f"{who}: data must be {what}", loc)
        if integral and count:
            info = np.iinfo(dtype)
            if values.min() < info.min or values.max() > info.max:
                raise bad_request(f"{who}: data does not fit {dtype.name}", loc)
        with np.errstate(over="ignore"):  # an overflow to inf is refused by the caller
            return values.astype(dtype.newbyteorder("="), copy=False).reshape(shape)

    @staticmethod
    def _flat_array(
        values: np.ndarray, shape: tuple[int, ...], count: int, dtype: np.dtype, who: str, loc: Loc
    ) -> np.ndarray:
        if values.ndim != 1 or values.size != count:
            raise bad_request(
                f"{who}: has {values.size} values; shape {list(shape)} needs {count}", loc
            )
        if values.dtype.kind == "b" and dtype.kind != "b":
            raise bad_request(f"{who}: data must be numbers", loc)
        if dtype.kind in "iu" and count:
            info = np.iinfo(dtype)
            if values.min() < info.min or values.max() > info.max:
                raise bad_request(f"{who}: data does not fit {dtype.name}", loc)
        with np.errstate(over="ignore"):  # an overflow to inf is refused by the caller
            return values.astype(dtype.newbyteorder("="), copy=False).reshape(shape)


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class OutputTensor:
    """One output to answer: its name, values, and whether it travels as binary data."""

    name: str
    array: np.ndarray
    binary: bool


def encode_response(
    head: dict[str, Any], outputs: list[OutputTensor]
) -> tuple[bytes, int | None, str]:
    """The response body, the JSON header's length (``None`` without binary outputs)
    and the content type.

    ``head`` holds the response's other members (``model_name``, ``id`` ...). A binary
    output is described with ``parameters.binary_data_size`` and its little-endian
    bytes follow the header, in order; the others carry flat ``data``.

    Raises
    ------
    ApiError
        400 naming an output that holds NaN or infinity and was asked for as JSON,
        which cannot carry them.
    """
    described: list[dict[str, Any]] = []
    chunks: list[Any] = []
    for out in outputs:
        arr = out.array
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": DATATYPE_OF[arr.dtype],
            "shape": list(arr.shape),
        }
        if out.binary:
            le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            entry["parameters"] = {"binary_data_size": le.nbytes}
            chunks.append(le.data)
        else:
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise bad_request(
                    f"output {_shown(out.name)} holds NaN or infinity, which JSON cannot "
                    "carry (inputs may be too large); ask for it with binary_data",
                    ["outputs", out.name],
                )
            entry["data"] = np.ascontiguousarray(arr).reshape(-1)
        described.append(entry)
    header = orjson.dumps({**head, "outputs": described}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None, JSON_MEDIA_TYPE
    return b"".join([header, *chunks]), len(header), BINARY_MEDIA_TYPE
