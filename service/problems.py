"""Errors as RFC 9457 problem details (``application/problem+json``), in one place: how
REST renders the domain exceptions of :mod:`service.errors` (whose table gives the status).

Every error the service sends goes through :func:`problem_response`:
``{"type", "title", "status", "detail", "errors": [{"loc": [...], "msg": "..."}]}``.
No error body echoes more than a short excerpt of what was sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from cnncore import CnnError

from . import metrics
from .errors import Loc, ServiceError, from_cnn_error, invalid, loc_text

__all__ = ["ApiError", "from_cnn_error", "invalid"]  # old homes, kept for imports

log = logging.getLogger("service")

PROBLEM_MEDIA_TYPE = "application/problem+json"
MAX_MSG_CHARS = 300
MAX_LOC_CHARS = 60

#: Problem ``type`` URIs, by status.
PROBLEM_TYPES: dict[int, str] = {
    400: "urn:cnn-service:problem:malformed-request",
    401: "urn:cnn-service:problem:unauthorized",
    403: "urn:cnn-service:problem:forbidden",
    404: "urn:cnn-service:problem:not-found",
    405: "urn:cnn-service:problem:method-not-allowed",
    408: "urn:cnn-service:problem:request-timeout",
    413: "urn:cnn-service:problem:too-large",
    415: "urn:cnn-service:problem:unsupported-media-type",
    422: "urn:cnn-service:problem:invalid-input",
    500: "urn:cnn-service:problem:internal-error",
    503: "urn:cnn-service:problem:overloaded",
}


class ErrorItem(BaseModel):
    """One thing wrong with the request."""

    loc: list[str | int] = Field(
        description="Path to the offending field, e.g. ['layers', 3, 'w']."
    )
    msg: str = Field(description="What was expected and what was given.")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="URI identifying the kind of problem.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="Explanation of this occurrence.")
    errors: list[ErrorItem] = Field(default_factory=list, description="Field-level errors.")


#: The old name of :class:`service.errors.ServiceError`, kept for imports.
ApiError = ServiceError


def is_v2_path(path: str) -> bool:
    """Whether ``path`` is an Open Inference Protocol route, whose errors carry ``"error"``."""
    return path == "/v2" or path.startswith("/v2/")


def problem_response(
    status: int,
    detail: str,
    errors: Iterable[tuple[Loc, str]] = (),
    headers: Mapping[str, str] | None = None,
    *,
    v2: bool = False,
) -> Response:
    """Render a problem details response; with ``v2``, also the Open Inference Protocol's
    ``"error"`` member (what ``tritonclient`` and other V2 clients read)."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPES.get(status, "about:blank"),
        "title": _title(status),
        "status": status,
        "detail": _clip(detail),
        "errors": [{"loc": _clip_loc(loc), "msg": _clip(msg)} for loc, msg in errors],
    }
    if v2:
        body["error"] = body["detail"]
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _clip(text: str, limit: int = MAX_MSG_CHARS) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip_loc(loc: Loc) -> list[str | int]:
    # A loc can hold a client's key (an unknown field): it is input too, so it is clipped.
    return [p if isinstance(p, int) else _clip(p, MAX_LOC_CHARS) for p in loc]


def _loc_text(loc: Loc) -> str:
    return loc_text(loc)


_PRIMITIVE_TAGS = {"int", "str", "bool", "float", "list", "dict", "none", "tuple"}


def _pydantic_loc(loc: Sequence[Any]) -> list[str | int]:
    """Locs name fields of the JSON document.

    Drops FastAPI's leading ``body`` and pydantic's union-branch tags such as
    ``constrained-int`` or ``tuple[...]`` (field names never contain ``[`` or ``-``).
    """
    parts = [p if isinstance(p, int) else str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return [
        p for p in parts if isinstance(p, int) or not ("[" in p or "-" in p or p in _PRIMITIVE_TAGS)
    ]


def _merge(items: list[tuple[list[str | int], str]]) -> list[tuple[list[str | int], str]]:
    """One entry per loc: the alternatives of a union failing together read as one error."""
    merged: dict[tuple[str | int, ...], list[str]] = {}
    for loc, msg in items:
        msgs = merged.setdefault(tuple(loc), [])
        if msg not in msgs:
            msgs.append(msg)
    return [(list(loc), "; or ".join(msgs)) for loc, msgs in merged.items()]


def _validation_problem(exc: RequestValidationError) -> Response:
    errors = list(exc.errors())
    if any(e.get("type") in ("json_invalid", "json_type") for e in errors):
        first = next(e for e in errors if e.get("type") in ("json_invalid", "json_type"))
        msg = str(first.get("ctx", {}).get("error", first.get("msg", "invalid JSON")))
        return problem_response(400, f"The request body is not valid JSON: {msg}", [([], msg)])
    if any(e.get("type") == "missing" and tuple(e["loc"]) == ("body",) for e in errors):
        msg = "the request body is empty; expected a JSON object"
        return problem_response(400, msg, [([], msg)])
    too_large = [e for e in errors if e.get("type") == "too_large"]
    if too_large:
        metrics.REJECTED.labels(limit="elements").inc()
        items = [(_pydantic_loc(e["loc"]), str(e["msg"])) for e in too_large]
        return problem_response(413, items[0][1], items)
    items = _merge([(_pydantic_loc(e["loc"]), _message(e)) for e in errors])
    if len(items) == 1:
        loc, msg = items[0]
        return problem_response(422, f"{_loc_text(loc) or 'body'}: {msg}", items)
    where = ", ".join(_loc_text(loc) or "body" for loc, _ in items[:5])
    return problem_response(422, f"Invalid request: {where}", items)


def _message(error: Mapping[str, Any]) -> str:
    # pydantic's own messages never contain the input; we drop "input" entirely.
    msg = str(error.get("msg", "invalid value"))
    value = error.get("input")
    if error.get("type") == "int_type" and isinstance(value, float) and abs(value) >= 2**63:
        # orjson parses integers beyond 64 bits as floats; say why this "is not an integer"
        return "Input should be a valid integer; this one is beyond 64 bits"
    return msg.removeprefix("Value error, ")


def install_problem_handlers(app: FastAPI) -> None:
    """Render every error the app can raise as problem details."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        v2 = is_v2_path(request.url.path)
        return problem_response(exc.status, exc.detail, exc.errors, exc.headers, v2=v2)

    @app.exception_handler(CnnError)
    async def _cnn_error(request: Request, exc: CnnError) -> Response:
        err = from_cnn_error(exc)
        return problem_response(err.status, err.detail, err.errors, v2=is_v2_path(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return _validation_problem(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        v2 = is_v2_path(request.url.path)
        return problem_response(exc.status_code, str(exc.detail), headers=exc.headers, v2=v2)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "Internal error; it has been logged.", v2=is_v2_path(request.url.path)
        )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI description of the problem responses a route can give."""
    descriptions = {
        400: "Malformed JSON.",
        408: "The request body arrived too slowly.",
        413: "Body, tensor, compute or memory budget too large.",
        415: "The body is not JSON (send Content-Type: application/json).",
        422: "Invalid values, or shapes that do not fit together.",
        503: "Overloaded: every computation slot is busy. Retry after `Retry-After` seconds.",
    }
    return {
        s: {
            "model": Problem,
            "description": descriptions.get(s, _title(s)),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for s in statuses
    }
