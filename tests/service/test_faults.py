"""Faults against the real server process: disconnects, slow clients, SIGTERM under load.

Every server listens on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from service.testing import serve, serve_process

from .wire import in_flight, to_wire

pytestmark = pytest.mark.slow

CONV_BACKWARD = "/v1/conv2d/backward"


def _heavy_body(rng: np.random.Generator) -> bytes:
    """A convolution backward of about 1e10 FLOPs: a second or more of BLAS on 2 cores."""
    arrays = {
        "x": rng.standard_normal((4, 64, 48, 48)),
        "w": rng.standard_normal((128, 64, 5, 5)),
        "dout": rng.standard_normal((4, 128, 44, 44)),
    }
    return orjson.dumps({**{k: to_wire(a, "b64") for k, a in arrays.items()}, "encoding": "b64"})


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def _connect(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _headers(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _read_until_closed(sock: socket.socket) -> str:
    """Everything the server sends until it closes the connection (the 408 says
    ``Connection: close``); headers and body may come in separate segments."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _small_request_succeeds(base_url: str) -> bool:
    body = {"x": [[1.0, 2.0]], "w": [[1.0], [1.0]]}
    return httpx.post(f"{base_url}/v1/linear/forward", json=body, timeout=30).status_code == 200


# --------------------------------------------------------------------------- disconnects


@pytest.fixture(scope="module")
def one_slot() -> Any:
    env = {"CNN_MAX_CONCURRENCY": "1", "CNN_QUEUE_TIMEOUT": "30", "CNN_BODY_TIMEOUT": "1"}
    with serve(env=env) as url:
        yield url


def test_disconnect_mid_upload_leaves_the_server_serving(one_slot: str) -> None:
    body = b'{"x": [[1.0, 2.0]], "w": [[1.0], [1.0]]}'
    with _connect(one_slot) as sock:
        sock.sendall(_headers("/v1/linear/forward", 10 * len(body)) + body)  # 9/10 missing
    assert in_flight(one_slot) == 0
    assert _small_request_succeeds(one_slot)


def test_disconnect_mid_computation_frees_the_slot(one_slot: str, rng: np.random.Generator) -> None:
    body = _heavy_body(rng)
    with _connect(one_slot) as sock:
        sock.sendall(_headers(CONV_BACKWARD, len(body)) + body)
        _wait_for(lambda: in_flight(one_slot) >= 1, 30, "the computation started")
    # The client is gone; numpy cannot be interrupted, but the slot comes back when it ends.
    _wait_for(lambda: in_flight(one_slot) == 0, 60, "the slot was freed")
    assert _small_request_succeeds(one_slot)  # one slot only: a leak would make this a 503


def test_a_client_trickling_its_body_is_cut_off_with_408(one_slot: str) -> None:
    body = b'{"x": [[1.0, 2.0]], "w": [[1.0], [1.0]]}'
    with _connect(one_slot) as sock:
        sock.sendall(_headers("/v1/linear/forward", len(body)))
        for byte in body[:20]:  # one byte every 0.1 s: 2 s for 20, the timeout is 1 s
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break  # the server closed the connection
            time.sleep(0.1)
        answer = _read_until_closed(sock)
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert "application/problem+json" in answer
    # The body timeout cut it off (the socket's 10 s timeout is only a safety net).
    assert "did not arrive within 1 s" in answer
    assert _small_request_succeeds(one_slot)


def test_a_client_that_stops_sending_is_cut_off_with_408(one_slot: str) -> None:
    with _connect(one_slot) as sock:
        sock.sendall(_headers("/v1/linear/forward", 100) + b'{"x": [[1.0')
        answer = _read_until_closed(sock)  # nothing more is ever sent
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert "did not arrive within 1 s" in answer  # CNN_BODY_TIMEOUT, not another limit


# --------------------------------------------------------------------------- SIGTERM


def _post_in_thread(base_url: str, body: bytes, results: list[Any]) -> threading.Thread:
    def post() -> None:
        try:
            response = httpx.post(
                f"{base_url}{CONV_BACKWARD}",
                content=body,
                headers={"content-type": "application/json"},
                timeout=60,
            )
            results.append(response.status_code)
        except httpx.HTTPError as exc:
            results.append(exc)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def _refusal(base_url: str, patience: float) -> httpx.TransportError:
    """The first transport error other than a timeout that ``/health/live`` meets."""
    deadline = time.monotonic() + patience
    while True:
        assert time.monotonic() < deadline, "new connections were never refused"
        try:
            httpx.get(f"{base_url}/health/live", timeout=5)  # not handled the signal yet
        except httpx.TimeoutException:
            pass  # queued by the kernel on a listener about to close; try again
        except httpx.TransportError as exc:
            return exc
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_finishes_in_flight_work_and_refuses_new(
    rng: np.random.Generator, workers: int
) -> None:
    grace = 30
    env = {
        "CNN_MAX_CONCURRENCY": "2",
        "CNN_GRACEFUL_TIMEOUT": str(grace),
        "CNN_WORKERS": str(workers),
    }
    with serve_process(env=env) as (base_url, proc):
        body = _heavy_body(rng)
        results: list[Any] = []
        threads = [_post_in_thread(base_url, body, results) for _ in range(2)]
        _wait_for(lambda: in_flight(base_url) >= 2, 30, "both computations started")
        proc.send_signal(signal.SIGTERM)
        # New connections are refused (one worker) or reset (several: the supervisor still
        # holds the socket) while the server is still finishing its work. How soon after
        # the signal depends on the machine's load, so poll; the grace period is the net.
        refused = _refusal(base_url, grace)
        assert not isinstance(refused, httpx.TimeoutException)
        assert proc.poll() is None, "refused only once the server had exited"
        for thread in threads:
            thread.join(timeout=grace)
        assert results == [200, 200]  # both finished within the grace period
        proc.wait(timeout=grace + 5)  # a safety net
        # uvicorn re-raises the signal it handled once it has shut down cleanly.
        assert proc.returncode in (0, -signal.SIGTERM)


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_is_503_while_shutting_down(workers: int) -> None:
    # The checks below must fit in the delay; 4 s leaves room on a busy machine.
    env = {"CNN_SHUTDOWN_DELAY": "4", "CNN_WORKERS": str(workers)}
    with serve_process(env=env) as (base_url, proc):
        proc.send_signal(signal.SIGTERM)
        _wait_for(
            lambda: httpx.get(f"{base_url}/health/ready", timeout=5).status_code == 503,
            3,
            "readiness reported shutting down",
        )
        ready = httpx.get(f"{base_url}/health/ready", timeout=5)
        assert ready.headers["content-type"] == "application/problem+json"
        assert "Retry-After" in ready.headers
        # Still serving during the delay: load balancers stop routing here first.
        assert httpx.get(f"{base_url}/health/live", timeout=5).status_code == 200
        assert _small_request_succeeds(base_url)
        proc.wait(timeout=15)
        assert proc.returncode in (0, -signal.SIGTERM)
