"""The FastAPI application: ``create_app(settings)`` wires routers, middleware and handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import FrameType
from typing import Any

from fastapi import FastAPI

from . import __version__, metrics
from .auth import ApiKeyMiddleware, document_keys, load_keys
from .compute import ComputeSlots
from .dataplane import DataPlane
from .middleware import BodyLimitMiddleware, CloseWhenDrainingMiddleware
from .models import DEFAULT_REPOSITORY, ModelRepository
from .problems import install_problem_handlers, is_v2_path, problem_responses
from .routes import ALL_ROUTERS, docs
from .runtime import tune_malloc
from .settings import Settings
from .ui.routes import router as ui_router
from .v2.routes import router as v2_router
from .wire.v1 import TensorLimits, bound_request_tensors


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
        grpc_server = await _start_grpc(app, settings) if settings.enable_grpc else None
        try:
            yield
        finally:
            if grpc_server is not None:  # in-flight RPCs get the graceful timeout to finish
                await grpc_server.stop(settings.graceful_timeout)
            restore()

    return lifespan


async def _start_grpc(app: FastAPI, settings: Settings) -> Any:
    """Start the gRPC transport on this worker's event loop (imported only when enabled)."""
    from .auth import KeyCheck
    from .grpc.server import build_server

    keys = load_keys(settings)
    server = build_server(app.state.dataplane, settings, KeyCheck(keys) if keys else None)
    await server.start()
    logging.getLogger("uvicorn.error").info(  # printed beside uvicorn's own start-up lines
        "gRPC: Open Inference Protocol on %s:%d", settings.host, settings.grpc_port
    )
    return server


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
        onnx_runtime=settings.onnx_runtime,
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
    routers = [v2_router, *ALL_ROUTERS, ui_router]  # matched in this order: inference first

    settings = settings or Settings()
    app = FastAPI(
        title="cnn-service",
        version=__version__,
        summary="Convolution, pooling and fully connected layers: forward and backward over HTTP.",
        description="The tutorial's forward and backward passes, computed live by this API: "
        "[the page at /](/) ([中文](/?lang=zh)).",
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
