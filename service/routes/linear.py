"""POST /v1/linear/forward and /v1/linear/backward."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import ConfigDict, Field
from starlette.responses import Response

import cnncore

from ..dataplane import dataplane_of, network_budget
from ..problems import problem_responses
from ..routing import JSONResponse, make_router
from ..schemas import TensorRequest
from ..wire.v1 import Tensor
from .common import BackwardResponse, ForwardResponse, encode, encode_all, meta

router = make_router(prefix="/v1/linear", tags=["linear"])

EXAMPLE: dict[str, Any] = {
    "x": [[1, 2, 3], [4, 5, 6]],
    "w": [[1, 0], [0, 1], [1, -1]],
    "b": [0.5, -0.5],
}


class LinearForwardRequest(TensorRequest):
    """Inputs of a fully connected layer."""

    x: Tensor = Field(description="Input, shape (N, D1, ..., Dk), used as (N, D).")
    w: Tensor = Field(description="Weights, shape (D, M) with D = D1*...*Dk.")
    b: Tensor | None = Field(None, description="Bias, shape (M,), or null.")

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})


class LinearBackwardRequest(LinearForwardRequest):
    """Inputs of a fully connected layer plus the upstream gradient."""

    dout: Tensor = Field(description="Upstream gradient, shape (N, M).")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{**EXAMPLE, "dout": [[1, 0], [0, 1]], "dtype": "float32"}]}
    )


def _info(req: LinearForwardRequest) -> cnncore.LayerInfo:
    return cnncore.linear_info(req.x.shape, req.w.shape, bias=req.b is not None)


def _work_bytes(req: LinearForwardRequest, backward: bool) -> int:
    """The measured working-memory estimate of this layer (one-layer network)."""
    itemsize = max(a.itemsize for a in (req.x, req.w, req.b) if a is not None)
    layer = cnncore.Linear(req.w, req.b)
    return network_budget([layer], req.x.shape, itemsize, backward)[1]


@router.post(
    "/forward",
    response_model=ForwardResponse,
    responses=problem_responses(400, 413, 422, 503),
    summary="Fully connected forward",
)
async def linear_forward(req: LinearForwardRequest, request: Request) -> Response:
    """``out = x.reshape(N, D) @ w + b``."""
    info = _info(req)
    plane = dataplane_of(request.app)
    plane.check_budget(info.flops, _work_bytes(req, backward=False))

    def answer() -> Response:
        (out, _), ms = plane.run(cnncore.linear_forward, req.x, req.w, req.b)
        return JSONResponse({"out": encode(out, req.encoding, "out"), "meta": meta(info, out, ms)})

    return await plane.run_async(info.flops, answer)


def _linear_backward(req: LinearBackwardRequest) -> tuple:
    out, cache = cnncore.linear_forward(req.x, req.w, req.b)
    return (*cnncore.linear_backward(req.dout, cache), out)


@router.post(
    "/backward",
    response_model=BackwardResponse,
    responses=problem_responses(400, 413, 422, 503),
    summary="Fully connected backward",
)
async def linear_backward(req: LinearBackwardRequest, request: Request) -> Response:
    """Gradients with respect to ``x`` (in ``x``'s original shape), ``w`` and ``b``."""
    info = _info(req)
    flops = 3 * info.flops  # forward (for the cache), dx and dw
    plane = dataplane_of(request.app)
    plane.check_budget(flops, _work_bytes(req, backward=True))

    def answer() -> Response:
        (dx, dw, db, out), ms = plane.run(_linear_backward, req)
        grads = encode_all(req.encoding, dx=dx, dw=dw, db=db)
        return JSONResponse({**grads, "meta": meta(info, out, ms, flops=flops)})

    return await plane.run_async(flops, answer)
