"""Prometheus metrics (prometheus-client): definitions, the request middleware, rendering.

With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` must point at an empty
directory before this module is imported (the CLI arranges it); ``/metrics`` then
aggregates every worker's samples.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .settings import MULTIPROC_ENV

REQUESTS = Counter(
    "cnn_requests_total",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "cnn_request_duration_seconds",
    "HTTP request latency by route template.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge(
    "cnn_computations_in_flight", "Computations running now.", multiprocess_mode="livesum"
)
REJECTED = Counter(
    "cnn_rejected_total",
    "Requests refused by a limit (body, elements, flops, memory, concurrency).",
    ["limit"],
)

MODEL_REQUESTS = Counter(
    "cnn_model_requests_total",
    "Inference requests by model (a known model's name, else 'other') and status.",
    ["model", "status"],
)
MODEL_LATENCY = Histogram(
    "cnn_model_request_duration_seconds",
    "Inference request latency by model.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MODEL_IN_FLIGHT = Gauge(
    "cnn_model_requests_in_flight",
    "Inference requests being served now, by model.",
    ["model"],
    multiprocess_mode="livesum",
)

#: Label of a path that matches no route, or of an unusual method (keeps labels bounded).
OTHER = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

if os.environ.get(MULTIPROC_ENV):
    # A worker that exits must not leave its in-flight gauge behind in the shared directory.
    atexit.register(_multiprocess.mark_process_dead, os.getpid())


@contextlib.contextmanager
def observe_model(label: str) -> Iterator[None]:
    """Count, time and gauge one inference request under its model's label (a known
    model's name, else :data:`OTHER`), with the HTTP status it ended with; every
    transport's inference goes through this."""
    from .errors import ServiceError

    start = time.perf_counter()
    status = "500"
    in_flight = child(MODEL_IN_FLIGHT, label)
    in_flight.inc()
    try:
        yield
        status = "200"
    except ServiceError as exc:
        status = str(exc.status)
        raise
    finally:
        in_flight.dec()
        child(MODEL_LATENCY, label).observe(time.perf_counter() - start)
        child(MODEL_REQUESTS, label, status).inc()


_children: dict[tuple[Any, ...], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered: prometheus-client validates and locks on
    every call (~4 µs, five times a request). Labels are bounded (route templates, model
    names, statuses), and so is this."""
    key = (metric, *labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition and its content type; with several workers,
    the samples of all of them (prometheus-client's multiprocess mode)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP request by route template, method and status, and times it.

    Labels use the route's template (``/v1/conv2d/forward``, ``/static``), never the
    raw path, so a scan of random URLs cannot create new time series: paths that
    match no route are counted as ``other``. Added outermost, it also sees the
    requests that the body limit refuses before routing.

    Parameters
    ----------
    app
        The ASGI app to wrap.
    paths
        Route templates (``/items/{id}`` style), matched in order.
    mounts
        Path prefixes of mounted apps (``/static``); everything below one is labelled by it.
    """

    def __init__(self, app: ASGIApp, paths: Iterable[str], mounts: Iterable[str] = ()) -> None:
        self.app = app
        self.paths = [(compile_path(path)[0], path) for path in paths]
        self.mounts = [m.rstrip("/") for m in mounts]
        # A scan of ~60 patterns per request, remembered for the paths seen most lately.
        self.template = functools.lru_cache(maxsize=4096)(self._template)

    def _template(self, path: str) -> str:
        """The route template ``path`` belongs to, or ``other``."""
        for regex, template in self.paths:
            if regex.match(path):
                return template
        for mount in self.mounts:
            if path == mount or path.startswith(mount + "/"):
                return mount
        return OTHER

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.template(scope["path"])
        method = scope["method"] if scope["method"] in METHODS else OTHER
        status = 500  # what the server answers if the app raises before responding
        start = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            child(LATENCY, route).observe(time.perf_counter() - start)
            child(REQUESTS, route, method, str(status)).inc()
