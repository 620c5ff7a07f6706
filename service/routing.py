"""What every router shares: the orjson route class, settings access, JSON responses."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from .compute import ComputeSlots
from .errors import UnsupportedMediaTypeError
from .settings import Settings
from .wire.v1 import limits_scope, note_body_bools, parse_json_body


class OrjsonRequest(Request):
    """Parses JSON bodies with orjson: several times faster than ``json`` on large arrays.

    orjson also refuses ``NaN``, ``Infinity`` and numbers that overflow a double,
    which JSON cannot carry (they become a 400).
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = parse_json_body(body)
            note_body_bools(body)
        return self._json


class OrjsonRoute(APIRoute):
    """Route class whose handlers see :class:`OrjsonRequest`, with tensor limits applied.

    POST routes compute: a body that is not JSON is refused with a 415, and they are
    admitted (:meth:`ComputeSlots.admit`) before their body is read, so an overloaded
    process refuses them at once with a 503.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        computes = "POST" in (self.methods or ())

        async def route_handler(request: Request) -> Response:
            if computes:
                require_json(request.headers.get("content-type"))
            admission = slots_of(request).admit() if computes else contextlib.nullcontext()
            with admission, limits_scope(request.app.state.tensor_limits):
                return await handler(OrjsonRequest(request.scope, request.receive))

        return route_handler


def require_json(content_type: str | None) -> None:
    """Refuse (415) a body declared as anything but JSON.

    Without this, FastAPI hands a form or text body to validation as bytes and the client
    reads a puzzling 422 ("a valid dictionary"). As in FastAPI, no ``Content-Type`` at all
    means JSON, and so do ``application/json`` and ``application/*+json``.
    """
    if content_type is None:
        return
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return
    shown = media_type[:40] + ("..." if len(media_type) > 40 else "")
    raise UnsupportedMediaTypeError(
        f"the request body must be JSON (Content-Type: application/json), got {shown!r}",
        [(["header", "content-type"], "expected application/json")],
    )


def make_router(**kwargs: Any) -> APIRouter:
    """An ``APIRouter`` using :class:`OrjsonRoute`."""
    return APIRouter(route_class=OrjsonRoute, **kwargs)


def settings_of(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


def slots_of(request: Request) -> ComputeSlots:
    """The app's computation slots."""
    slots: ComputeSlots = request.app.state.slots
    return slots


class JSONResponse(Response):
    """JSON written by orjson; numpy arrays become nested lists without a Python loop."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
