"""GET /health/live, /health/ready and /v1/info."""

from __future__ import annotations

import os

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import __version__
from service.app import create_app
from service.problems import PROBLEM_MEDIA_TYPE
from service.settings import Settings


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(Settings(max_elements=1234, max_concurrency=3)))


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
def test_probes_answer_ok(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_ready_is_503_problem_while_shutting_down(client: TestClient) -> None:
    client.app.state.ready = False  # type: ignore[attr-defined]
    r = client.get("/health/ready")
    assert r.status_code == 503
    assert r.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert r.headers["retry-after"] == "1"
    assert "shutting down" in r.json()["detail"]
    assert client.get("/health/live").status_code == 200  # still alive, just not ready


def test_info_reports_versions_blas_limits_and_pid(client: TestClient) -> None:
    info = client.get("/v1/info").json()
    assert info["version"] == __version__
    assert info["numpy"] == np.__version__
    assert info["pid"] == os.getpid()
    assert info["limits"]["max_elements"] == 1234
    assert info["limits"]["max_concurrency"] == 3
    assert info["limits"] == Settings(max_elements=1234, max_concurrency=3).limits()
    assert all(lib["name"] for lib in info["blas"])


def test_probes_and_info_are_in_openapi(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health/live", "/health/ready", "/v1/info", "/metrics"} <= set(paths)
