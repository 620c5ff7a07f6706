"""service.client.Client against the app in-process (the real server: test_e2e.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

import cnncore
from service.app import create_app
from service.client import Client, ServiceError
from service.settings import Settings
from tests.helpers import assert_close

ENCODINGS = ["b64", "list"]


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(max_elements=10_000))) as client:
        yield client


@pytest.fixture(params=ENCODINGS)
def api(request: pytest.FixtureRequest, http: TestClient) -> Client:
    return Client(http=http, encoding=request.param)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_forward_and_backward_match_cnncore(
    api: Client, rng: np.random.Generator, dtype: type
) -> None:
    x = rng.standard_normal((2, 4, 7, 6)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    kw = {"stride": 2, "padding": (1, 0), "groups": 2}
    out, meta = api.conv2d_forward(x, w, b, **kw)
    ref, cache = cnncore.conv2d_forward(x, w, b, **kw)
    assert out.dtype == dtype
    assert_close(out, ref)
    assert meta["output_shape"] == list(ref.shape)
    dout = rng.standard_normal(ref.shape).astype(dtype)
    dx, dw, db, _ = api.conv2d_backward(x, w, b, dout, **kw)
    for got, want in zip((dx, dw, db), cnncore.conv2d_backward(dout, cache), strict=True):
        assert got is not None
        assert got.dtype == dtype
        assert_close(got, want)


def test_conv2d_backward_without_bias_gives_no_db(api: Client, rng: np.random.Generator) -> None:
    x, w = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((3, 2, 2, 2))
    *_, db, meta = api.conv2d_backward(x, w, None, np.ones((1, 3, 3, 3)))
    assert db is None
    assert meta["param_count"] == 3 * 2 * 2 * 2


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool2d_matches_cnncore(api: Client, rng: np.random.Generator, mode: str) -> None:
    x = rng.standard_normal((2, 3, 6, 5))
    kw = {"kernel_size": 3, "stride": 2, "padding": 1, "mode": mode}
    out, _ = api.pool2d_forward(x, **kw)
    ref, cache = cnncore.pool2d_forward(x, **kw)
    assert_close(out, ref)
    dout = rng.standard_normal(ref.shape)
    dx, _ = api.pool2d_backward(x, dout, **kw)
    assert_close(dx, cnncore.pool2d_backward(dout, cache))


def test_linear_matches_cnncore(api: Client, rng: np.random.Generator) -> None:
    x, w, b = rng.standard_normal((3, 2, 5)), rng.standard_normal((10, 4)), rng.standard_normal(4)
    out, _ = api.linear_forward(x, w, b)
    ref, cache = cnncore.linear_forward(x, w, b)
    assert_close(out, ref)
    dout = rng.standard_normal(ref.shape)
    dx, dw, db, _ = api.linear_backward(x, w, b, dout)
    for got, want in zip((dx, dw, db), cnncore.linear_backward(dout, cache), strict=True):
        assert got is not None
        assert_close(got, want)


def test_integer_arrays_travel_as_float64(api: Client) -> None:
    out, meta = api.conv2d_forward(np.arange(9).reshape(1, 1, 3, 3), np.ones((1, 1, 2, 2), int))
    assert out.dtype == np.float64
    assert meta["dtype"] == "float64"
    np.testing.assert_array_equal(out, [[[[8, 12], [20, 24]]]])


def test_results_are_writable_native_arrays(api: Client) -> None:
    out, _ = api.conv2d_forward(np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 1, 1), ">f4"))
    out += 1  # frombuffer alone would give a read-only view
    assert out.dtype == np.dtype(np.float32)


def test_shapes_health_and_info(api: Client) -> None:
    layers = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "flatten"}]
    assert api.shapes([1, 3, 8, 8], layers)["output_shape"] == [1, 144]
    assert api.health() == {"status": "ok"}
    assert api.health("live") == {"status": "ok"}
    assert api.info()["limits"]["max_elements"] == 10_000


def test_problem_becomes_service_error(api: Client) -> None:
    with pytest.raises(ServiceError) as caught:
        api.conv2d_forward(np.ones((1, 3, 4, 4)), np.ones((2, 2, 3, 3)))
    err = caught.value
    assert err.status == 422
    assert err.title.startswith("Unprocessable")
    assert err.errors[0]["loc"] == ["w"]
    assert "3" in err.detail
    assert err.problem["status"] == 422


def test_limit_becomes_service_error(api: Client) -> None:
    with pytest.raises(ServiceError) as caught:
        api.conv2d_forward(np.ones((1, 1, 200, 200)), np.ones((1, 1, 1, 1)))
    assert caught.value.status == 413
    assert caught.value.errors[0]["loc"] == ["x"]


def test_non_finite_input_is_refused(api: Client) -> None:
    with pytest.raises(ServiceError) as caught:
        api.conv2d_forward(np.full((1, 1, 2, 2), np.nan), np.ones((1, 1, 1, 1)))
    assert caught.value.status in (400, 422)


def test_network_failure_is_a_service_error_too() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        Client(transport=httpx.MockTransport(refuse)) as api,
        pytest.raises(ServiceError) as caught,
    ):
        api.info()
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_non_json_error_body_still_gives_a_problem() -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    with Client(transport=httpx.MockTransport(proxy)) as api, pytest.raises(ServiceError) as caught:
        api.health()
    assert caught.value.status == 502
    assert caught.value.problem["detail"].startswith("<html>")


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="encoding"):
        Client(encoding="msgpack")  # type: ignore[arg-type]
