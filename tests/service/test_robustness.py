"""Fast regression tests for what fuzzing and fault injection found, and the memory budget."""

from __future__ import annotations

import asyncio
import math
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from starlette.types import Message, Receive, Scope, Send

import cnncore
from cnncore.network_shapes import Pool2dSpec
from service.dataplane import network_budget
from service.middleware import BodyLimitMiddleware
from service.settings import GiB, Settings

from .wire import assert_problem, client

API = client()
SPEC: dict[str, Any] = API.get("/openapi.json").json()
LINEAR = "/v1/linear/forward"
W = [[1.0], [1.0]]


# --------------------------------------------------------------------------- booleans


@pytest.mark.parametrize(
    "x",
    [
        pytest.param([[True, 2.0]], id="nested-list"),
        pytest.param([[2.0, False]], id="nested-list-last"),
        pytest.param({"shape": [1, 2], "data": [True, 2.0]}, id="flat-data"),
    ],
)
def test_a_boolean_among_numbers_is_422_not_read_as_1(x: Any) -> None:
    # numpy reads [true, 2.0] as [1.0, 2.0]; the schema says numbers (found by schemathesis).
    assert_problem(API.post(LINEAR, json={"x": x, "w": W}), 422, ["x"])


def test_boolean_flags_elsewhere_do_not_make_numbers_fail() -> None:
    body = {"x": [[[[1.0, 2.0]]]], "kernel_size": 1, "ceil_mode": True}
    assert API.post("/v1/pool2d/forward", json=body).status_code == 200


# --------------------------------------------------------------------------- OpenAPI bounds


def _tensor_bounds(spec: dict[str, Any]) -> dict[str, Any]:
    x = spec["components"]["schemas"]["LinearForwardRequest"]["properties"]["x"]
    nested, flat, b64 = x["anyOf"]
    return {
        "dim": nested["anyOf"][0]["maxItems"],
        "shape": flat["properties"]["shape"]["items"]["maximum"],
        "data": flat["properties"]["data"]["maxItems"],
        "b64": b64["properties"]["b64"]["maxLength"],
    }


def test_request_tensors_in_openapi_are_bounded_by_the_instance_element_limit() -> None:
    spec = client(max_elements=64).get("/openapi.json").json()
    # 64 float64 values are 512 bytes: 171 groups of 3 bytes, 4 characters each.
    assert _tensor_bounds(spec) == {"dim": 64, "shape": 64, "data": 64, "b64": 684}


def test_response_tensors_are_not_bounded_by_the_element_limit() -> None:
    out = SPEC["components"]["schemas"]["ForwardResponse"]["properties"]["out"]
    assert "maxItems" not in out["anyOf"][1]["properties"]["data"]


@pytest.mark.parametrize("path", [p for p, m in SPEC["paths"].items() if "post" in m])
def test_every_post_route_documents_its_problem_responses(path: str) -> None:
    responses = SPEC["paths"][path]["post"]["responses"]
    if path.startswith("/v2/"):  # the protocol's statuses: no 415 or 422 on /v2
        expected = {"400", "408", "413", "503"} | ({"404"} if "{model}" in path else set())
        assert "415" not in responses
    else:
        expected = {"400", "408", "413", "422"} | ({"503"} if path != "/v1/shapes" else set())
    for status in expected:
        assert "application/problem+json" in responses[status]["content"], status


# --------------------------------------------------------------------------- body timeout


async def _run_middleware(receive: Receive, timeout: float) -> list[Message]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    middleware = BodyLimitMiddleware(app, max_bytes=1000, timeout=timeout)
    await asyncio.wait_for(middleware(scope, receive, send), 5)
    return sent


def test_a_client_that_stops_sending_gets_408_at_the_deadline() -> None:
    calls = 0

    async def stalled() -> Message:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(3600)  # the client never sends the rest
        raise AssertionError("unreachable")

    sent = asyncio.run(_run_middleware(stalled, timeout=0.2))
    assert sent[0]["status"] == 408
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]


def test_waiting_for_disconnect_after_the_body_has_no_deadline() -> None:
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    assert asyncio.run(_run_middleware(receive, timeout=0.2))[0]["status"] == 200


# --------------------------------------------------------------------------- memory budget


def _post_examples() -> list[Any]:
    found = []
    for path, methods in SPEC["paths"].items():
        if "post" not in methods or path == "/v1/shapes" or not path.startswith("/v1/"):
            continue  # /v2 infer's memory budget: tests/service/test_v2_protocol.py
        ref = methods["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        example = SPEC["components"]["schemas"][ref.rsplit("/", 1)[1]]["examples"][0]
        found.append(pytest.param(path, example, id=path))
    return found


@pytest.mark.parametrize(("path", "example"), _post_examples())
def test_every_computing_route_checks_working_memory(path: str, example: Any) -> None:
    problem = assert_problem(client(max_request_bytes=64).post(path, json=example), 413)
    assert "CNN_MAX_REQUEST_BYTES" in problem["detail"]


def test_default_memory_budget_is_safe_on_2_cores_and_24_gib() -> None:
    settings = Settings(max_concurrency=2)
    assert settings.max_request_bytes * settings.max_concurrency <= 24 * GiB // 2


def _peak_bytes(fn: Callable[[], Any]) -> int:
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _conv_backward(x: np.ndarray, w: np.ndarray, kw: dict[str, Any]) -> Any:
    out, cache = cnncore.conv2d_forward(x, w, **kw)
    return cnncore.conv2d_backward(np.ones_like(out), cache)


def _pool_backward(x: np.ndarray, kw: dict[str, Any]) -> Any:
    out, cache = cnncore.pool2d_forward(x, **kw)
    return cnncore.pool2d_backward(np.ones_like(out), cache)


def _linear_backward(x: np.ndarray, w: np.ndarray) -> Any:
    out, cache = cnncore.linear_forward(x, w)
    return cnncore.linear_backward(np.ones_like(out), cache)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_estimate_covers_the_measured_peak(rng: np.random.Generator, stride: int) -> None:
    x, w = rng.standard_normal((4, 8, 24, 24)), rng.standard_normal((16, 8, 3, 3))
    kw = {"stride": stride, "padding": 1}
    estimate = network_budget([cnncore.Conv2d(w, None, **kw)], x.shape, 8, backward=True)[1]
    inputs = x.nbytes + w.nbytes  # already allocated when the peak is measured
    assert _peak_bytes(lambda: _conv_backward(x, w, kw)) + inputs <= estimate


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_estimate_covers_the_measured_peak(rng: np.random.Generator, mode: str) -> None:
    x = rng.standard_normal((4, 8, 24, 24))
    kw = {"kernel_size": 3, "stride": 1, "padding": 1, "mode": mode}
    estimate = network_budget([Pool2dSpec(**kw)], x.shape, 8, backward=True)[1]
    assert _peak_bytes(lambda: _pool_backward(x, kw)) + x.nbytes <= estimate


def test_linear_estimate_covers_the_measured_peak(rng: np.random.Generator) -> None:
    x, w = rng.standard_normal((64, 4, 8, 8)), rng.standard_normal((256, 32))
    info = cnncore.linear_info(x.shape, w.shape, bias=False)
    peak = _peak_bytes(lambda: _linear_backward(x, w)) + x.nbytes + w.nbytes
    assert peak <= network_budget([cnncore.Linear(w, None)], x.shape, 8, backward=True)[1]
    assert math.prod(info.output_shape) == 64 * 32
