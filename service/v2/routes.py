"""The Open Inference Protocol's REST routes (KServe V2), with Triton's binary tensor data
and model repository extensions. The ``/versions/1`` segment is optional everywhere.

Errors are problem details with the protocol's ``"error"`` member (see
:func:`service.problems.problem_response`): 400 for a request that does not fit the
protocol or the model, 404 for an unknown model or version, 413 over a limit, 503
with ``Retry-After`` when overloaded.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from .. import metrics
from ..dataplane import DataPlane, dataplane_of
from ..errors import bad_request
from ..models.model import VERSION
from ..routing import JSONResponse, slots_of
from ..wire.infer import InferRequest
from ..wire.v2 import HEADER_LENGTH, decompress, encode_response, rest_request, split_body
from .openapi import (
    CONTROL_ERRORS,
    ERRORS,
    INFER_ANSWER,
    INFER_BODY,
    PARAMETERS_BODY,
    optional_body,
)

router = APIRouter(prefix="/v2", tags=["v2"])

#: A model name in a path (checked by the repository, so that a bad one is a V2 400).
ModelName = Annotated[str, Path(description="The model's name.", examples=["digits"])]


def _plane(request: Request) -> DataPlane:
    return dataplane_of(request.app)


def _version(request: Request) -> str | None:
    version: str | None = request.path_params.get("version")
    return version


def _both(path: str) -> list[str]:
    """``path`` with and without the ``/versions/{version}`` segment."""
    return [path.replace("{v}", ""), path.replace("{v}", "/versions/{version}")]


def _with_version(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a ``version`` path parameter in its signature, so OpenAPI documents it
    (the handlers read it from ``request.path_params``)."""

    @functools.wraps(fn)
    async def handler(*args: Any, version: str, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    sig = inspect.signature(fn)
    param = inspect.Parameter(
        "version",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Annotated[str, Path(description="The model version.", examples=[VERSION])],
    )
    handler.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[*sig.parameters.values(), param]
    )
    return handler


