"""One APIRouter per resource."""

from . import check, conv, docs, health, info, linear, network, pool, prometheus, shapes

ALL_ROUTERS = [
    health.router,
    info.router,
    prometheus.router,
    docs.router,
    conv.router,
    pool.router,
    linear.router,
    shapes.router,
    network.router,
    check.router,
]
