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

import zlib
from typing import Any

import numpy as np
import orjson

from ..errors import TooLargeError, bad_request
from .checks import shown as _shown
from .infer import (
    BINARY_DATA_SIZE,
    InferInput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    nbytes_fit,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_MEDIA_TYPE = "application/json"
BINARY_MEDIA_TYPE = "application/octet-stream"

#: Most inputs and outputs a request may list.
MAX_INPUTS = 8
MAX_OUTPUTS = 4096


# --------------------------------------------------------------------------- requests


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding`` (``gzip`` or ``deflate``, as
    ``tritonclient``'s ``request_compression_algorithm`` sends it), inflated to at most
    ``limit`` bytes.

    Raises
    ------
    service.errors.TooLargeError
        when it inflates beyond ``limit`` (``CNN_MAX_BODY_BYTES``: a small body must
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
            raise TooLargeError(
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
    service.errors.BadRequestError
        when the header length is not a positive number of bytes within the body,
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


def rest_request(header: dict[str, Any], binary: memoryview, may_hold_bools: bool) -> InferRequest:
    """The :class:`InferRequest` of a JSON header and the binary bytes after it.

    Checks the request's structure (members' types, counts) and slices each binary
    input's declared bytes off ``binary``, in order; sizes against shapes are checked
    when the inputs are decoded (:func:`service.wire.infer.decode_input`).

    Raises
    ------
    service.errors.BadRequestError
        naming the member at fault, or for bytes that no input claims.
    """
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("id must be a string", ["id"])
    params = _object(header.get("parameters", {}), ["parameters"], "parameters")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise bad_request(
            "parameters.binary_data_output must be true or false",
            ["parameters", "binary_data_output"],
        )
    specs = header.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise bad_request("inputs must be a non-empty list", ["inputs"])
    if len(specs) > MAX_INPUTS:
        raise bad_request(f"inputs has {len(specs)} entries; a model takes at most 2", ["inputs"])
    offset = 0
    inputs: list[InferInput] = []
    for i, spec in enumerate(specs):
        inp, size = _input(spec, i)
        if size is not None:
            inp.data = binary[offset : offset + size]
            offset += size
        inputs.append(inp)
    left = len(binary) - offset
    # Unclaimed bytes are reported only when every declared size fits its shape: when one
    # does not, decoding that input says so, which names the actual fault.
    if left > 0 and all(nbytes_fit(inp) for inp in inputs):
        raise bad_request(
            f"the body has {left} bytes after the binary inputs' "
            f"{offset} bytes that no input's binary_data_size accounts for"
        )
    outputs = _outputs(header)
    return InferRequest(request_id, inputs, outputs, params, binary_default, may_hold_bools)


def _object(value: Any, loc: list[str | int], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{where} must be an object", loc)
    return value


def _input(spec: Any, i: int) -> tuple[InferInput, int | None]:
    """Input ``i`` of the header and, for a binary one, how many bytes it claims."""
    loc: list[str | int] = ["inputs", i]
    if not isinstance(spec, dict):
        raise bad_request(f"inputs[{i}] must be an object", loc)
    name = spec.get("name")
    if not isinstance(name, str):
        raise bad_request(f"inputs[{i}] needs a 'name' (a string)", [*loc, "name"])
    who = f"input {_shown(name)}"
    params = _object(spec.get("parameters", {}), [*loc, "parameters"], f"{who}: parameters")
    datatype = spec.get("datatype")
    inp = InferInput(
        name,
        datatype if isinstance(datatype, str) else repr(datatype)[:40],
        spec.get("shape"),
        spec.get("data"),
        params,
    )
    if BINARY_DATA_SIZE not in params:
        if "data" not in spec:
            raise bad_request(f"{who}: needs data, or parameters.binary_data_size", loc)
        if not isinstance(inp.data, list):
            raise bad_request(
                f"{who}: data must be a flat or nested list of numbers", [*loc, "data"]
            )
        return inp, None
    if "data" in spec:
        raise bad_request(f"{who}: has both data and binary_data_size; send one", loc)
    size = params[BINARY_DATA_SIZE]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise bad_request(
            f"{who}: binary_data_size must be a non-negative integer",
            [*loc, "parameters", BINARY_DATA_SIZE],
        )
    return inp, size


def _outputs(header: dict[str, Any]) -> list[RequestedOutput] | None:
    if "outputs" not in header:
        return None
    specs = header["outputs"]
    if not isinstance(specs, list) or len(specs) > MAX_OUTPUTS:
        raise bad_request(f"outputs must be a list of at most {MAX_OUTPUTS} entries", ["outputs"])
    outputs = []
    for i, spec in enumerate(specs):
        loc: list[str | int] = ["outputs", i]
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad_request(f"outputs[{i}] must be an object with a 'name'", loc)
        params = _object(
            spec.get("parameters", {}), [*loc, "parameters"], f"outputs[{i}].parameters"
        )
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise bad_request(
                f"outputs[{i}].parameters.binary_data must be true or false",
                [*loc, "parameters", "binary_data"],
            )
        outputs.append(RequestedOutput(spec["name"], binary, params))
    return outputs


# --------------------------------------------------------------------------- responses


def encode_response(response: InferResponse) -> tuple[bytes, int | None, str]:
    """The response body, the JSON header's length (``None`` without binary outputs)
    and the content type.

    A binary
    output is described with ``parameters.binary_data_size`` and its little-endian
    bytes follow the header, in order; the others carry flat ``data``.

    Raises
    ------
    service.errors.BadRequestError
        naming an output that holds NaN or infinity and was asked for as JSON,
        which cannot carry them.
    """
    described: list[dict[str, Any]] = []
    chunks: list[Any] = []
    for out in response.outputs:
        arr = out.array
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
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
    head: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id is not None:
        head["id"] = response.id
    header = orjson.dumps({**head, "outputs": described}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None, JSON_MEDIA_TYPE
    return b"".join([header, *chunks]), len(header), BINARY_MEDIA_TYPE
