"""/metrics: request counts by route template, latency, rejections; multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.app import create_app
from service.metrics import MULTIPROC_ENV
from service.settings import Settings
from service.testing import free_port, serve


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(Settings(max_body_bytes=1000, max_elements=10)))


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _requests(route: str, method: str = "GET", status: str = "200") -> float:
    return _value("cnn_requests_total", route=route, method=method, status=status)


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for name in ("cnn_requests_total", "cnn_request_duration_seconds", "cnn_rejected_total"):
        assert f"# TYPE {name}" in r.text
    assert "cnn_computations_in_flight 0.0" in r.text


@pytest.mark.parametrize(
    ("method", "path", "route", "status"),
    [
        ("GET", "/health/live", "/health/live", "200"),
        ("POST", "/health/live", "/health/live", "405"),
        ("GET", "/static/swagger-ui.css", "/static", "200"),
        ("GET", "/no/such/path/4711", "other", "404"),
        ("GET", "/openapi.json", "/openapi.json", "200"),
    ],
    ids=["route", "wrong-method", "mount", "unknown-path", "openapi"],
)
def test_requests_are_counted_by_route_template(
    client: TestClient, method: str, path: str, route: str, status: str
) -> None:
    before = _requests(route, method, status)
    latency_before = _value("cnn_request_duration_seconds_count", route=route)
    assert client.request(method, path).status_code == int(status)
    assert _requests(route, method, status) == before + 1
    assert _value("cnn_request_duration_seconds_count", route=route) == latency_before + 1


def test_raw_paths_never_become_labels(client: TestClient) -> None:
    client.get("/no/such/path/4711")
    client.request("BREW", "/health/live")
    text = client.get("/metrics").text
    assert "/no/such" not in text
    assert 'method="BREW"' not in text


def test_computation_is_counted(client: TestClient) -> None:
    route = "/v1/conv2d/forward"
    before = _requests(route, "POST")
    r = client.post(route, json={"x": [[[[1.0, 2.0], [3.0, 4.0]]]], "w": [[[[1.0]]]]})
    assert r.status_code == 200
    assert _requests(route, "POST") == before + 1


@pytest.mark.parametrize(
    ("limit", "body"),
    [
        ("body", b'{"x": [' + b"0," * 600 + b"0]}"),
        ("elements", b'{"x": {"shape": [1, 1, 100, 100], "b64": "AAAA"}, "w": [[[[1.0]]]]}'),
    ],
)
def test_rejections_are_counted_by_limit(client: TestClient, limit: str, body: bytes) -> None:
    before = _value("cnn_rejected_total", limit=limit)
    r = client.post(
        "/v1/conv2d/forward", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert _value("cnn_rejected_total", limit=limit) == before + 1
    assert _requests("/v1/conv2d/forward", "POST", "413") >= 1


_WORKER = textwrap.dedent(
    """
    import sys
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient
    from service.app import create_app

    client = TestClient(create_app())
    for _ in range(int(sys.argv[1])):
        assert client.get("/health/live").status_code == 200
    if sys.argv[2] == "scrape":
        sys.stdout.write(client.get("/metrics").text)
    """
)


def _worker(requests: int, action: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, str(requests), action],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow  # two Python processes importing the service
def test_multiprocess_mode_aggregates_every_worker(tmp_path: Path) -> None:
    # Two processes sharing PROMETHEUS_MULTIPROC_DIR, as uvicorn workers do: the second
    # one's /metrics reports the requests both served.
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    _worker(3, "exit", env)
    text = _worker(2, "scrape", env)
    line = 'cnn_requests_total{method="GET",route="/health/live",status="200"} 5.0'
    assert line in text
    assert "cnn_computations_in_flight 0.0" in text
    assert any(tmp_path.iterdir())


@pytest.mark.slow
def test_metrics_add_up_across_real_workers() -> None:
    port = free_port()
    argv = [sys.executable, "-m", "service", "--port", str(port), "--workers", "2"]
    with serve(argv, port=port, env={MULTIPROC_ENV: ""}) as base_url:
        for _ in range(20):  # a new connection each time, so both workers get some
            assert httpx.get(f"{base_url}/v1/info").status_code == 200
        text = httpx.get(f"{base_url}/metrics").text
    # Every worker's requests in one scrape, whichever worker answered it.
    assert 'cnn_requests_total{method="GET",route="/v1/info",status="200"} 20.0' in text
