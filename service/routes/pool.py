"""POST /v1/pool2d/forward and /v1/pool2d/backward."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

import cnncore
from cnncore.network_shapes import Pool2dSpec

from ..dataplane import dataplane_of, network_budget
from ..problems import problem_responses
from ..routing import JSONResponse, make_router
from ..schemas import Meta, Pool2dParams, TensorRequest, TensorResponse
from ..wire.v1 import Tensor
from .common import ForwardResponse, encode, meta

router = make_router(prefix="/v1/pool2d", tags=["pool2d"])

EXAMPLE: dict[str, Any] = {
    "x": [[[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]]],
    "mode": "max",
    "kernel_size": 2,
}


class Pool2dForwardRequest(TensorRequest, Pool2dParams):
    """Input of a pooling layer."""

    x: Tensor = Field(description="Input, shape (N, C, H, W).")

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})


class Pool2dBackwardRequest(Pool2dForwardRequest):
    """Input of a pooling layer plus the upstream gradient."""

    dout: Tensor = Field(description="Upstream gradient, shape (N, C, H', W').")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**EXAMPLE, "dout": [[[[1, 2], [3, 4]]]], "encoding": "b64"}]
        }
    )


class Pool2dBackwardResponse(BaseModel):
    """Gradient of a pooling layer (it has no parameters)."""

    dx: TensorResponse = Field(description="Gradient with respect to x (x's shape).")
    meta: Meta


def _geometry(req: Pool2dForwardRequest) -> cnncore.geometry.Pool2dGeometry:
    return cnncore.pool2d_geometry(
        req.x.shape,
        kernel_size=req.kernel_size,
        stride=req.stride,
        padding=req.padding,
        mode=req.mode,
        ceil_mode=req.ceil_mode,
        count_include_pad=req.count_include_pad,
    )


def _work_bytes(req: Pool2dForwardRequest, backward: bool) -> int:
    """The measured working-memory estimate of this pooling (one-layer network)."""
    layer = Pool2dSpec(**_pool_kwargs(req))
    return network_budget([layer], req.x.shape, req.x.itemsize, backward)[1]


def _pool_kwargs(req: Pool2dForwardRequest) -> dict:
    return req.model_dump(include=set(Pool2dParams.model_fields))


@router.post(
    "/forward",
    response_model=ForwardResponse,
    responses=problem_responses(400, 413, 422, 503),
    summary="Pooling forward",
)
async def pool2d_forward(req: Pool2dForwardRequest, request: Request) -> Response:
    """Max or average of each window, channel by channel."""
    geo = _geometry(req)
    plane = dataplane_of(request.app)
    plane.check_budget(geo.info.flops, _work_bytes(req, backward=False))

    def answer() -> Response:
        (out, _), ms = plane.run(cnncore.pool2d_forward, req.x, **_pool_kwargs(req))
        body = {"out": encode(out, req.encoding, "out"), "meta": meta(geo.info, out, ms)}
        return JSONResponse(body)

    return await plane.run_async(geo.info.flops, answer)


def _pool_backward(req: Pool2dBackwardRequest) -> tuple:
    out, cache = cnncore.pool2d_forward(req.x, **_pool_kwargs(req))
    return cnncore.pool2d_backward(req.dout, cache), out


@router.post(
    "/backward",
    response_model=Pool2dBackwardResponse,
    responses=problem_responses(400, 413, 422, 503),
    summary="Pooling backward",
)
async def pool2d_backward(req: Pool2dBackwardRequest, request: Request) -> Response:
    """Gradient with respect to ``x`` given ``dout``: max pooling routes each window's
    gradient to its first maximum, average pooling spreads it over the window."""
    geo = _geometry(req)
    flops = 2 * geo.info.flops  # forward (for the cache) and backward
    plane = dataplane_of(request.app)
    plane.check_budget(flops, _work_bytes(req, backward=True))

    def answer() -> Response:
        (dx, out), ms = plane.run(_pool_backward, req)
        return JSONResponse(
            {"dx": encode(dx, req.encoding, "dx"), "meta": meta(geo.info, out, ms, flops=flops)}
        )

    return await plane.run_async(flops, answer)
