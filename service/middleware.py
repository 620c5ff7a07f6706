"""The app's own ASGI middleware: the body limit and timeout, and closing connections
while draining. (API keys: :mod:`service.auth`; metrics: :mod:`service.metrics`.)"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .problems import is_v2_path, problem_response


class BodyLimitMiddleware:
    """413 once more than ``max_bytes`` of body have arrived (chunked bodies included),
    408 when the whole body takes longer than ``timeout`` seconds to arrive (a client
    that stops sending altogether included).

    It counts bytes as they are received, so neither a lying ``Content-Length`` nor
    a chunked upload gets past it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            metrics.REJECTED.labels(limit="body").inc()
            await self._too_large(scope, receive, send)
            return
        received = 0
        deadline = time.monotonic() + self.timeout
        response_started = False

        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # only http.disconnect is left to wait for: no deadline
                return await receive()
            try:
                # The deadline holds even when nothing arrives: a stalled client is cut off.
                message = await _within(receive(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                metrics.REJECTED.labels(limit="body_timeout").inc()
                raise _BodyRejected(408, self._too_slow_detail()) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    metrics.REJECTED.labels(limit="body").inc()
                    raise _BodyRejected(413, self._too_large_detail())
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyRejected as exc:
            if response_started:
                raise
            if exc.status == 413:
                await self._too_large(scope, receive, send)
            else:
                response = problem_response(
                    408, exc.detail, headers={"Connection": "close"}, v2=is_v2_path(scope["path"])
                )
                await response(scope, receive, send)

    def _too_large_detail(self) -> str:
        return f"the request body exceeds {self.max_bytes} bytes (CNN_MAX_BODY_BYTES)"

    def _too_slow_detail(self) -> str:
        return f"the request body did not arrive within {self.timeout:g} s"

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = self._too_large_detail()
        response = problem_response(
            413,
            detail,
            [([], detail)],
            headers={"Connection": "close"},
            v2=is_v2_path(scope["path"]),
        )
        await response(scope, receive, send)


if sys.version_info >= (3, 11):

    async def _within(awaitable: Awaitable[Message], seconds: float) -> Message:
        """``await awaitable``, cancelled after ``seconds`` (asyncio.TimeoutError): a
        timeout scope, where ``wait_for`` made a task for every body message."""
        async with asyncio.timeout(seconds):
            return await awaitable

else:  # pragma: no cover - Python 3.10
    _within = asyncio.wait_for


class _BodyRejected(HTTPException):
    """Raised from ``receive``. An HTTPException, because FastAPI re-raises those while
    reading the body (the problem handler renders it) but turns any other into a 400."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail, headers={"Connection": "close"})
        self.status = status


class CloseWhenDrainingMiddleware:
    """Once the instance is shutting down (``app.state.ready`` false, readiness 503), every
    response carries ``Connection: close``: a client holding a kept-alive connection here
    reconnects, through its balancer, to an instance that is not going away. While ready it
    costs one attribute read per request.
    """

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.state.ready:
            await self.app(scope, receive, send)
            return

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, closing_send)
