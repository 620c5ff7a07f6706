"""The ``/v1/network`` request and response models: the layers of ``/v1/shapes`` with
their weights, and the losses. ``model.json`` (:mod:`service.models.native`) reads the
same layers, so they live here, below the routes and the model repository.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag

import cnncore
from cnncore.network import Layer

from ..wire.v1 import Tensor
from .base import Conv2dParams, StrictModel, TensorRequest, TensorResponse
from .layers import FlattenLayer, LayerShape, Pool2dLayer, ReluLayer, layer_union

MAX_NETWORK_LAYERS = 64
MAX_LABELS = 1 << 24
MAX_CLASS = 1 << 24


# --------------------------------------------------------------------------- requests


class Conv2dWeightsLayer(Conv2dParams):
    """A convolution with its weights; the number of filters and the kernel come from ``w``."""

    type: Literal["conv2d"]
    w: Tensor = Field(description="Weights, shape (F, C // groups, KH, KW).")
    b: Tensor | None = Field(None, description="Bias, shape (F,), or null.")


class LinearWeightsLayer(StrictModel):
    """A fully connected layer with its weights; a 4-D input is flattened implicitly."""

    type: Literal["linear"]
    w: Tensor = Field(description="Weights, shape (D, M), D the features per sample arriving.")
    b: Tensor | None = Field(None, description="Bias, shape (M,), or null.")


if TYPE_CHECKING:  # type checkers see the plain union; pydantic gets the tagged one
    NetworkLayer = Conv2dWeightsLayer | Pool2dLayer | ReluLayer | FlattenLayer | LinearWeightsLayer
else:
    NetworkLayer = layer_union(Conv2dWeightsLayer, LinearWeightsLayer)


class SoftmaxCrossEntropyLoss(StrictModel):
    """Mean softmax cross-entropy over the batch; the output must be ``(N, classes)``."""

    type: Literal["softmax_cross_entropy"]
    y: Annotated[
        list[Annotated[int, Field(strict=True, ge=0, le=MAX_CLASS)]],
        Field(min_length=1, max_length=MAX_LABELS),
    ] = Field(description="Class labels, one per sample: 0 <= y[i] < classes.")


class MseLoss(StrictModel):
    """``mean((out - target)^2)`` over all elements of the output."""

    type: Literal["mse"]
    target: Tensor = Field(description="Target, the shape of the network output.")


LOSS_TYPES = ("softmax_cross_entropy", "mse")


def _loss_tag(value: Any) -> str | None:
    # "-loss" suffix: dropped from error locs like the layers' tags.
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"{kind}-loss" if kind in LOSS_TYPES else None


NetworkLoss = Annotated[
    Annotated[SoftmaxCrossEntropyLoss, Tag("softmax_cross_entropy-loss")]
    | Annotated[MseLoss, Tag("mse-loss")],
    Discriminator(
        _loss_tag,
        custom_error_type="loss_type",
        custom_error_message="a loss needs a 'type': one of " + ", ".join(LOSS_TYPES),
    ),
]


def _example_network() -> dict[str, Any]:
    """A LeNet-shaped network small enough to read: conv, relu, pool, conv, relu, flatten,
    linear, relu, linear on a 1×1×10×10 image (fixed numbers, rounded for the docs)."""
    rng = np.random.default_rng(5)

    def t(*shape: int, scale: float = 0.5) -> Any:
        return np.round(rng.uniform(-scale, scale, shape), 2).tolist()

    return {
        "x": t(1, 1, 10, 10, scale=1.0),
        "layers": [
            {"type": "conv2d", "w": t(2, 1, 3, 3), "b": t(2), "padding": 1},
            {"type": "relu"},
            {"type": "pool2d", "mode": "max", "kernel_size": 2},
            {"type": "conv2d", "w": t(3, 2, 2, 2), "b": t(3), "stride": 2},
            {"type": "relu"},
            {"type": "flatten"},
            {"type": "linear", "w": t(12, 6), "b": t(6)},
            {"type": "relu"},
            {"type": "linear", "w": t(6, 3), "b": t(3)},
        ],
        "loss": {"type": "softmax_cross_entropy", "y": [2]},
    }


EXAMPLE = _example_network()


class NetworkForwardRequest(TensorRequest):
    """An input and a stack of layers with their weights."""

    x: Tensor = Field(description="Input, shape (N, C, H, W) (or (N, D...) without conv/pool).")
    layers: Annotated[list[NetworkLayer], Field(min_length=1, max_length=MAX_NETWORK_LAYERS)] = (
        Field(description="The layers, input first.")
    )
    loss: NetworkLoss | None = Field(None, description="A loss on the network output, or null.")
    return_activations: StrictBool = Field(
        False, description="Also answer every layer's output, in order."
    )
    return_probabilities: StrictBool = Field(
        False,
        description="Answer softmax probabilities and argmax predictions of a 2-D output "
        "(always done with a softmax cross-entropy loss).",
    )

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})


class NetworkBackwardRequest(NetworkForwardRequest):
    """A network and either a loss or the gradient ``dout`` of its output."""

    dout: Tensor | None = Field(
        None, description="Gradient with respect to the network output (when there is no loss)."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {**EXAMPLE, "encoding": "list"},
                {**EXAMPLE, "loss": None, "dout": [[1.0, -0.5, 0.25]]},
            ]
        }
    )


# --------------------------------------------------------------------------- responses


class NetworkMeta(BaseModel):
    """What the network did, from shapes, plus how long it took."""

    layers: list[LayerShape] = Field(description="Each layer's shapes and forward costs.")
    input_shape: list[int]
    output_shape: list[int]
    total_params: int
    total_flops: int = Field(
        description="FLOPs of this request: the forward pass, ×3 for backward (forward, dx, dw)."
    )
    dtype: Literal["float32", "float64"]
    compute_ms: float


class NetworkForwardResponse(BaseModel):
    """The network's output, loss and, when asked, probabilities and activations."""

    out: TensorResponse = Field(description="The last layer's output.")
    loss: float | None = Field(description="The loss, or null without one.")
    probabilities: TensorResponse | None = Field(
        None, description="softmax(out), row by row (with a cross-entropy loss, or when asked)."
    )
    predictions: list[int] | None = Field(None, description="argmax of each row of out.")
    activations: list[TensorResponse] | None = Field(
        None, description="Every layer's output, in order (when asked)."
    )
    meta: NetworkMeta


