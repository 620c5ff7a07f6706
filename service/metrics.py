"""Prometheus metrics (prometheus-client), shared by all routes.

With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` must point at an empty
directory before this module is imported (the CLI arranges it); ``/metrics`` then
aggregates every worker's samples.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
