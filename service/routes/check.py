"""POST /v1/check: is a claimed answer for one layer right, and where is it not?

For people implementing conv, pooling or fully connected layers themselves: send
the inputs and your ``out`` / ``dx`` / ``dw`` / ``db``; the service computes the
right ones with :mod:`cnncore` and compares each with
:func:`cnncore.gradcheck.compare` (the customary relative error
``max |a - b| / max(1e-8, |a| + |b|)``), pointing at the worst element. A claimed
tensor of the wrong shape is a failed check, not an error.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError
from starlette.responses import Response

import cnncore
from cnncore.gradcheck import DEFAULT_TOLERANCE, compare, default_tolerance
from cnncore.network import Layer
from cnncore.network_shapes import LayerError, Pool2dSpec

from ..dataplane import dataplane_of, network_budget
from ..errors import ServiceError
from ..problems import from_cnn_error, invalid, problem_responses
from ..routing import JSONResponse, make_router
from ..schemas import Conv2dParams, Pool2dParams, StrictModel, TensorRequest
from ..wire.v1 import Tensor

router = make_router(prefix="/v1", tags=["check"])

OPS = ("conv2d", "pool2d", "linear")
GRADIENTS = ("dx", "dw", "db")


class LinearParams(StrictModel):
    """A fully connected layer has no hyper-parameters: ``params`` is ``{}``."""


_PARAMS: dict[str, type[StrictModel]] = {
    "conv2d": Conv2dParams,
    "pool2d": Pool2dParams,
    "linear": LinearParams,
}


class Claimed(StrictModel):
    """The answers to check; give any of them (gradients need ``dout``)."""

    out: Tensor | None = Field(None, description="Claimed forward output.")
    dx: Tensor | None = Field(None, description="Claimed gradient with respect to x.")
    dw: Tensor | None = Field(None, description="Claimed gradient with respect to w.")
    db: Tensor | None = Field(None, description="Claimed gradient with respect to b.")


EXAMPLE: dict[str, Any] = {
    "op": "conv2d",
    "params": {"stride": 1, "padding": 0},
    "x": [[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]],
    "w": [[[[1, 0], [0, -1]]]],
    "b": [0.5],
    "dout": [[[[1, 2], [3, 4]]]],
    "claimed": {
        "out": [[[[-3.5, -3.5], [-3.5, -3.5]]]],
        "dw": [[[[37, 47], [67, 76]]]],  # one planted error: 77 is right
        "db": [10],
    },
}


class CheckRequest(TensorRequest):
    """One layer's inputs and the answers claimed for them."""

    op: Literal["conv2d", "pool2d", "linear"] = Field(description="The layer.")
    params: Conv2dParams | Pool2dParams | LinearParams = Field(
        default_factory=dict,  # turned into the op's model by _params below
        validate_default=True,
        description="The op's hyper-parameters, as for its own route: conv2d's stride, "
        "padding, dilation, groups; pool2d's mode, kernel_size (required), stride, padding, "
        "ceil_mode, count_include_pad; none for linear.",
    )
    x: Tensor = Field(description="The layer's input.")
    w: Tensor | None = Field(None, description="Weights (conv2d, linear).")
    b: Tensor | None = Field(None, description="Bias, or null (conv2d, linear).")
    dout: Tensor | None = Field(
        None, description="Upstream gradient (the output's shape); needed to check dx, dw, db."
    )
    claimed: Claimed = Field(description="The answers to check.")
    tolerance: Annotated[float, Field(strict=True, gt=0, lt=1)] | None = Field(
        None,
        description="Largest relative error accepted; by default "
        f"{DEFAULT_TOLERANCE[np.dtype(np.float32)]:g} if any tensor is float32, else "
        f"{DEFAULT_TOLERANCE[np.dtype(np.float64)]:g}.",
    )

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})

    @field_validator("params", mode="wrap")
    @classmethod
    def _params(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        # The op picks the model; its errors keep their loc (["params", "kernel_size"]).
        op = info.data.get("op")
        if op not in _PARAMS:
            return handler(value)
        if not isinstance(value, dict):
            raise PydanticCustomError(
                "params_type", "params must be an object of {op}'s hyper-parameters", {"op": op}
            )
        return _PARAMS[op].model_validate(value)


class TensorCheck(BaseModel):
    """The verdict on one claimed tensor."""

    passed: bool
    max_rel_error: float | None = Field(description="Null when the shapes differ.")
    max_abs_error: float | None
    worst_index: list[int] | None = Field(description="Where the relative error is largest.")
    expected: float | None = Field(description="The right value at worst_index.")
    got: float | None = Field(description="The claimed value at worst_index.")
    expected_shape: list[int]
    got_shape: list[int]
    message: str


class CheckResponse(BaseModel):
    """Whether every claimed tensor is right, and the details of each."""

    passed: bool
    tolerance: float = Field(description="The tolerance applied to the relative error.")
    tensors: dict[str, TensorCheck]


def _layer(req: CheckRequest) -> Layer:
    params = req.params.model_dump()
    if req.op == "pool2d":
        for name in ("w", "b"):
            if getattr(req, name) is not None:
                raise invalid([name], f"pool2d has no parameters; {name} must be null")
        return Pool2dSpec(**params)
    if req.w is None:
        raise invalid(["w"], f"{req.op} needs w")
    if req.op == "conv2d":
        return cnncore.Conv2d(req.w, req.b, **params)
    return cnncore.Linear(req.w, req.b)


def _single_layer_error(exc: LayerError, op: str) -> ServiceError:
    """A network error about layer 0, told in terms of the single op's request."""
    if exc.arg is None:  # the layer as a whole does not fit its input
        loc: list[str | int] = ["x"]
    elif exc.arg in ("x", "w", "b"):
        loc = [exc.arg]
    else:
        loc = ["params", exc.arg]
    msg = exc.message.replace(f"layer 0 ({op}): ", "").replace(f"layer 0 ({op})", op)
    return invalid(loc, msg)


def _claims(req: CheckRequest, out_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The claimed tensors, after checking that each can be computed."""
    claims = {k: v for k, v in req.claimed.model_dump().items() if v is not None}
    if not claims:
        raise invalid(["claimed"], "claim at least one of out, dx, dw, db")
    for name in claims:
        if name in ("dw", "db") and req.op == "pool2d":
            raise invalid(["claimed", name], f"pool2d has no parameters, so no {name}")
        if name == "db" and req.b is None:
            raise invalid(["claimed", "db"], "b is null, so there is no db")
    if any(name in GRADIENTS for name in claims):
        if req.dout is None:
            raise invalid(["dout"], "dout is needed to check dx, dw or db")
        if req.dout.shape != out_shape:
            raise invalid(
                ["dout"], f"dout has shape {req.dout.shape} but the output has shape {out_shape}"
            )
    return claims


def _answers(
    x: np.ndarray, layer: Layer, dout: np.ndarray | None, backward: bool
) -> dict[str, np.ndarray]:
    out, cache = cnncore.network_forward(x, [layer])
    answers = {"out": out}
    if backward:
        answers["dx"], (grads,) = cnncore.network_backward(dout, cache)
        answers.update({k: g for k, g in grads.items() if g is not None})
    return answers


@router.post(
    "/check",
    response_model=CheckResponse,
    responses=problem_responses(400, 413, 422, 503),
    summary="Check claimed answers for one layer",
)
async def check(req: CheckRequest, request: Request) -> Response:
    """Compare claimed ``out``, ``dx``, ``dw``, ``db`` with the right ones; each verdict
    gives the largest relative and absolute errors and the index of the worst element."""
    layer = _layer(req)
    try:
        (info,) = cnncore.network_info(req.x.shape, [layer])
    except LayerError as exc:  # params, x, w or b that do not fit: located as in the request
        raise _single_layer_error(exc, req.op) from None
    except cnncore.CnnError as exc:
        raise from_cnn_error(exc) from None
    claims = _claims(req, info.output_shape)
    backward = any(name in GRADIENTS for name in claims)
    itemsize = max(a.itemsize for a in (req.x, req.w, req.b, req.dout) if a is not None)
    plane = dataplane_of(request.app)
    flops, work = network_budget([layer], req.x.shape, itemsize, backward)
    plane.check_budget(flops, work)

    def answer() -> Response:
        answers, _ = plane.run(_answers, req.x, layer, req.dout, backward)
        tolerance = req.tolerance or default_tolerance(
            answers["out"].dtype, *(c.dtype for c in claims.values())
        )
        verdicts = {name: compare(answers[name], got, tolerance) for name, got in claims.items()}
        return JSONResponse(
            {
                "passed": all(v.passed for v in verdicts.values()),
                "tolerance": tolerance,
                "tensors": {name: dataclasses.asdict(v) for name, v in verdicts.items()},
            }
        )

    return await plane.run_async(flops, answer)
