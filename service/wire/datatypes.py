"""The one datatype table: the Open Inference Protocol's names, numpy dtypes and the
``/v1`` names, side by side.

Every datatype with a fixed element size can be read; the service computes in FP32 or
FP64 and answers in those and the integer label types.
"""

from __future__ import annotations

import numpy as np

#: V2 name -> little-endian numpy dtype, for every fixed-size datatype of the protocol.
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

#: The datatypes a model computes in (its input's datatype).
FLOAT_DATATYPES = ("FP32", "FP64")
#: The datatypes class labels may come in.
LABEL_DATATYPES = ("INT64", "INT32")

#: ``/v1`` name (a request's ``dtype``) -> V2 name.
V1_NAMES: dict[str, str] = {"float32": "FP32", "float64": "FP64"}
#: ``/v1`` name -> little-endian numpy dtype.
V1_DTYPES: dict[str, np.dtype] = {v1: DATATYPES[v2] for v1, v2 in V1_NAMES.items()}

#: Native-order numpy dtype -> V2 name, for the dtypes the service answers in.
DATATYPE_OF: dict[np.dtype, str] = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
}


def v2_name(dtype: np.dtype) -> str:
    """The V2 name of an array's dtype (``KeyError`` for one the service never answers in)."""
    return DATATYPE_OF[np.dtype(dtype).newbyteorder("=")]


#: Native-order numpy dtype -> ``/v1`` name (``dtype.name`` costs ~5 µs a call).
V1_NAME_OF: dict[np.dtype, str] = {dt.newbyteorder("="): v1 for v1, dt in V1_DTYPES.items()}


def v1_name(dtype: np.dtype) -> str:
    """The ``/v1`` name of a result's dtype (``"float32"``, ``"float64"``)."""
    name = V1_NAME_OF.get(dtype)
    return name if name is not None else np.dtype(dtype).name
