"""Pieces the computing routes share: response models, tensor encoding, ``meta``."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from cnncore import LayerInfo

from ..problems import invalid
from ..schemas import Meta, TensorResponse
from ..wire.datatypes import v1_name
from ..wire.v1 import Encoding, encode_tensor


class ForwardResponse(BaseModel):
    """Output of a forward pass."""

    out: TensorResponse = Field(description="The layer's output.")
    meta: Meta


class BackwardResponse(BaseModel):
    """Gradients of a backward pass."""

    dx: TensorResponse = Field(description="Gradient with respect to x (x's shape).")
    dw: TensorResponse = Field(description="Gradient with respect to w (w's shape).")
    db: TensorResponse | None = Field(description="Gradient with respect to b, or null.")
    meta: Meta


def encode(arr: np.ndarray, encoding: Encoding, name: str) -> Any:
    """Encode a result tensor; a non-finite result is a 422 naming it."""
    try:
        return encode_tensor(arr, encoding)
    except ValueError as exc:
        raise invalid([name], str(exc)) from None


def encode_all(encoding: Encoding, **arrays: np.ndarray | None) -> dict[str, Any]:
    """Encode several result tensors by name; ``None`` (``db`` without ``b``) stays null."""
    return {k: None if a is None else encode(a, encoding, k) for k, a in arrays.items()}


def meta(info: LayerInfo, out: np.ndarray, ms: float, *, flops: int | None = None) -> dict:
    """The ``meta`` object of a response."""
    return {
        "input_shape": list(info.input_shape),
        "output_shape": list(info.output_shape),
        "dtype": v1_name(out.dtype),
        "param_count": info.param_count,
        "macs": info.macs,
        "flops": info.flops if flops is None else flops,
        "exact": info.exact,
        "unused": list(info.unused),
        "compute_ms": round(ms, 3),
    }
