"""One APIRouter per resource."""

from . import check, conv, docs, health, info, linear, network, pool, prometheus, shapes

#: In the order requests are matched (FastAPI scans routes in turn: ~4 µs a route), the
#: computations first; the app puts /v2 before them all.
ALL_ROUTERS = [
    conv.router,
    pool.router,
    linear.router,
    network.router,
    check.router,
    shapes.router,
    health.router,
    info.router,
    prometheus.router,
    docs.router,
]
