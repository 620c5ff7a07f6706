"""The FastAPI application: ``create_app(settings)`` wires routers, middleware and handlers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import FrameType
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, metrics
from .auth import ApiKeyMiddleware, document_keys, load_keys
from .compute import ComputeSlots
from .dataplane import DataPlane
from .models import DEFAULT_REPOSITORY, ModelRepository
from .problems import install_problem_handlers, is_v2_path, problem_response, problem_responses
from .runtime import tune_malloc
from .settings import Settings
from .wire.v1 import TensorLimits, bound_request_tensors


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
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
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


def _not_ready_on_exit_signals(app: FastAPI, delay: float) -> Callable[[], None]:
    """On SIGTERM or SIGINT, report not-ready at once, then (after ``delay`` seconds) hand
    the signal to the server's own handler, which stops accepting and drains.

    Installed from the lifespan, so after uvicorn's handlers, in every worker process.
    Returns a function restoring the previous handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals are only delivered to the main thread (TestClient)
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(sig: int, frame: FrameType | None) -> None:
        app.state.ready = False
        handler = previous[signal.Signals(sig)]
        if callable(handler):
            loop.call_soon_threadsafe(loop.call_later, delay, handler, sig, frame)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for sig in previous:
        signal.signal(sig, handle)
    return restore


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tune_malloc()  # in every worker process, before the first computation
        restore = _not_ready_on_exit_signals(app, settings.shutdown_delay)
        try:
            yield
        finally:
            restore()

    return lifespan


def _openapi_with_limits(app: FastAPI, max_elements: int) -> None:
    """The OpenAPI document states this instance's element limit on every request tensor,
    and on every route with a body the answers of :class:`BodyLimitMiddleware` (408, 413)
    and of :func:`routing.require_json` (415)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = bound_request_tensors(build(), max_elements)
            body_problems = {
                str(status): {"description": doc["description"], "content": doc["content"]}
                for status, doc in problem_responses(408, 413, 415).items()
            }
            for route, path in spec["paths"].items():
                # /v2 takes any Content-Type (tritonclient sends none): no 415 there.
                problems = (
                    {k: v for k, v in body_problems.items() if k != "415"}
                    if is_v2_path(route)
                    else body_problems
                )
                for op in path.values():
                    if "requestBody" in op:
                        op["responses"] = dict(sorted({**problems, **op["responses"]}.items()))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def open_repository(settings: Settings) -> ModelRepository:
    """The model repository of ``settings`` (the bundled default folder when unset, which
    may be missing), every model in it loaded.

    Raises
    ------
    FileNotFoundError
        If ``CNN_MODEL_REPOSITORY`` names something that is not a directory.
    """
    root = settings.model_repository
    repo = ModelRepository(
        root or DEFAULT_REPOSITORY,
        settings.max_model_bytes,
        must_exist=root is not None,
        single_model=settings.model_name,
    )
    repo.scan()
    return repo


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application.

    Parameters
    ----------
    settings
        Limits and options; read from ``CNN_*`` environment variables when omitted.
    """
    from .routes import ALL_ROUTERS, docs  # routes import schemas, which import this package
    from .v2.routes import router as v2_router

    routers = [*ALL_ROUTERS, v2_router]

    settings = settings or Settings()
    app = FastAPI(
        title="cnn-service",
        version=__version__,
        summary="Convolution, pooling and fully connected layers: forward and backward over HTTP.",
        docs_url=None,  # served from local assets by routes.docs (works offline)
        redoc_url=None,
        lifespan=_lifespan(settings),
    )
    app.state.settings = settings
    app.state.tensor_limits = TensorLimits(max_elements=settings.max_elements)
    app.state.slots = ComputeSlots(
        settings.max_concurrency, settings.queue_timeout, settings.retry_after, settings.queue_size
    )
    app.state.ready = True
    app.state.models = open_repository(settings)
    app.state.dataplane = DataPlane(settings, app.state.models, app.state.slots, app.state)
    _openapi_with_limits(app, settings.max_elements)
    install_problem_handlers(app)
    for router in routers:
        app.include_router(router)
    app.mount(docs.STATIC_PATH, docs.static_files(), name="static")
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout
    )
    keys = load_keys(settings)
    if keys:  # inside the metrics (401s are counted), outside the body limit (never read)
        app.add_middleware(ApiKeyMiddleware, keys=keys)
        document_keys(app)
    # Outermost, so requests the body limit refuses are counted too.
    paths = [getattr(route, "path", "") for router in routers for route in router.routes]
    app.add_middleware(
        metrics.MetricsMiddleware,
        paths=[*paths, app.openapi_url or "/openapi.json"],
        mounts=[docs.STATIC_PATH],
    )
    app.add_middleware(CloseWhenDrainingMiddleware, state=app.state)
    return app
