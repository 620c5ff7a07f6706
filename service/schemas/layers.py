"""Layer descriptions on the wire, shared by ``/v1/shapes`` (and any route taking a stack).

Each model is tagged by ``"type"`` (a pydantic discriminated union, so an error
names the layer's own fields) and converts to the matching
:mod:`cnncore.network_shapes` spec with :meth:`spec`. Hyper-parameters reuse the
models of the single-layer routes: same names, defaults and bounds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag

from cnncore.network_shapes import (
    Conv2dSpec,
    FlattenSpec,
    LayerSpec,
    LinearSpec,
    Pool2dSpec,
    ReluSpec,
)

from .base import MAX_CHANNELS, Conv2dParams, IntOrPair, Pool2dParams, StrictModel

MAX_LAYERS = 256
MAX_FEATURES = 1 << 24

Bias = Annotated[bool, Field(strict=True, description="Whether the layer has a bias.")]


class Conv2dLayer(Conv2dParams):
    """A convolution; its input channels are those of the activation arriving at it."""

    type: Literal["conv2d"]
    out_channels: Annotated[int, Field(strict=True, ge=1, le=MAX_CHANNELS)] = Field(
        description="Number of filters F."
    )
    kernel_size: IntOrPair = Field(description="Kernel size: int or [kh, kw].")
    bias: Bias = True

    def spec(self) -> Conv2dSpec:
        return Conv2dSpec(**self.model_dump(exclude={"type"}))


class Pool2dLayer(Pool2dParams):
    """Max or average pooling."""

    type: Literal["pool2d"]

    def spec(self) -> Pool2dSpec:
        return Pool2dSpec(**self.model_dump(exclude={"type"}))


class ReluLayer(StrictModel):
    """Element-wise ``max(0, x)``."""

    type: Literal["relu"]

    def spec(self) -> ReluSpec:
        return ReluSpec()


class FlattenLayer(StrictModel):
    """``(N, D1..Dk)`` to ``(N, D1*...*Dk)``."""

    type: Literal["flatten"]

    def spec(self) -> FlattenSpec:
        return FlattenSpec()


class LinearLayer(StrictModel):
    """Fully connected; a 4-D input is flattened implicitly (as ``cnncore.linear_forward``)."""

    type: Literal["linear"]
    out_features: Annotated[int, Field(strict=True, ge=1, le=MAX_FEATURES)] = Field(
        description="Number of outputs M."
    )
    bias: Bias = True

    def spec(self) -> LinearSpec:
        return LinearSpec(out_features=self.out_features, bias=self.bias)


LAYER_TYPES = ("conv2d", "pool2d", "relu", "flatten", "linear")


def layer_tag(value: Any) -> str | None:
    """Discriminator of the layer unions: the layer's ``type`` with a ``-layer`` suffix.

    The suffix lets error locs drop the tag (problems._pydantic_loc removes union
    tags): ``["layers", 2, "kernel_size"]``, not ``["layers", 2, "conv2d", ...]``.
    """
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"{kind}-layer" if kind in LAYER_TYPES else None


def layer_union(conv2d: type, linear: type) -> Any:
    """The discriminated union of the five layer kinds, with the given conv2d and linear
    models (shape-only here; with weights in the network routes)."""
    return Annotated[
        Annotated[conv2d, Tag("conv2d-layer")]
        | Annotated[Pool2dLayer, Tag("pool2d-layer")]
        | Annotated[ReluLayer, Tag("relu-layer")]
        | Annotated[FlattenLayer, Tag("flatten-layer")]
        | Annotated[linear, Tag("linear-layer")],
        Discriminator(
            layer_tag,
            custom_error_type="layer_type",
            custom_error_message="a layer needs a 'type': one of " + ", ".join(LAYER_TYPES),
        ),
    ]


if TYPE_CHECKING:  # type checkers see the plain union; pydantic gets the tagged one
    Layer = Conv2dLayer | Pool2dLayer | ReluLayer | FlattenLayer | LinearLayer
else:
    Layer = layer_union(Conv2dLayer, LinearLayer)

Layers = Annotated[
    list[Layer],
    Field(min_length=1, max_length=MAX_LAYERS, description="The layers, input first."),
]


def specs(layers: list[Layer]) -> list[LayerSpec]:
    """The core descriptions of ``layers``."""
    return [layer.spec() for layer in layers]


class LayerShape(BaseModel):
    """One layer's shapes and costs."""

    type: str = Field(description="The layer's type.")
    input_shape: list[int]
    output_shape: list[int]
    param_count: int = Field(description="Weights plus biases.")
    macs: int = Field(description="Multiply-accumulates of the forward pass.")
    flops: int = Field(description="FLOPs of the forward pass (2 × MACs for conv and linear).")
    exact: bool = Field(description="Whether the output-size division was exact.")
    unused: list[int] = Field(description="Trailing input (rows, cols) no window covers.")
