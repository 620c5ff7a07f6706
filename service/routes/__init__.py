"""One APIRouter per resource."""

from . import conv

ALL_ROUTERS = [conv.router]