class LayerGrads(BaseModel):
    """Gradients of one layer's parameters: empty for layers without any."""

    dw: TensorResponse | None = Field(None, description="Gradient with respect to w.")
    db: TensorResponse | None = Field(None, description="Gradient with respect to b, or null.")


class NetworkBackwardResponse(BaseModel):
    """Gradients with respect to the input and every layer's parameters."""

    loss: float | None = Field(description="The loss, or null when dout was given.")
    dx: TensorResponse = Field(description="Gradient with respect to x (x's shape).")
    grads: list[LayerGrads] = Field(
        description="One object per layer, in order: {dw, db} for conv2d and linear, {} else."
    )
    probabilities: TensorResponse | None = None
    predictions: list[int] | None = None
    activations: list[TensorResponse] | None = None
    meta: NetworkMeta


def core_layer(layer: Any) -> Layer:
    """The :mod:`cnncore.network` layer of a wire layer."""
    if isinstance(layer, Conv2dWeightsLayer):
        params = layer.model_dump(include=set(Conv2dParams.model_fields))
        return cnncore.Conv2d(layer.w, layer.b, **params)
    if isinstance(layer, LinearWeightsLayer):
        return cnncore.Linear(layer.w, layer.b)
    spec: Layer = layer.spec()
    return spec
