"""End to end: the real server process on a loopback port, driven by service.client."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import cnncore
from service.client import Client, ServiceError
from service.testing import serve
from tests.helpers import assert_close

from .wire import in_flight

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve() as url:
        yield url


@pytest.fixture
def api(base_url: str) -> Iterator[Client]:
    with Client(base_url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_over_http_equals_cnncore(
    api: Client, rng: np.random.Generator, dtype: type
) -> None:
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    kw = {"stride": 2, "padding": 1, "dilation": 1}
    out, meta = api.conv2d_forward(x, w, b, **kw)
    ref, cache = cnncore.conv2d_forward(x, w, b, **kw)
    assert out.dtype == dtype
    assert_close(out, ref)
    assert meta["output_shape"] == list(ref.shape)
    dout = rng.standard_normal(ref.shape).astype(dtype)
    grads = api.conv2d_backward(x, w, b, dout, **kw)[:3]
    for got, want in zip(grads, cnncore.conv2d_backward(dout, cache), strict=True):
        assert got is not None
        assert_close(got, want)


def test_error_surfaces_as_service_error_with_problem_details(api: Client) -> None:
    with pytest.raises(ServiceError) as caught:
        api.conv2d_forward(np.ones((1, 3, 4, 4)), np.ones((2, 3, 5, 5)))
    err = caught.value
    assert err.status == 422
    assert err.problem["type"].startswith("urn:cnn-service:problem:")
    assert err.errors
    assert all("loc" in e and "msg" in e for e in err.errors)


def test_operations_endpoints(api: Client, base_url: str) -> None:
    assert api.health("live") == {"status": "ok"}
    info = api.info()
    assert info["limits"]["max_elements"] > 0
    metrics = httpx.get(f"{base_url}/metrics").text
    assert 'cnn_requests_total{method="GET",route="/v1/info",status="200"}' in metrics


def test_readme_client_example_runs(base_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    section = README.read_text().split("### Python client", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code
    exec(code.group(1).replace("http://127.0.0.1:8000", base_url), {})
    assert "422" in capsys.readouterr().out


def test_liveness_answers_during_a_heavy_computation(
    base_url: str, rng: np.random.Generator
) -> None:
    # About 1.8e10 FLOPs (a couple of seconds of BLAS), just under the default budget.
    x = rng.standard_normal((4, 64, 64, 64))
    w = rng.standard_normal((128, 64, 5, 5))
    dout = rng.standard_normal((4, 128, 60, 60))
    done = threading.Event()

    def heavy() -> None:
        with Client(base_url, timeout=120) as client:
            client.conv2d_backward(x, w, None, dout)
        done.set()

    worker = threading.Thread(target=heavy, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while in_flight(base_url) < 1:
        assert time.monotonic() < deadline, "the computation never started"
        assert not done.is_set(), "the request finished before it was seen computing"
        time.sleep(0.01)
    # Liveness must be answered while the computation holds its slot (the event loop is
    # not blocked by numpy). How fast is the benchmark's business (bench_load), not a
    # test's: the client's 30 s timeout is only a safety net.
    answered_while_busy = 0
    with httpx.Client(base_url=base_url, timeout=30) as http:
        while not done.is_set() and answered_while_busy < 3:
            assert http.get("/health/live").status_code == 200
            answered_while_busy += in_flight(base_url) >= 1
            time.sleep(0.02)
    worker.join(timeout=120)
    assert done.is_set(), "the heavy request did not finish"
    assert answered_while_busy >= 3, "the computation ended before liveness could be probed"
