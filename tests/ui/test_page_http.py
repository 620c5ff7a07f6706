"""The page's HTTP side, in-process: what is served, with which headers, and that the
page's hooks (contract §6) and both languages are all there."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings
from service.ui.routes import ASSETS

CONTRACT_TENSORS = [
    *(f"conv.{n}" for n in ("x", "w", "out", "dout", "dw", "dx", "db", "dout_padded", "w_rotated")),
    *(
        f"pool.{n}"
        for n in ("x", "dout", "dout_upsampled", "max.out", "max.dx", "avg.out", "avg.dx")
    ),
    "shapes.W2",
    "shapes.params",
    "digits.x",
    "digits.probabilities",
    "digits.saliency",
]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings()))


def test_the_page_and_its_assets_are_served_with_a_same_origin_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    for directive in ("script-src 'self'", "style-src 'self'", "connect-src 'self'"):
        assert directive in csp
    assert "http" not in csp  # no other host, anywhere
    for name, kind in (("main.js", "text/javascript"), ("page.css", "text/css")):
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(kind)
        assert r.headers["content-security-policy"] == csp
    assert client.get("/?lang=zh").text == page.text  # the page translates itself


@pytest.mark.parametrize("name", ["nope.js", "..%2Fapp.py", ".hidden.js", "routes.py"])
def test_nothing_else_is_served(client: TestClient, name: str) -> None:
    assert client.get(f"/ui/{name}").status_code == 404


def test_the_page_needs_no_key_but_the_api_does() -> None:
    guarded = TestClient(create_app(Settings(api_keys=SecretStr("k3y"))))
    assert guarded.get("/").status_code == 200
    assert guarded.get("/ui/api.js").status_code == 200
    assert guarded.post("/v1/shapes", json={}).status_code == 401


def test_every_tensor_of_the_contract_has_its_element() -> None:
    html = (ASSETS / "index.html").read_text()
    found = set(re.findall(r'data-tensor="([^"]+)"', html))
    assert set(CONTRACT_TENSORS) <= found


def test_no_asset_names_another_host() -> None:
    for path in ASSETS.iterdir():
        text = path.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path.name
        assert 'fetch("http' not in text, path.name


def test_both_languages_have_every_string_and_the_tutorials_terms() -> None:
    text = (ASSETS / "i18n.js").read_text()
    en = text[text.index("en: {") : text.index("zh: {")]
    zh = text[text.index("zh: {") :]
    keys = lambda block: set(re.findall(r"^\s+(\w+):", block, re.M))  # noqa: E731
    assert keys(en) == keys(zh)
    used = set(re.findall(r'data-i18n="(\w+)"', (ASSETS / "index.html").read_text()))
    used |= set(re.findall(r'\bt\("(\w+)"', (ASSETS / "main.js").read_text()))
    assert used <= keys(en)
    for term in ("感受野", "步长", "零填充", "反向传播"):
        assert term in zh


def test_docs_link_to_the_page(client: TestClient) -> None:
    assert "[the page at /](/)" in client.get("/openapi.json").json()["info"]["description"]
