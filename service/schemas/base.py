"""Request and response models shared by the routes (pydantic v2, strict types).

Hyper-parameters are strict: ``"stride": true`` or ``"stride": "2"`` is a 422, never
a silent conversion. Tensor fields validate straight to ``numpy.ndarray``
(:mod:`service.tensors`). Responses are written by orjson from plain dicts and
numpy arrays; the response models below document them in OpenAPI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..wire.v1 import DTYPES, TENSOR_RESPONSE_SCHEMA, Encoding, list_dtype_scope

MAX_KERNEL = 1024
MAX_PAD = 1024
MAX_CHANNELS = 65536


def _describe(value: Any) -> str:
    """A short description of a JSON value for error messages (never the whole value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 24 else f"a number of {len(text)} characters"
    if isinstance(value, str):
        return repr(value) if len(value) <= 24 else f"a string of {len(value)} characters"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def _one_of(expected: str) -> WrapValidator:
    """One message for a union that failed, instead of one per alternative."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "union_mismatch",
                "expected {expected}, got {got}",
                {"expected": expected, "got": _describe(value)},
            ) from None

    return WrapValidator(validate)


PosInt = Annotated[int, Field(strict=True, ge=1, le=MAX_KERNEL)]
NonNegInt = Annotated[int, Field(strict=True, ge=0, le=MAX_PAD)]
IntOrPair = Annotated[
    PosInt | tuple[PosInt, PosInt],
    _one_of(f"an integer from 1 to {MAX_KERNEL} or a pair [h, w] of them"),
]
ConvPadding = Annotated[
    NonNegInt
    | tuple[NonNegInt, NonNegInt]
    | tuple[NonNegInt, NonNegInt, NonNegInt, NonNegInt]
    | Literal["same", "valid"],
    _one_of(
        f"an integer from 0 to {MAX_PAD}, [ph, pw], [top, bottom, left, right], 'same' or 'valid'"
    ),
]
PoolPadding = Annotated[
    NonNegInt | tuple[NonNegInt, NonNegInt],
    _one_of(f"an integer from 0 to {MAX_PAD} or a pair [ph, pw] of them"),
]


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo such as ``"strides"`` must not be ignored."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class Conv2dParams(StrictModel):
    """Convolution hyper-parameters (PyTorch's ``F.conv2d`` semantics)."""

    stride: IntOrPair = Field(1, description="Step between windows: int or [sh, sw].")
    padding: ConvPadding = Field(
        0,
        description="Zero padding: int, [ph, pw], [top, bottom, left, right], 'same' "
        "(stride 1 only; the extra pixel goes bottom/right) or 'valid'.",
    )
    dilation: IntOrPair = Field(1, description="Spacing between kernel taps: int or [dh, dw].")
    groups: Annotated[int, Field(strict=True, ge=1, le=MAX_CHANNELS)] = Field(
        1, description="Channel groups; C and F must both be divisible by it."
    )


class Pool2dParams(StrictModel):
    """Pooling hyper-parameters (PyTorch's ``F.max_pool2d`` / ``F.avg_pool2d`` semantics)."""

    mode: Literal["max", "avg"] = Field("max", description="Max or average pooling.")
    kernel_size: IntOrPair = Field(description="Window size: int or [kh, kw].")
    stride: IntOrPair | None = Field(
        None, description="Step between windows: int or [sh, sw]; null means kernel_size."
    )
    padding: PoolPadding = Field(
        0,
        description="Symmetric padding: int or [ph, pw], at most half the kernel. Max pooling "
        "pads with -infinity, average pooling with zeros.",
    )
    ceil_mode: bool = Field(
        False, strict=True, description="Ceiling instead of floor for the output size."
    )
    count_include_pad: bool = Field(
        True, strict=True, description="Average pooling: whether padded cells count in the divisor."
    )


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
        # Nested-list tensors (in nested models too: a network's layers[i].w) decode
        # straight to the request's dtype, checked finite in it: no float64 copy to recast.
        dtype = data.get("dtype") if isinstance(data, dict) else None
        if not isinstance(dtype, str) or dtype not in DTYPES:  # handler reports a bad one
            return handler(data)
        with list_dtype_scope(DTYPES[dtype]):
            return handler(data)


#: A tensor in a response (documents both encodings).
TensorResponse = Annotated[Any, Field(json_schema_extra=TENSOR_RESPONSE_SCHEMA)]


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
