"""During the shutdown delay a replica still answers, and tells kept-alive clients to close."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.testing import serve_process

LINEAR = "/v1/linear/forward"
BODY = {"x": [[1.0, 2.0]], "w": [[1.0], [1.0]]}


def test_responses_say_connection_close_only_while_shutting_down() -> None:
    app = create_app(Settings())
    client = TestClient(app)
    assert "connection" not in client.post(LINEAR, json=BODY).headers
    app.state.ready = False  # what SIGTERM does (service.app._not_ready_on_exit_signals)
    for r in (client.post(LINEAR, json=BODY), client.get("/v1/no-such-route")):
        assert r.headers["connection"] == "close"
    assert client.post(LINEAR, json=BODY).json()["out"] == [[3.0]]  # still served


@pytest.mark.slow
def test_a_kept_alive_client_is_answered_then_closed_during_the_delay() -> None:
    with (
        serve_process(env={"CNN_SHUTDOWN_DELAY": "3"}) as (base_url, proc),
        httpx.Client(base_url=base_url, timeout=10) as http,
    ):
        assert "connection" not in http.post(LINEAR, json=BODY).headers
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2.5
        while http.get("/health/ready").status_code != 503:
            assert time.monotonic() < deadline, "readiness did not turn 503"
        r = http.post(LINEAR, json=BODY)  # on a kept-alive connection, within the delay
        assert r.status_code == 200
        assert r.json()["out"] == [[3.0]]
        assert r.headers["connection"] == "close"
