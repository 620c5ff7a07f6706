"""POST /v1/network/forward and /v1/network/backward: a whole network in one call.

Layers are those of ``/v1/shapes`` with their weights: conv2d and linear carry
``w`` and ``b``; pool2d, relu and flatten are the same objects as there. The
network is checked from shapes (:func:`cnncore.network_info`) and against the
FLOP and memory budgets before anything is computed; errors name the layer
(``loc`` like ``["layers", 3, "w"]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag
from starlette.responses import Response

import cnncore
from cnncore import LayerInfo
from cnncore.network import Layer, Loss, NetworkCache
from cnncore.network_shapes import LayerError

from ..compute import check_budget, run
from ..layers import FlattenLayer, Pool2dLayer, ReluLayer, layer_union
from ..problems import from_cnn_error, invalid, problem_responses
from ..routing import JSONResponse, make_router, settings_of, slots_of
from ..schemas import Conv2dParams, StrictModel, TensorRequest, TensorResponse
from ..wire.v1 import Encoding, Tensor
from .common import encode, encode_all
from .shapes import LayerShape

router = make_router(prefix="/v1/network", tags=["network"])

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


# --------------------------------------------------------------------------- shared


def core_layer(layer: Any) -> Layer:
    """The :mod:`cnncore.network` layer of a wire layer."""
    if isinstance(layer, Conv2dWeightsLayer):
        params = layer.model_dump(include=set(Conv2dParams.model_fields))
        return cnncore.Conv2d(layer.w, layer.b, **params)
    if isinstance(layer, LinearWeightsLayer):
        return cnncore.Linear(layer.w, layer.b)
    spec: Layer = layer.spec()
    return spec


def layer_infos(x_shape: Sequence[int], layers: Sequence[Layer]) -> list[LayerInfo]:
    """:func:`cnncore.network_info`, with errors as 422 problems located at the layer."""
    try:
        return cnncore.network_info(x_shape, layers)
    except LayerError as exc:
        raise from_cnn_error(exc, ["layers", exc.index]) from None
    except cnncore.CnnError as exc:
        raise from_cnn_error(exc) from None


def budget(infos: Sequence[LayerInfo], itemsize: int, backward: bool) -> tuple[int, int]:
    """FLOPs and working-memory bytes of running ``infos`` forward (and backward).

    Every layer's input, output, parameters and largest buffer (a convolution's
    im2col columns, a max pooling's window copy) stay alive until the backward
    pass, so they add up; a backward pass is counted as three passes (forward,
    dx, dw), like the single-layer routes.
    """
    passes = 3 if backward else 1
    flops = passes * sum(info.flops for info in infos)
    elements = 0
    for info in infos:
        buffer = info.macs // info.output_shape[1] if info.macs else info.flops
        elements += math.prod(info.input_shape) + math.prod(info.output_shape)
        elements += info.param_count + buffer
    return flops, passes * elements * itemsize


def _itemsize(req: NetworkForwardRequest) -> int:
    arrays = [req.x] + [
        a for layer in req.layers for a in (getattr(layer, "w", None), getattr(layer, "b", None))
    ]
    return max(a.itemsize for a in arrays if a is not None)


def _core_loss(loss: SoftmaxCrossEntropyLoss | MseLoss | None) -> Loss | None:
    if isinstance(loss, SoftmaxCrossEntropyLoss):
        return cnncore.SoftmaxCrossEntropy(np.asarray(loss.y, dtype=np.int64))
    if isinstance(loss, MseLoss):
        return cnncore.MeanSquaredError(loss.target)
    return None


class _Plan:
    """A request checked from shapes and against the budgets: ready to compute."""

    def __init__(self, req: NetworkForwardRequest, request: Request, *, backward: bool) -> None:
        self.layers = [core_layer(layer) for layer in req.layers]
        self.infos = layer_infos(req.x.shape, self.layers)
        self.out_shape = self.infos[-1].output_shape
        self.loss = _core_loss(req.loss)
        if self.loss is not None:
            try:
                cnncore.network.check_loss(self.loss, self.out_shape)
            except cnncore.CnnError as exc:
                raise from_cnn_error(exc, ["loss"]) from None
        self.probabilities = req.return_probabilities or isinstance(
            self.loss, cnncore.SoftmaxCrossEntropy
        )
        if req.return_probabilities and len(self.out_shape) != 2:
            raise invalid(
                ["return_probabilities"],
                f"probabilities need a 2-D output (N, classes); the network output has "
                f"shape {self.out_shape}",
            )
        self.flops, work = budget(self.infos, _itemsize(req), backward)
        check_budget(settings_of(request), self.flops, work)

    def meta(self, out: np.ndarray, ms: float) -> dict[str, Any]:
        return {
            "layers": [
                {"type": layer.type, **info.as_dict()}
                for layer, info in zip(self.layers, self.infos, strict=True)
            ],
            "input_shape": list(self.infos[0].input_shape),
            "output_shape": list(self.out_shape),
            "total_params": sum(info.param_count for info in self.infos),
            "total_flops": self.flops,
            "dtype": out.dtype.name,
            "compute_ms": round(ms, 3),
        }

    def extras(
        self, cache: NetworkCache, enc: Encoding, return_activations: bool
    ) -> dict[str, Any]:
        """Probabilities, predictions and activations, as asked."""
        body: dict[str, Any] = {}
        out = cache.activations[-1]
        if self.probabilities:
            body["probabilities"] = encode(np.exp(cnncore.log_softmax(out)), enc, "probabilities")
            body["predictions"] = np.argmax(out, axis=1).tolist()
        if return_activations:
            body["activations"] = [encode(a, enc, "activations") for a in cache.activations]
        return body


def _loss_value(value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise invalid(["loss"], "the loss is not finite (overflow); inputs may be too large")
    return float(value) + 0.0  # a plain float, and -0.0 (from -log(1)) reads as 0.0


# --------------------------------------------------------------------------- routes


def _forward(
    x: np.ndarray, layers: list[Layer], loss: Loss | None
) -> tuple[np.ndarray, NetworkCache, float | None]:
    out, cache = cnncore.network_forward(x, layers)
    value = None if loss is None else cnncore.network_loss(out, loss)[0]
    return out, cache, value


@router.post(
    "/forward",
    response_model=NetworkForwardResponse,
    responses=problem_responses(400, 413, 422, 503),
    summary="Network forward: output, loss, probabilities",
)
def network_forward(req: NetworkForwardRequest, request: Request) -> Response:
    """Run the layers in order on ``x``; with a loss, its value (and for softmax
    cross-entropy the probabilities and predictions)."""
    plan = _Plan(req, request, backward=False)
    (out, cache, loss), ms = run(slots_of(request), _forward, req.x, plan.layers, plan.loss)
    return JSONResponse(
        {
            "out": encode(out, req.encoding, "out"),
            "loss": _loss_value(loss),
            **plan.extras(cache, req.encoding, req.return_activations),
            "meta": plan.meta(out, ms),
        }
    )


def _backward(
    x: np.ndarray, layers: list[Layer], loss: Loss | None, dout: np.ndarray | None
) -> tuple[np.ndarray, list[dict[str, np.ndarray | None]], NetworkCache, float | None]:
    out, cache = cnncore.network_forward(x, layers)
    value = None
    if loss is not None:
        value, dout = cnncore.network_loss(out, loss)
    dx, grads = cnncore.network_backward(dout, cache)
    return dx, grads, cache, value


@router.post(
    "/backward",
    response_model=NetworkBackwardResponse,
    responses=problem_responses(400, 413, 422, 503),
    summary="Network backward: gradients of every parameter",
)
def network_backward(req: NetworkBackwardRequest, request: Request) -> Response:
    """Gradients of the loss (or of ``sum(out * dout)``) with respect to ``x`` and to
    every layer's ``w`` and ``b``."""
    if (req.loss is None) == (req.dout is None):
        which = "neither" if req.loss is None else "both"
        raise invalid(["dout"], f"backward needs exactly one of loss and dout; got {which}")
    plan = _Plan(req, request, backward=True)
    if req.dout is not None and req.dout.shape != plan.out_shape:
        raise invalid(
            ["dout"],
            f"dout has shape {req.dout.shape} but the network output has shape {plan.out_shape}",
        )
    (dx, grads, cache, loss), ms = run(
        slots_of(request), _backward, req.x, plan.layers, plan.loss, req.dout
    )
    enc = req.encoding
    return JSONResponse(
        {
            "loss": _loss_value(loss),
            "dx": encode(dx, enc, "dx"),
            "grads": [encode_all(enc, **grad) for grad in grads],
            **plan.extras(cache, enc, req.return_activations),
            "meta": plan.meta(cache.activations[-1], ms),
        }
    )
