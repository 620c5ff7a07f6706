"""/docs and /redoc work offline: every asset they reference is served by the app."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


class _Assets(HTMLParser):
    """Collects ``<script src>`` and ``<link href>`` URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href"}.get(tag)
        self.urls += [v for k, v in attrs if k == wanted and v]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def _assets(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_page_references_only_local_assets(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", r.text), "the page must not load anything from outside"
    urls = _assets(r.text)
    assert any(u.endswith(".js") for u in urls)
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        suffix = url[url.rfind(".") :]
        assert CONTENT_TYPES[suffix] in asset.headers["content-type"], url
        assert len(asset.content) > 100, url


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_page_loads_this_apps_openapi(client: TestClient, page: str) -> None:
    assert "/openapi.json" in client.get(page).text
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")


def test_swagger_ui_is_version_5_or_later(client: TestClient) -> None:
    # OpenAPI 3.1 documents render blank in Swagger UI 4.
    bundle = client.get("/static/swagger-ui-bundle.js").text
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', bundle)
    assert version, "no version string found in swagger-ui-bundle.js"
    assert int(version.group(1)) >= 5


def test_licenses_of_vendored_assets_are_served(client: TestClient) -> None:
    for name in ("LICENSE.swagger-ui", "NOTICE.swagger-ui", "LICENSE.redoc"):
        assert client.get(f"/static/{name}").status_code == 200
