"""POST /v1/conv2d/forward and /v1/conv2d/backward."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import ConfigDict, Field
from starlette.responses import Response

import cnncore

from ..dataplane import dataplane_of, network_budget
from ..problems import problem_responses
from ..routing import JSONResponse, make_router
from ..schemas import Conv2dParams, TensorRequest
from ..wire.v1 import Tensor
from .common import BackwardResponse, ForwardResponse, encode, encode_all, meta

router = make_router(prefix="/v1/conv2d", tags=["conv2d"])

EXAMPLE: dict[str, Any] = {
    "x": [[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]],
    "w": [[[[1, 0], [0, -1]]]],
    "b": [0.5],
    "stride": 1,
    "padding": 0,
}


class Conv2dForwardRequest(TensorRequest, Conv2dParams):
    """Inputs of a convolution."""

    x: Tensor = Field(description="Input, shape (N, C, H, W).")
    w: Tensor = Field(description="Weights, shape (F, C // groups, KH, KW).")
    b: Tensor | None = Field(None, description="Bias, shape (F,), or null.")

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})


class Conv2dBackwardRequest(Conv2dForwardRequest):
    """Inputs of a convolution plus the upstream gradient."""

    dout: Tensor = Field(description="Upstream gradient, shape (N, F, H', W').")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{**EXAMPLE, "dout": [[[[1, 2], [3, 4]]]]}]}
    )


def _conv_kwargs(req: Conv2dForwardRequest) -> dict:
    return req.model_dump(include=set(Conv2dParams.model_fields))


def _geometry(req: Conv2dForwardRequest) -> cnncore.geometry.Conv2dGeometry:
    return cnncore.conv2d_geometry(
        req.x.shape, req.w.shape, bias=req.b is not None, **_conv_kwargs(req)
    )


def _work_bytes(req: Conv2dForwardRequest, backward: bool) -> int:
    """The measured working-memory estimate of this convolution (one-layer network)."""
    layer = cnncore.Conv2d(req.w, req.b, **_conv_kwargs(req))
    return network_budget([layer], req.x.shape, _itemsize(req), backward)[1]


def _itemsize(req: Conv2dForwardRequest) -> int:
    return max(a.itemsize for a in (req.x, req.w, req.b) if a is not None)


@router.post(
    "/forward",
    response_model=ForwardResponse,
    responses=problem_responses(400, 413, 422, 503),
    summary="Convolution forward",
)
async def conv2d_forward(req: Conv2dForwardRequest, request: Request) -> Response:
    """``out = x ⋆ w + b`` (cross-correlation, as in PyTorch and the tutorial)."""
    geo = _geometry(req)
    plane = dataplane_of(request.app)
    plane.check_budget(geo.info.flops, _work_bytes(req, backward=False))

    def answer() -> Response:
        (out, _), ms = plane.run(cnncore.conv2d_forward, req.x, req.w, req.b, **_conv_kwargs(req))
        body = {"out": encode(out, req.encoding, "out"), "meta": meta(geo.info, out, ms)}
        return JSONResponse(body)

    return await plane.run_async(geo.info.flops, answer)


def _conv_backward(req: Conv2dBackwardRequest) -> tuple:
    out, cache = cnncore.conv2d_forward(req.x, req.w, req.b, **_conv_kwargs(req))
    return (*cnncore.conv2d_backward(req.dout, cache), out)


@router.post(
    "/backward",
    response_model=BackwardResponse,
    responses=problem_responses(400, 413, 422, 503),
    summary="Convolution backward",
)
async def conv2d_backward(req: Conv2dBackwardRequest, request: Request) -> Response:
    """Gradients of the loss with respect to ``x``, ``w`` and ``b`` given ``dout``."""
    geo = _geometry(req)
    flops = 3 * geo.info.flops  # forward (for the cache), dx and dw
    plane = dataplane_of(request.app)
    plane.check_budget(flops, _work_bytes(req, backward=True))

    def answer() -> Response:
        (dx, dw, db, out), ms = plane.run(_conv_backward, req)
        grads = encode_all(req.encoding, dx=dx, dw=dw, db=db)
        return JSONResponse({**grads, "meta": meta(geo.info, out, ms, flops=flops)})

    return await plane.run_async(flops, answer)
