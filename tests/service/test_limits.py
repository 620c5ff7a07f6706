"""Each configured limit refuses with 413 before anything large is allocated or computed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson
import pytest

import cnncore
from service.routes import conv

from .wire import assert_problem, client, to_wire

POOL = "/v1/pool2d/forward"


def _chunks(body: bytes, size: int = 1024) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


@pytest.fixture(scope="module")
def small_body():
    return client(max_body_bytes=10_000)


def test_body_over_the_limit_is_413(small_body) -> None:
    body = {"x": np.zeros((1, 1, 100, 100)).tolist(), "kernel_size": 2}
    assert_problem(small_body.post(POOL, json=body), 413)


def test_chunked_body_without_content_length_is_counted(small_body) -> None:
    body = orjson.dumps({"x": np.zeros((1, 1, 100, 100)).tolist(), "kernel_size": 2})
    response = small_body.post(
        POOL, content=_chunks(body), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


def test_body_under_the_limit_passes(small_body) -> None:
    assert small_body.post(POOL, json={"x": [[[[1.0]]]], "kernel_size": 1}).status_code == 200


@pytest.mark.parametrize("form", ["list", "data", "b64"])
def test_elements_over_the_limit_are_413(form: str) -> None:
    api = client(max_elements=15)
    body = {"x": to_wire(np.zeros((1, 1, 4, 4)), form), "kernel_size": 2}
    assert_problem(api.post(POOL, json=body), 413, ["x"])


def test_declared_shape_of_1e14_elements_is_413_before_allocation() -> None:
    # Allocating 10^14 float64 would need 800 TB: the 413 proves the check came first.
    x = {"shape": [10**7, 10**7], "dtype": "float64", "b64": "AAAA"}
    problem = assert_problem(client().post(POOL, json={"x": x, "kernel_size": 1}), 413, ["x"])
    assert "100000000000000" in problem["detail"]


def test_flops_over_the_limit_are_413_before_computing(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("computed despite the FLOP limit")

    monkeypatch.setattr(cnncore, "conv2d_forward", refuse)
    body = {"x": np.zeros((1, 1, 8, 8)).tolist(), "w": np.zeros((1, 1, 3, 3)).tolist()}
    flops = cnncore.conv2d_geometry((1, 1, 8, 8), (1, 1, 3, 3)).info.flops
    api = client(max_flops=flops - 1)
    problem = assert_problem(api.post("/v1/conv2d/forward", json=body), 413)
    assert "CNN_MAX_FLOPS" in problem["detail"]
    assert conv.cnncore.conv2d_forward is refuse  # the route would have called it


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(
            "/v1/conv2d/backward",
            {"x": [[[[1.0, 2.0]]]], "w": [[[[1.0]]]], "dout": [[[[1.0, 1.0]]]]},
            id="conv2d-backward",
        ),
        pytest.param(
            "/v1/pool2d/backward",
            {"x": [[[[1.0, 2.0]]]], "kernel_size": 1, "dout": [[[[1.0, 1.0]]]]},
            id="pool2d-backward",
        ),
        pytest.param(
            "/v1/linear/backward", {"x": [[1.0]], "w": [[1.0]], "dout": [[1.0]]}, id="linear"
        ),
    ],
)
def test_every_computing_route_checks_the_flop_budget(path: str, body: dict) -> None:
    assert_problem(client(max_flops=1).post(path, json=body), 413)


def test_working_memory_over_the_limit_is_413() -> None:
    api = client(max_request_bytes=1000)
    body = {"x": np.zeros((2, 100)).tolist(), "w": np.zeros((100, 3)).tolist()}
    problem = assert_problem(api.post("/v1/linear/forward", json=body), 413)
    assert "CNN_MAX_REQUEST_BYTES" in problem["detail"]
