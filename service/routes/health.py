"""GET /health/live and /health/ready: probes for orchestrators and load balancers."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from ..errors import OverloadedError
from ..problems import problem_responses
from ..routing import JSONResponse, make_router, settings_of

router = make_router(prefix="/health", tags=["operations"])


class Status(BaseModel):
    """A probe's answer."""

    status: str = Field(description="'ok' when the probe passes.", examples=["ok"])


@router.get("/live", response_model=Status, summary="Liveness")
async def live() -> Response:
    """200 while the process answers HTTP at all (the event loop is never blocked by a
    computation, so this stays fast under load)."""
    return JSONResponse({"status": "ok"})


_SHUTTING_DOWN: dict[int | str, dict[str, Any]] = {
    503: {**problem_responses(503)[503], "description": "Shutting down."}
}


@router.get("/ready", response_model=Status, responses=_SHUTTING_DOWN, summary="Readiness")
async def ready(request: Request) -> Response:
    """200 while the service accepts new work; 503 once it is shutting down, so load
    balancers stop sending requests while in-flight ones finish."""
    if not getattr(request.app.state, "ready", True):
        raise OverloadedError(
            "shutting down: this instance no longer accepts new requests",
            headers={"Retry-After": str(settings_of(request).retry_after)},
        )
    return JSONResponse({"status": "ok"})
