"""API keys (CNN_API_KEYS, CNN_API_KEYS_FILE): which routes need one, the 401s, the key file."""

from __future__ import annotations

import gc
import logging
import re
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import SecretStr

from service import cli
from service.app import create_app
from service.auth import ApiKeyError, ApiKeyMiddleware, is_open, load_keys
from service.client import Client, ServiceError
from service.settings import Settings
from service.testing import serve

KEYS = ("k3y-one_0123456789", "second.key~ABCDEF")
LINEAR = "/v1/linear/forward"
LINEAR_BODY = {"x": [[1.0, 2.0]], "w": [[1.0], [1.0]]}
OPEN = ["/health/live", "/health/ready", "/metrics", "/docs", "/redoc", "/openapi.json"]


def _app(**settings: object) -> TestClient:
    return TestClient(create_app(Settings(**settings)), raise_server_exceptions=False)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def guarded() -> TestClient:
    return _app(api_keys=SecretStr(",".join(KEYS)))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _protected_routes(client: TestClient) -> list[tuple[str, str]]:
    """``(method, path)`` of every documented route but the open ones, path parameters
    filled in."""
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "name", path))
        for path, operations in paths.items()
        if not is_open(path)
        for method in operations
    ]


def _rejected_auth() -> float:
    return REGISTRY.get_sample_value("cnn_rejected_total", {"limit": "auth"}) or 0.0


# --------------------------------------------------------------------------- which routes


def test_model_control_needs_a_key(tmp_path: Path) -> None:
    """With --model-control-mode explicit and keys configured, only a caller with a key
    can unload (contract §3)."""
    (tmp_path / "m").mkdir()
    client = _app(
        api_keys=SecretStr(KEYS[0]), model_repository=tmp_path, model_control_mode="explicit"
    )
    assert client.post("/v2/repository/models/m/unload").status_code == 401
    assert (
        client.post("/v2/repository/models/m/unload", headers=_bearer(KEYS[0])).status_code == 200
    )


def test_without_keys_no_middleware_is_installed_and_every_route_is_open() -> None:
    client = _app()
    assert not any(m.cls is ApiKeyMiddleware for m in client.app.user_middleware)  # type: ignore[attr-defined]
    assert client.post(LINEAR, json=LINEAR_BODY).status_code == 200


def test_every_route_but_probes_metrics_and_docs_needs_a_key(guarded: TestClient) -> None:
    routes = _protected_routes(guarded)
    assert ("POST", LINEAR) in routes
    assert ("POST", "/v1/shapes") in routes
    assert ("GET", "/v1/info") in routes
    for method, path in routes:
        r = guarded.request(method, path)
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"] == 'Bearer realm="cnn-service"', (method, path)


@pytest.mark.parametrize("path", OPEN, ids=OPEN)
def test_probes_metrics_and_docs_stay_open(guarded: TestClient, path: str) -> None:
    assert guarded.get(path).status_code == 200


def test_the_openapi_document_declares_the_key_except_on_open_paths(guarded: TestClient) -> None:
    spec = guarded.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearer": []}]
    assert spec["paths"]["/health/live"]["get"]["security"] == []
    assert "security" not in spec["paths"][LINEAR]["post"]  # the document-wide default
    assert "securitySchemes" not in _app().get("/openapi.json").json()["components"]


def test_unknown_paths_need_a_key_too(guarded: TestClient) -> None:
    # An unauthenticated caller cannot tell which routes exist.
    assert guarded.get("/v1/no-such-route").status_code == 401
    assert guarded.get("/v1/no-such-route", headers=_bearer(KEYS[0])).status_code == 404


@pytest.mark.parametrize("key", KEYS, ids=["first", "second"])
def test_each_configured_key_is_accepted(guarded: TestClient, key: str) -> None:
    r = guarded.post(LINEAR, json=LINEAR_BODY, headers=_bearer(key))
    assert r.status_code == 200
    assert r.json()["out"] == [[3.0]]


def test_the_scheme_is_case_insensitive(guarded: TestClient) -> None:
    headers = {"Authorization": f"bearer {KEYS[0]}"}
    assert guarded.post(LINEAR, json=LINEAR_BODY, headers=headers).status_code == 200


# --------------------------------------------------------------------------- refusals

WRONG = {
    "wrong-key": f"Bearer {KEYS[0]}x",
    "prefix-of-a-key": f"Bearer {KEYS[0][:-1]}",
    "two-keys": f"Bearer {KEYS[0]},{KEYS[1]}",
    "basic-scheme": f"Basic {KEYS[0]}",
    "no-scheme": KEYS[0],
    "empty-token": "Bearer ",
    "empty-header": "",
}


@pytest.mark.parametrize("value", WRONG.values(), ids=WRONG.keys())
def test_a_wrong_key_is_a_401_problem_naming_the_header(guarded: TestClient, value: str) -> None:
    r = guarded.post(LINEAR, json=LINEAR_BODY, headers={"Authorization": value})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == 'Bearer realm="cnn-service", error="invalid_token"'
    problem = r.json()
    assert problem["status"] == 401
    assert problem["title"] == "Unauthorized"
    assert problem["errors"] == [{"loc": ["header", "authorization"], "msg": "invalid API key"}]
    assert "error" not in problem  # the V2 member is for /v2 only
    assert KEYS[0] not in r.text


def test_a_missing_key_says_how_to_send_one(guarded: TestClient) -> None:
    problem = guarded.post(LINEAR, json=LINEAR_BODY).json()
    assert "Authorization: Bearer <key>" in problem["detail"]
    assert problem["errors"][0]["msg"] == "missing API key"


