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
from typing import Any

import numpy as np
from fastapi import Request
from starlette.responses import Response

import cnncore
from cnncore import LayerInfo
from cnncore.network import Layer, Loss, NetworkCache
from cnncore.network_shapes import LayerError

from ..dataplane import dataplane_of, network_budget, probabilities
from ..problems import from_cnn_error, invalid, problem_responses
from ..routing import JSONResponse, make_router
from ..schemas.network import (
    MseLoss,
    NetworkBackwardRequest,
    NetworkBackwardResponse,
    NetworkForwardRequest,
    NetworkForwardResponse,
    SoftmaxCrossEntropyLoss,
    core_layer,
)
from ..wire.datatypes import v1_name
from ..wire.v1 import Encoding
from .common import encode, encode_all

router = make_router(prefix="/v1/network", tags=["network"])

# --------------------------------------------------------------------------- shared


def layer_infos(x_shape: Sequence[int], layers: Sequence[Layer]) -> list[LayerInfo]:
    """:func:`cnncore.network_info`, with errors as 422 problems located at the layer."""
    try:
        return cnncore.network_info(x_shape, layers)
    except LayerError as exc:
        raise from_cnn_error(exc, ["layers", exc.index]) from None
    except cnncore.CnnError as exc:
        raise from_cnn_error(exc) from None


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
        self.flops, work = network_budget(self.layers, req.x.shape, _itemsize(req), backward)
        dataplane_of(request.app).check_budget(self.flops, work)

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
            "dtype": v1_name(out.dtype),
            "compute_ms": round(ms, 3),
        }

    def extras(
        self, cache: NetworkCache, enc: Encoding, return_activations: bool
    ) -> dict[str, Any]:
        """Probabilities, predictions and activations, as asked."""
        body: dict[str, Any] = {}
        out = cache.activations[-1]
        if self.probabilities:
            body["probabilities"] = encode(probabilities(out), enc, "probabilities")
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
async def network_forward(req: NetworkForwardRequest, request: Request) -> Response:
    """Run the layers in order on ``x``; with a loss, its value (and for softmax
    cross-entropy the probabilities and predictions)."""
    plan = _Plan(req, request, backward=False)
    plane = dataplane_of(request.app)

    def answer() -> Response:
        (out, cache, loss), ms = plane.run(_forward, req.x, plan.layers, plan.loss)
        return JSONResponse(
            {
                "out": encode(out, req.encoding, "out"),
                "loss": _loss_value(loss),
                **plan.extras(cache, req.encoding, req.return_activations),
                "meta": plan.meta(out, ms),
            }
        )

    return await plane.run_async(plan.flops, answer)


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
async def network_backward(req: NetworkBackwardRequest, request: Request) -> Response:
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
    plane = dataplane_of(request.app)

    def answer() -> Response:
        (dx, grads, cache, loss), ms = plane.run(_backward, req.x, plan.layers, plan.loss, req.dout)
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

    return await plane.run_async(plan.flops, answer)
