"""POST /v1/shapes: a stack of layers walked shape by shape, without arrays."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from cnncore import LayerInfo
from cnncore.network_shapes import LayerError, walk_shapes

from ..problems import from_cnn_error, invalid, problem_responses
from ..routing import JSONResponse, make_router
from ..schemas import StrictModel
from ..schemas.layers import Layers, LayerShape, specs
from ..wire.v1 import Encoding

router = make_router(prefix="/v1", tags=["shapes"])

#: Largest count reported: beyond 2**53 a JSON number no longer holds every integer exactly.
MAX_COUNT = 2**53 - 1
MAX_DIM = 2**31 - 1

LENET: dict[str, Any] = {
    "input_shape": [1, 1, 32, 32],
    "layers": [
        {"type": "conv2d", "out_channels": 6, "kernel_size": 5},
        {"type": "relu"},
        {"type": "pool2d", "mode": "max", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 16, "kernel_size": 5},
        {"type": "relu"},
        {"type": "pool2d", "mode": "max", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "linear", "out_features": 120},
        {"type": "relu"},
        {"type": "linear", "out_features": 84},
        {"type": "relu"},
        {"type": "linear", "out_features": 10},
    ],
}


class ShapesRequest(StrictModel):
    """An input shape and a stack of layers."""

    input_shape: Annotated[
        list[Annotated[int, Field(strict=True, ge=1, le=MAX_DIM)]],
        Field(min_length=2, max_length=8),
    ] = Field(description="Shape of the input: [N, C, H, W] (or [N, D] for a linear-only stack).")
    layers: Layers
    encoding: Encoding = Field(
        "list", description="Accepted as on every request; the answer holds no tensors."
    )

    model_config = ConfigDict(json_schema_extra={"examples": [LENET]})


class ShapesResponse(BaseModel):
    """Per-layer shapes and the network's totals."""

    layers: list[LayerShape]
    output_shape: list[int] = Field(description="Shape after the last layer.")
    total_params: int
    total_flops: int = Field(description="FLOPs of one forward pass.")


def _check_counts(infos: list[LayerInfo]) -> None:
    """Refuse numbers a JSON client could not read back exactly."""
    params = flops = 0
    for i, info in enumerate(infos):
        params += info.param_count
        flops += info.flops
        worst = max(params, flops, math.prod(info.output_shape))
        if worst > MAX_COUNT:
            raise invalid(
                ["layers", i],
                f"layer {i}: a total (elements, parameters or FLOPs) reaches {worst:.3g}, "
                "beyond 2**53 - 1, the largest integer a JSON number carries exactly",
            )


@router.post(
    "/shapes",
    response_model=ShapesResponse,
    responses=problem_responses(400, 413, 422),
    summary="Shapes, parameters and FLOPs of a stack of layers",
)
def shapes(req: ShapesRequest) -> Response:
    """Walk ``layers`` from ``input_shape``. A linear layer after a 4-D activation
    flattens it implicitly; a layer whose output would be empty is a 422 naming it."""
    try:
        infos = walk_shapes(req.input_shape, specs(req.layers))
    except LayerError as exc:
        raise from_cnn_error(exc, ["layers", exc.index]) from None
    _check_counts(infos)
    return JSONResponse(
        {
            "layers": [
                {"type": layer.type, **info.as_dict()}
                for layer, info in zip(req.layers, infos, strict=True)
            ],
            "output_shape": list(infos[-1].output_shape),
            "total_params": sum(i.param_count for i in infos),
            "total_flops": sum(i.flops for i in infos),
        }
    )
