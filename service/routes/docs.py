"""GET /docs (Swagger UI) and /redoc, with every asset served from ``service/static``.

Users run the service in containers and networks without internet access, where a
docs page loading its JavaScript from a CDN stays blank. Swagger UI 5 (FastAPI
emits OpenAPI 3.1) and Redoc 2 are vendored from npm; see ``service/static/README.md``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from ..routing import make_router

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PATH = "/static"

router = make_router(include_in_schema=False)


def static_files() -> StaticFiles:
    """The ASGI app serving the vendored assets; the app mounts it at ``STATIC_PATH``."""
    return StaticFiles(directory=STATIC_DIR)


def _urls(request: Request) -> tuple[str, str]:
    root = request.scope.get("root_path", "").rstrip("/")
    return root + request.app.openapi_url, root + STATIC_PATH


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI, from local assets."""
    openapi_url, static = _urls(request)
    return get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{static}/swagger-ui-bundle.js",
        swagger_css_url=f"{static}/swagger-ui.css",
        swagger_favicon_url=f"{static}/favicon.png",
        # The default validator badge would call an external validator service.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """Redoc, from local assets and without web fonts."""
    openapi_url, static = _urls(request)
    return get_redoc_html(
        openapi_url=openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{static}/redoc.standalone.js",
        redoc_favicon_url=f"{static}/favicon.png",
        with_google_fonts=False,
    )
