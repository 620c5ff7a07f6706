"""GET /metrics: Prometheus text format."""

from __future__ import annotations

from starlette.responses import Response

from .. import metrics
from ..routing import make_router

router = make_router(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    summary="Prometheus metrics",
)
def prometheus_metrics() -> Response:
    """Requests by route template, method and status; latency histogram; computations in
    flight; requests rejected by each limit. Aggregates all workers."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
