"""POST /v1/conv2d/forward and /v1/conv2d/backward."""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from pydantic import ConfigDict, Field
from starlette.responses import Response

import cnncore

from ..compute import check_budget, run
from ..problems import problem_responses
from ..routing import JSONResponse, make_router, settings_of, slots_of
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


def _work_bytes(geo: cnncore.geometry.Conv2dGeometry, itemsize: int, passes: int) -> int:
    """Inputs, outputs and the column buffer of the im2col GEMM, per pass."""
    info = geo.info
    cols = geo.n * geo.out_h * geo.out_w * (geo.c // geo.groups) * geo.kh * geo.kw
    x = geo.n * geo.c * math.prod(geo.padded_hw)
    out = geo.n * geo.f * geo.out_h * geo.out_w
    return (x + out + cols + info.param_count) * itemsize * passes


@router.post(
    "/forward",
    response_model=ForwardResponse,
    responses=problem_responses(400, 413, 422, 503),
    summary="Convolution forward",
)
def conv2d_forward(req: Conv2dForwardRequest, request: Request) -> Response:
    """``out = x ⋆ w + b`` (cross-correlation, as in PyTorch and the tutorial)."""
    geo = _geometry(req)
    check_budget(settings_of(request), geo.info.flops, _work_bytes(geo, req.x.itemsize, 1))
    (out, _), ms = run(
        slots_of(request), cnncore.conv2d_forward, req.x, req.w, req.b, **_conv_kwargs(req)
    )
    return JSONResponse({"out": encode(out, req.encoding, "out"), "meta": meta(geo.info, out, ms)})


def _conv_backward(req: Conv2dBackwardRequest) -> tuple:
    out, cache = cnncore.conv2d_forward(req.x, req.w, req.b, **_conv_kwargs(req))
    return (*cnncore.conv2d_backward(req.dout, cache), out)


@router.post(
    "/backward",
    response_model=BackwardResponse,
    responses=problem_responses(400, 413, 422, 503),
    summary="Convolution backward",
)
def conv2d_backward(req: Conv2dBackwardRequest, request: Request) -> Response:
    """Gradients of the loss with respect to ``x``, ``w`` and ``b`` given ``dout``."""
    geo = _geometry(req)
    flops = 3 * geo.info.flops  # forward (for the cache), dx and dw
    check_budget(settings_of(request), flops, _work_bytes(geo, req.x.itemsize, 3))
    (dx, dw, db, out), ms = run(slots_of(request), _conv_backward, req)
    grads = encode_all(req.encoding, dx=dx, dw=dw, db=db)
    return JSONResponse({**grads, "meta": meta(geo.info, out, ms, flops=flops)})
