"""An inference request and response as values every transport shares, and the one
decoder from an input to an ndarray.

REST builds an :class:`InferRequest` from the JSON header and the binary bytes after it
(:mod:`service.wire.v2`); gRPC from a ``ModelInferRequest`` (``raw_input_contents`` as
bytes, typed ``contents`` as a list). :func:`decode_input` then checks each input the
same way whatever carried it: datatype, shape, the element limit before allocating,
the byte count against the shape, ragged lists, numbers only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import Loc, bad_request
from .checks import MAX_NDIM, check_elements, check_shape, from_bytes, from_numbers
from .checks import shown as _shown
from .datatypes import DATATYPES

#: The ``parameters`` key of a REST input whose bytes follow the JSON header.
BINARY_DATA_SIZE = "binary_data_size"


@dataclass
class InferInput:
    """One input as it arrived, unchecked.

    ``data`` is raw little-endian row-major bytes, a flat or nested list of numbers
    (JSON ``data`` or gRPC typed contents), or ``None`` when none was sent.
    """

    name: str
    datatype: str
    shape: Any  # as sent: checked by decode_input
    data: memoryview | bytes | list[Any] | None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    """One output asked for; ``binary`` ``None``: the request's default."""

    name: str
    binary: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    """An inference request, whatever transport carried it.

    ``outputs`` ``None``: the default outputs. ``binary_default``: whether outputs travel
    as raw bytes unless they say otherwise (REST's ``binary_data_output``; gRPC: raw
    when the inputs were raw). ``may_hold_bools``: ``False`` when the transport knows no
    list can hold a boolean (REST: the JSON has no ``true``/``false``), which skips a scan.
    """

    id: str | None
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_default: bool = False
    may_hold_bools: bool = True


@dataclass
class OutputTensor:
    """One output to answer: its values, and whether it travels as raw bytes."""

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray
    binary: bool


@dataclass
class InferResponse:
    """An inference response, whatever transport will carry it."""

    model_name: str
    model_version: str
    id: str | None
    outputs: list[OutputTensor]


def nbytes_fit(inp: InferInput) -> bool:
    """Whether a REST input's declared ``binary_data_size`` (if any) is the byte count of
    its datatype and shape."""
    declared = inp.parameters.get(BINARY_DATA_SIZE)
    if declared is None:
        return True
    dtype = DATATYPES.get(inp.datatype)
    shape = inp.shape
    if dtype is None or not isinstance(shape, list) or len(shape) > MAX_NDIM:
        return False
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return False
    return bool(declared == math.prod(shape) * dtype.itemsize)


def decode_input(
    inp: InferInput, index: int, max_elements: int, may_hold_bools: bool = True
) -> np.ndarray:
    """``inputs[index]`` as an ndarray of its datatype (native byte order), every size
    checked before anything is allocated.

    Raises
    ------
    service.errors.BadRequestError
        naming the input for a datatype the protocol does not define, a malformed shape,
        data that does not fit the shape, or a byte count that disagrees with it.
    service.errors.TooLargeError
        over ``max_elements``.
    """
    loc: Loc = ["inputs", index]
    who = f"input {_shown(inp.name)}"
    if inp.datatype not in DATATYPES:
        known = "BYTES is not supported" if inp.datatype == "BYTES" else "it is not a datatype"
        raise bad_request(
            f"{who}: datatype {_shown(inp.datatype)} cannot be read ({known}); "
            "send FP32, FP64, INT64 or INT32",
            [*loc, "datatype"],
        )
    dtype = DATATYPES[inp.datatype]
    shape = check_shape(inp.shape, who, [*loc, "shape"])
    check_elements(shape, max_elements, who, [*loc, "shape"])
    data = inp.data
    if data is None:
        raise bad_request(f"{who}: needs data, or parameters.binary_data_size", loc)
    if isinstance(data, list):
        return from_numbers(data, shape, dtype, who, [*loc, "data"], may_hold_bools=may_hold_bools)
    declared = inp.parameters.get(BINARY_DATA_SIZE)
    if declared is not None:  # REST: the declared size is checked before the bytes sliced
        ploc = [*loc, "parameters", BINARY_DATA_SIZE]
        expected = math.prod(shape) * dtype.itemsize
        if declared != expected:
            raise bad_request(
                f"{who}: binary_data_size is {declared} bytes, but shape {list(shape)} of "
                f"{dtype.itemsize}-byte elements takes {expected}",
                ploc,
            )
        if len(data) < declared:
            raise bad_request(
                f"{who}: needs {declared} bytes of binary data, but only {len(data)} remain "
                "in the body",
                ploc,
            )
    return from_bytes(data, shape, dtype, who, loc)