def _route(method: str, path: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """Register a handler on both forms of ``path`` (``{v}``: nothing, or
    ``/versions/{version}``, which the handler reads from ``request.path_params``)."""

    responses = {**kwargs.pop("extra_responses", {}), **ERRORS}

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        plain, versioned = _both(path)
        router.add_api_route(plain, fn, methods=[method], responses=responses, **kwargs)
        router.add_api_route(
            versioned, _with_version(fn), methods=[method], responses=responses, **kwargs
        )
        return fn

    return register


# --------------------------------------------------------------------------- server


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> Response:
    """Name, version and the protocol extensions supported."""
    return JSONResponse(_plane(request).server_metadata())


@router.get("/health/live", summary="Server live")
async def server_live() -> Response:
    """200 while the process answers."""
    return JSONResponse({"live": True})


@router.get("/health/ready", summary="Server ready", responses=ERRORS)
async def server_ready(request: Request) -> Response:
    """200 once the repository has been read, whatever each model's state (with
    ``CNN_STRICT_READINESS=true``: only while every model is READY); 400 otherwise, and
    while shutting down."""
    reason = _plane(request).not_ready_reason()
    if reason is not None:
        raise bad_request(reason)
    return JSONResponse({"ready": True})


# --------------------------------------------------------------------------- models


@_route("GET", "/models/{model}{v}", summary="Model metadata")
async def model_metadata_route(request: Request, model: ModelName) -> Response:
    """Every input the model accepts and every output it can answer."""
    return JSONResponse(_plane(request).model_metadata(model, _version(request)))


@_route("GET", "/models/{model}{v}/ready", summary="Model ready")
async def model_ready(request: Request, model: ModelName) -> Response:
    """200 when the model is READY, else 400 with its reason."""
    found = _plane(request).ready_model(model, _version(request))
    return JSONResponse({"name": found.name, "version": found.version, "ready": True})


@_route(
    "POST",
    "/models/{model}{v}/infer",
    summary="Inference",
    openapi_extra=INFER_BODY,
    extra_responses=INFER_ANSWER,
)
async def infer(request: Request, model: ModelName) -> Response:
    """Run the model on ``x``; with an upstream signal (``labels``, ``target`` or
    ``out_grad``), also ``loss``, ``probabilities`` and gradients ``grad/...``."""
    plane = _plane(request)
    label = model if model in plane.models.names() else metrics.OTHER
    with metrics.observe_model(label), slots_of(request).admit():
        plane.ready_model(model, _version(request))  # 404 / 400 before the body is read
        body = await request.body()
        encoding = request.headers.get("content-encoding")
        # A compressed body's size says nothing of its work: decompressed on a worker thread.
        nbytes = len(body) if encoding is None else plane.settings.max_body_bytes
        content, length, media_type = await plane.infer_async(
            model,
            _version(request),
            nbytes,
            lambda: _framed(request, plane, body, encoding),
            encode_response,
        )
    headers = {HEADER_LENGTH: str(length)} if length is not None else None
    return Response(content, media_type=media_type, headers=headers)


def _framed(request: Request, plane: DataPlane, body: bytes, encoding: str | None) -> InferRequest:
    """The body as the wire layer's request: decompressed, split into its JSON head and
    binary tensors (Triton's ``Inference-Header-Content-Length``)."""
    if encoding is not None:
        body = decompress(body, encoding, plane.settings.max_body_bytes)
    header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
    head = body[: len(body) - len(binary)]
    may_hold_bools = b"true" in head or b"false" in head
    return rest_request(header, binary, may_hold_bools)


# --------------------------------------------------------------------------- repository


async def _json_body(request: Request) -> dict[str, Any]:
    """An optional JSON object body (empty is ``{}``), as the repository routes take."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_request("the request body must be a JSON object")
    return doc


def _parameters(doc: dict[str, Any]) -> dict[str, Any]:
    """The body's ``parameters`` object (absent: ``{}``; anything else is refused, as the
    published schema says)."""
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise bad_request("parameters must be an object", ["parameters"])
    return params


@router.post(
    "/repository/index",
    summary="Repository index",
    responses=ERRORS,
    openapi_extra=optional_body(
        {"type": "object", "properties": {"ready": {"type": "boolean"}}}, {"ready": False}
    ),
)
async def repository_index(request: Request) -> Response:
    """Every model with its state and, when UNAVAILABLE, the reason; ``{"ready": true}``
    lists only the READY ones."""
    ready_only = (await _json_body(request)).get("ready", False)
    if not isinstance(ready_only, bool):
        raise bad_request("ready must be true or false", ["ready"])
    return JSONResponse(_plane(request).repository_index(ready_only))


@router.post(
    "/repository/models/{model}/load",
    summary="Load a model",
    responses=CONTROL_ERRORS,
    openapi_extra=optional_body(PARAMETERS_BODY, {}),
)
async def repository_load(request: Request, model: ModelName) -> Response:
    """(Re)read the model's folder and swap the new model in atomically; requests
    already running finish with the old one. An invalid model is a 400 with its reason
    (and UNAVAILABLE in the index). Refused (403) unless the model-control mode is
    ``explicit``."""
    plane = _plane(request)
    plane.check_model_control()
    params = _parameters(await _json_body(request))
    await run_in_threadpool(plane.load, model, params)
    return JSONResponse({})


@router.post(
    "/repository/models/{model}/unload",
    summary="Unload a model",
    responses=CONTROL_ERRORS,
    openapi_extra=optional_body(PARAMETERS_BODY, {"parameters": {}}),
)
async def repository_unload(request: Request, model: ModelName) -> Response:
    """Drop the model (UNAVAILABLE, "unloaded"); requests already running finish.
    Refused (403) unless the model-control mode is ``explicit``."""
    plane = _plane(request)
    plane.check_model_control()
    _parameters(await _json_body(request))
    plane.unload(model)
    return JSONResponse({})


# Matched in this order (FastAPI scans the routes in turn): inference, the hot path, first.
router.routes.sort(key=lambda route: not getattr(route, "path", "").endswith("/infer"))