def test_v2_refusals_carry_the_protocol_error_member(guarded: TestClient) -> None:
    r = guarded.post("/v2/models/digits/infer", json={"inputs": []})
    assert r.status_code == 401
    assert r.json()["error"] == r.json()["detail"]
    assert guarded.get("/v2").json()["error"]  # server metadata needs a key too


def test_the_body_of_a_refused_request_is_never_read(guarded: TestClient) -> None:
    # Far over the body limit: without a key the answer is a 401, not the body limit's 413.
    client = _app(api_keys=SecretStr(KEYS[0]), max_body_bytes=10)
    assert client.post(LINEAR, json=LINEAR_BODY).status_code == 401
    assert client.post(LINEAR, json=LINEAR_BODY, headers=_bearer(KEYS[0])).status_code == 413


def test_refusals_are_counted_and_the_key_is_neither_logged_nor_exported(
    guarded: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    before = _rejected_auth()
    with caplog.at_level(logging.DEBUG):
        guarded.post(LINEAR, json=LINEAR_BODY, headers=_bearer("not-a-key-SECRET"))
        guarded.post(LINEAR, json=LINEAR_BODY)
    assert _rejected_auth() == before + 2
    exported = guarded.get("/metrics").text
    assert 'route="/v1/linear/forward",status="401"' in exported
    for secret in ("not-a-key-SECRET", *KEYS):
        assert secret not in caplog.text
        assert secret not in exported


# --------------------------------------------------------------------------- configuration


def test_keys_from_a_file_and_the_variable_combine(tmp_path: Path) -> None:
    secret = tmp_path / "api-keys"
    secret.write_text(f"# rotated 2026-12-01\n{KEYS[1]}\n\n  {KEYS[0]}  \n")
    settings = Settings(api_keys=SecretStr(f"{KEYS[0]}, extra-key"), api_keys_file=secret)
    assert load_keys(settings) == (KEYS[0], "extra-key", KEYS[1])
    client = TestClient(create_app(settings))
    for key in (*KEYS, "extra-key"):
        assert client.get("/v1/info", headers=_bearer(key)).status_code == 200


BAD_FILES = {
    "missing": None,
    "empty": "",
    "only-comments": "# no key yet\n\n",
    "key-with-a-space": "two words\n",
    "not-utf8": b"\xff\xfe",
}


@pytest.mark.parametrize("content", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_an_unusable_key_file_stops_the_start(tmp_path: Path, content: str | bytes | None) -> None:
    secret = tmp_path / "api-keys"
    if isinstance(content, bytes):
        secret.write_bytes(content)
    elif content is not None:
        secret.write_text(content)
    with pytest.raises(ApiKeyError, match="CNN_API_KEYS_FILE") as raised:
        load_keys(Settings(api_keys_file=secret))
    assert "two words" not in str(raised.value)  # names the line, never the key


def test_a_key_with_a_forbidden_character_is_refused_naming_its_position() -> None:
    with pytest.raises(ApiKeyError, match="CNN_API_KEYS entry 2") as raised:
        load_keys(Settings(api_keys=SecretStr("good-key,bad\tkey")))
    assert "bad" not in str(raised.value)


def test_an_empty_variable_means_no_keys() -> None:
    assert load_keys(Settings(api_keys=SecretStr(" , "))) == ()


def test_the_keys_do_not_show_in_the_settings_repr() -> None:
    assert KEYS[0] not in repr(Settings(api_keys=SecretStr(KEYS[0])))


def test_the_cli_refuses_to_start_with_an_unreadable_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CNN_API_KEYS_FILE", str(tmp_path / "absent"))
    assert cli.main(["--port", "0"]) == 2
    assert "CNN_API_KEYS_FILE" in capsys.readouterr().err


# --------------------------------------------------------------------------- clients


def test_the_python_client_sends_its_api_key() -> None:
    # A fresh app each: the client sets the header on the httpx client it is given.
    with Client(http=_app(api_keys=SecretStr(KEYS[1])), api_key=KEYS[1]) as api:
        assert api.info()["service"] == "cnn-service"
    wrong = Client(http=_app(api_keys=SecretStr(KEYS[1])), api_key="wrong")
    with wrong as api, pytest.raises(ServiceError) as refused:
        api.info()
    assert refused.value.status == 401


@pytest.mark.slow
def test_a_real_server_guards_its_routes_and_tritonclient_passes_the_key() -> None:
    http = pytest.importorskip("tritonclient.http")
    utils = pytest.importorskip("tritonclient.utils")
    with serve(env={"CNN_API_KEYS": ",".join(KEYS)}) as base_url:
        assert httpx.get(f"{base_url}/v1/info").status_code == 401
        if httpx.get(f"{base_url}/v2/health/live").status_code == 404:
            pytest.skip("the V2 routes are not in this build yet (issue 11)")
        triton = http.InferenceServerClient(base_url.removeprefix("http://"))
        assert triton.is_server_live()  # the probes need no key
        with pytest.raises(utils.InferenceServerException, match=r"401|API key"):
            triton.get_server_metadata()
        metadata = triton.get_server_metadata(headers=_bearer(KEYS[0]))
        assert metadata["name"] == "cnn-service"
        triton.close()
        del triton  # tritonclient.http joins its gevent pool again in __del__: let that
        gc.collect()  # happen here, not on a later test's TestClient thread (it raises there)


def test_explicit_model_control_needs_a_key_when_keys_are_configured() -> None:
    c = _app(api_keys=SecretStr(KEYS[0]), model_control_mode="explicit")
    path = "/v2/repository/models/digits/unload"
    assert c.post(path).status_code == 401
    assert c.get("/v2/models/digits/ready", headers=_bearer(KEYS[0])).status_code == 200
    assert c.post(path, headers=_bearer(KEYS[0])).status_code == 200
    assert c.get("/v2/models/digits/ready", headers=_bearer(KEYS[0])).status_code == 400
