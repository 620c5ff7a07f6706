"""Request and response models shared by the routes (pydantic v2, strict types).

Hyper-parameters are strict: ``"stride": true`` or ``"stride": "2"`` is a 422, never
a silent conversion. Tensor fields validate straight to ``numpy.ndarray``
(:mod:`service.tensors`). Responses are written by orjson from plain dicts and
numpy arrays; the response models below document them in OpenAPI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    model_validator,
)

from .tensors import DTYPES, TENSOR_SCHEMA, Encoding

MAX_KERNEL = 1024
MAX_PAD = 1024

PosInt = Annotated[int, Field(strict=True, ge=1, le=MAX_KERNEL)]
NonNegInt = Annotated[int, Field(strict=True, ge=0, le=MAX_PAD)]
IntOrPair = PosInt | tuple[PosInt, PosInt]
ConvPadding = (
    NonNegInt
    | tuple[NonNegInt, NonNegInt]
    | tuple[NonNegInt, NonNegInt, NonNegInt, NonNegInt]
    | Literal["same", "valid"]
)
PoolPadding = NonNegInt | tuple[NonNegInt, NonNegInt]


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo such as ``"strides"`` must not be ignored."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class TensorRequest(StrictModel):
    """Fields every request with tensors accepts."""

    dtype: Literal["float32", "float64"] | None = Field(
        None,
        description="dtype of tensors sent as nested lists (default float64). Tensors in "
        "object form carry their own dtype.",
    )
    encoding: Encoding = Field(
        "list", description="How tensors in the response are encoded: nested lists or b64."
    )

    @model_validator(mode="wrap")
    @classmethod
    def _list_dtype(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        # Nested-list tensors decode to float64; cast them once the request's dtype is known.
        model = handler(data)
        if isinstance(data, dict) and data.get("dtype") == "float32":
            model._cast_lists(data)
        return model

    def _cast_lists(self, raw: dict[str, Any]) -> None:
        for name, value in raw.items():
            if isinstance(value, list) and isinstance(getattr(self, name, None), np.ndarray):
                setattr(self, name, getattr(self, name).astype(DTYPES["float32"]))


#: A tensor in a response (documents both encodings).
TensorResponse = Annotated[Any, Field(json_schema_extra=TENSOR_SCHEMA)]


class Meta(BaseModel):
    """What a computation did, from shapes, plus how long it took."""

    input_shape: list[int] = Field(description="Shape of `x`.")
    output_shape: list[int] = Field(description="Shape of the forward output.")
    dtype: Literal["float32", "float64"] = Field(description="dtype of the computation.")
    param_count: int = Field(description="Trainable parameters (weights + biases).")
    macs: int = Field(description="Multiply-accumulates of the forward pass.")
    flops: int = Field(description="FLOPs of this request (2 × MACs; backward counts both).")
    exact: bool = Field(
        description="Whether the output-size division was exact. When false, the last "
        "`unused` input rows/columns are not covered by any window."
    )
    unused: list[int] = Field(description="Trailing input (rows, cols) no window covers.")
    compute_ms: float = Field(description="Wall time of the computation in milliseconds.")
