"""Every class of bad input gets its problem details status, names the field, echoes little."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from .wire import assert_problem, client, to_wire

POOL = "/v1/pool2d/forward"
X = [[[[1.0, 2.0], [3.0, 4.0]]]]


@pytest.fixture(scope="module")
def api():
    return client()


def _raw(api, path: str, body: bytes, **headers: str):
    return api.post(path, content=body, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"x": [[[[1, 2]]]], "kernel_size": 2', id="truncated"),
        pytest.param(b"{'x': 1}", id="single-quotes"),
        pytest.param(b'{"x": [[[[NaN, 2], [3, 4]]]], "kernel_size": 2}', id="nan"),
        pytest.param(b'{"x": [[[[Infinity, 2], [3, 4]]]], "kernel_size": 2}', id="infinity"),
        pytest.param(b'{"x": [[[[1e400, 2], [3, 4]]]], "kernel_size": 2}', id="overflowing-double"),
        pytest.param(b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", id="nested-5000-deep"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_malformed_json_is_400(api, body: bytes) -> None:
    assert_problem(_raw(api, POOL, body), 400)


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        pytest.param(POOL, {"x": [[[[1, 2], [3]]]], "kernel_size": 1}, ["x"], id="ragged"),
        pytest.param(POOL, {"x": [[[[1, "a"], [3, 4]]]], "kernel_size": 1}, ["x"], id="string"),
        pytest.param(POOL, {"x": [[[[None, 1]]]], "kernel_size": 1}, ["x"], id="null-in-tensor"),
        pytest.param(POOL, {"x": [], "kernel_size": 1}, ["x"], id="empty-tensor"),
        pytest.param(POOL, {"x": "abc", "kernel_size": 1}, ["x"], id="tensor-is-string"),
        pytest.param(POOL, {"x": [[[[[[[[[1]]]]]]]]], "kernel_size": 1}, ["x"], id="9-d"),
        pytest.param(
            POOL,
            {"x": [[[[1e300]]]], "kernel_size": 1, "dtype": "float32"},
            ["x"],
            id="f32-overflow",
        ),
        pytest.param(POOL, {"x": X, "kernel_size": True}, ["kernel_size"], id="bool-kernel"),
        pytest.param(
            POOL, {"x": X, "kernel_size": 2, "stride": True}, ["stride"], id="bool-stride"
        ),
        pytest.param(POOL, {"x": X, "kernel_size": "2"}, ["kernel_size"], id="string-int"),
        pytest.param(POOL, {"x": X, "kernel_size": 2.0}, ["kernel_size"], id="float-int"),
        pytest.param(POOL, {"x": X, "kernel_size": 10**30}, ["kernel_size"], id="absurd-int"),
        pytest.param(POOL, {"x": X, "kernel_size": -1}, ["kernel_size"], id="negative"),
        pytest.param(POOL, {"x": X, "kernel_size": [1, 2, 3]}, ["kernel_size"], id="triple"),
        pytest.param(
            POOL, {"x": X, "kernel_size": 2, "ceil_mode": 1}, ["ceil_mode"], id="int-bool"
        ),
        pytest.param(POOL, {"x": X, "kernel_size": 2, "mode": "min"}, ["mode"], id="bad-mode"),
        pytest.param(POOL, {"x": X, "kernel_size": 2, "strides": 1}, ["strides"], id="unknown"),
        pytest.param(POOL, {"x": X}, ["kernel_size"], id="missing"),
        pytest.param(POOL, {"kernel_size": 2}, ["x"], id="missing-tensor"),
        pytest.param(POOL, {"x": X, "kernel_size": 2, "encoding": "hex"}, ["encoding"], id="enc"),
        pytest.param(POOL, {"x": X, "kernel_size": 2, "dtype": "int8"}, ["dtype"], id="dtype"),
        pytest.param(POOL, {"x": X, "kernel_size": 3}, ["x"], id="window-larger-than-input"),
        pytest.param(POOL, {"x": X, "kernel_size": 2, "padding": 2}, ["padding"], id="pad-gt-half"),
        pytest.param(POOL, [1, 2], [], id="body-is-array"),
        pytest.param(
            "/v1/pool2d/backward",
            {"x": X, "kernel_size": 2, "dout": [[[[1.0, 2.0]]]]},
            ["dout"],
            id="pool-dout-shape",
        ),
        pytest.param(
            "/v1/conv2d/forward",
            {"x": X, "w": [[[[1.0]], [[1.0]]]]},
            ["w"],
            id="conv-channels",
        ),
        pytest.param(
            "/v1/conv2d/forward",
            {"x": [[[[1.0]], [[1.0]]]], "w": [[[[1.0]]], [[[1.0]]], [[[1.0]]]], "groups": 2},
            ["w"],
            id="conv-groups",
        ),
        pytest.param(
            "/v1/conv2d/forward",
            {"x": X, "w": [[[[1.0]]]], "b": [1.0, 2.0]},
            ["b"],
            id="conv-bias-length",
        ),
        pytest.param(
            "/v1/conv2d/forward",
            {"x": X, "w": [[[[1.0]]]], "padding": "same", "stride": 2},
            ["padding"],
            id="conv-same-stride",
        ),
        pytest.param(
            "/v1/conv2d/backward",
            {"x": X, "w": [[[[1.0]]]], "dout": [[[[1.0]]]]},
            ["dout"],
            id="conv-dout-shape",
        ),
        pytest.param(
            "/v1/linear/forward", {"x": [[1.0, 2.0]], "w": [[1.0]]}, ["w"], id="linear-rows"
        ),
        pytest.param(
            "/v1/linear/forward",
            {"x": [[1.0]], "w": [[1.0]], "b": [1.0, 2.0]},
            ["b"],
            id="linear-bias-length",
        ),
        pytest.param("/v1/linear/forward", {"x": [1.0], "w": [[1.0]]}, ["x"], id="linear-1d-x"),
        pytest.param(
            "/v1/linear/backward",
            {"x": [[1.0]], "w": [[1.0]], "dout": [[1.0, 2.0]]},
            ["dout"],
            id="linear-dout-shape",
        ),
    ],
)
def test_invalid_input_is_422_naming_the_field(api, path: str, body: Any, loc: list) -> None:
    problem = assert_problem(api.post(path, json=body), 422, loc)
    assert problem["detail"]


@pytest.mark.parametrize(
    ("tensor", "why"),
    [
        pytest.param({"shape": [1, 1, 2, 2], "b64": "!!!!" * 8}, "b64", id="not-base64"),
        pytest.param({"shape": [1, 1, 2, 2], "b64": "AAAA"}, "b64", id="too-short"),
        pytest.param(
            {"shape": [1, 1, 2, 2], "dtype": "float32", "b64": to_wire(np.zeros(5), "b64")["b64"]},
            "b64",
            id="wrong-length",
        ),
        pytest.param(
            {"shape": [1, 1, 2, 2], "b64": to_wire(np.full(4, np.nan), "b64")["b64"]},
            "finite",
            id="nan-in-b64",
        ),
        pytest.param({"shape": [1, 1, 2, 2], "data": [1, 2, 3]}, "4", id="data-too-short"),
        pytest.param({"shape": [1, 1, 2, 2], "data": [1, 2, 3, 4], "b64": ""}, "one", id="both"),
        pytest.param({"shape": [1, 1, 0, 2], "data": []}, "shape", id="zero-dim"),
        pytest.param({"shape": [1, 1, True, 2], "data": [1, 2]}, "shape", id="bool-dim"),
        pytest.param({"shape": [4], "data": [1, 2, 3, 4], "dtype": "int32"}, "dtype", id="dtype"),
        pytest.param({"shape": [4], "data": [1, 2, 3, 4], "extra": 1}, "extra", id="extra-key"),
    ],
)
def test_bad_object_tensor_is_422(api, tensor: dict, why: str) -> None:
    problem = assert_problem(api.post(POOL, json={"x": tensor, "kernel_size": 1}), 422, ["x"])
    assert why in problem["errors"][0]["msg"]


def test_union_error_is_one_readable_message(api) -> None:
    problem = assert_problem(api.post(POOL, json={"x": X, "kernel_size": True}), 422)
    assert problem["errors"] == [
        {
            "loc": ["kernel_size"],
            "msg": "expected an integer from 1 to 1024 or a pair [h, w] of them, got true",
        }
    ]


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        pytest.param(
            "/v1/linear/forward",
            {"x": [[1e300, 1e300]], "w": [[1e300], [1e300]]},
            ["out"],
            id="out",
        ),
        pytest.param(
            "/v1/linear/backward",
            {"x": [[1e300]], "w": [[1.0]], "dout": [[1e300]]},
            ["dw"],
            id="dw",
        ),
    ],
)
def test_non_finite_result_is_422_not_null(api, path: str, body: dict, loc: list) -> None:
    assert_problem(api.post(path, json=body), 422, loc)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"x": "a" * 1_000_000, "kernel_size": 1}, id="tensor"),
        pytest.param({"x": X, "kernel_size": "a" * 1_000_000}, id="int-field"),
        pytest.param({"x": X, "kernel_size": 1, "a" * 1_000_000: 1}, id="unknown-key"),
        pytest.param({"x": X, "kernel_size": 1, "mode": "a" * 1_000_000}, id="literal"),
        pytest.param({"x": {"shape": [1], "b64": "a" * 1_000_000}, "kernel_size": 1}, id="b64"),
    ],
)
def test_errors_echo_at_most_an_excerpt(api, body: dict) -> None:
    response = api.post(POOL, json=body)
    assert_problem(response, 422)
    assert len(response.content) < 2_000


def test_a_body_that_is_not_an_object_is_422(api) -> None:
    assert_problem(api.post("/v1/shapes", json="layers"), 422, [])


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/plain", id="text"),
        pytest.param("application/x-www-form-urlencoded", id="form"),  # curl -d without -H
        pytest.param("multipart/form-data; boundary=x", id="multipart"),
        pytest.param("application/xml", id="xml"),
    ],
)
def test_a_body_that_is_not_json_is_415(api, content_type: str) -> None:
    body = b'{"x": [[[[1, 2], [3, 4]]]], "kernel_size": 2}'
    problem = assert_problem(_raw(api, POOL, body, **{"content-type": content_type}), 415)
    assert "application/json" in problem["detail"]


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("application/json; charset=utf-8", id="charset"),
        pytest.param("application/problem+json", id="plus-json"),
    ],
)
def test_json_media_types_are_accepted(api, content_type: str) -> None:
    body = b'{"x": [[[[1, 2], [3, 4]]]], "kernel_size": 2}'
    assert _raw(api, POOL, body, **{"content-type": content_type}).status_code == 200


def test_an_unknown_key_is_clipped_in_the_detail_too(api) -> None:
    key = "é" * 250
    problem = assert_problem(api.post(POOL, json={"x": X, "kernel_size": 1, key: 1}), 422)
    assert key not in problem["detail"]
    assert len(problem["detail"]) < 120


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        pytest.param(
            "/v1/conv2d/forward",
            {"x": X, "w": [[[[1.0]]]], "groups": 2**70},
            ["groups"],
            id="conv-groups",
        ),
        pytest.param(
            "/v1/shapes",
            {"input_shape": [1, 2**70], "layers": [{"type": "relu"}]},
            ["input_shape", 1],
            id="shapes-input-shape",
        ),
        pytest.param(
            "/v1/shapes",
            {"input_shape": [1, 2], "layers": [{"type": "linear", "out_features": 2**70}]},
            ["layers", 0, "out_features"],
            id="shapes-out-features",
        ),
        pytest.param(
            "/v1/shapes",
            {
                "input_shape": [1, 1, 2, 2],
                "layers": [{"type": "conv2d", "kernel_size": 1, "out_channels": 2**70}],
            },
            ["layers", 0, "out_channels"],
            id="shapes-out-channels",
        ),
        pytest.param(
            "/v1/network/forward",
            {
                "x": [[1.0]],
                "layers": [{"type": "relu"}],
                "loss": {"type": "softmax_cross_entropy", "y": [2**70]},
            },
            ["loss", "y", 0],
            id="network-label",
        ),
    ],
)
def test_an_integer_beyond_64_bits_says_so(api, path: str, body: dict, loc: list) -> None:
    problem = assert_problem(api.post(path, json=body), 422, loc)
    # orjson reads an integer beyond 64 bits as a float: the message must not call it one
    assert "64 bits" in problem["errors"][0]["msg"]
