"""``GET /`` and ``GET /ui/<asset>``: the tutorial page, served from the package.

Every response carries a ``Content-Security-Policy`` that lets the page load and call
only this origin (no CDN, no font host, no analytics), so it works offline and cannot
leak what a learner types. No build step: the assets are the files in ``assets/``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from starlette.responses import FileResponse, Response

ASSETS = Path(__file__).resolve().parent / "assets"
ASSET_PATH = "/ui"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only this origin: scripts, styles, images and API calls alike."""

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated: a new version of the service shows at once
}

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> Response:
    """The page; ``?lang=zh`` is read by the page itself (same document either way)."""
    return FileResponse(ASSETS / "index.html", media_type=MEDIA_TYPES[".html"], headers=HEADERS)


@router.get(ASSET_PATH + "/{name}")
async def asset(name: str) -> Response:
    """One file of ``assets/`` by name (no sub-folders, no other files)."""
    path = ASSETS / name
    media_type = MEDIA_TYPES.get(path.suffix)
    if media_type is None or "/" in name or name.startswith(".") or not path.is_file():
        raise HTTPException(404, f"no asset {name[:60]!r}")
    return FileResponse(path, media_type=media_type, headers=HEADERS)
