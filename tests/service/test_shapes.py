"""POST /v1/shapes: per-layer shapes, parameters and FLOPs, and the layer a misfit names."""

from __future__ import annotations

from typing import Any

import pytest

import cnncore
from service.routes.shapes import LENET

from .wire import assert_problem, client


@pytest.fixture(scope="module")
def api():
    return client()


def _shapes(api, input_shape: list[int], layers: list[dict[str, Any]]):
    return api.post("/v1/shapes", json={"input_shape": input_shape, "layers": layers})


def test_lenet_agrees_with_cnncore_geometry(api) -> None:
    response = api.post("/v1/shapes", json=LENET)
    assert response.status_code == 200, response.text
    got = response.json()
    expected = [
        cnncore.conv2d_geometry((1, 1, 32, 32), (6, 1, 5, 5)).info,
        cnncore.elementwise_info((1, 6, 28, 28)),
        cnncore.pool2d_geometry((1, 6, 28, 28), kernel_size=2).info,
        cnncore.conv2d_geometry((1, 6, 14, 14), (16, 6, 5, 5)).info,
        cnncore.elementwise_info((1, 16, 10, 10)),
        cnncore.pool2d_geometry((1, 16, 10, 10), kernel_size=2).info,
        cnncore.flatten_info((1, 16, 5, 5)),
        cnncore.linear_info((1, 400), (400, 120)),
        cnncore.elementwise_info((1, 120)),
        cnncore.linear_info((1, 120), (120, 84)),
        cnncore.elementwise_info((1, 84)),
        cnncore.linear_info((1, 84), (84, 10)),
    ]
    assert [layer["type"] for layer in got["layers"]] == [
        layer["type"] for layer in LENET["layers"]
    ]
    pairs = zip(got["layers"], expected, strict=True)
    assert [{k: layer[k] for k in e.as_dict()} for layer, e in pairs] == [
        e.as_dict() for e in expected
    ]
    # The seed's (F*F*D1 + 1)*D2 per conv, (D + 1)*M per linear: LeNet-5's 61,706.
    assert got["total_params"] == 61_706 == sum(e.param_count for e in expected)
    assert got["total_flops"] == sum(e.flops for e in expected)
    assert got["output_shape"] == [1, 10]


def test_linear_after_4d_flattens_implicitly(api) -> None:
    got = _shapes(api, [2, 3, 4, 4], [{"type": "linear", "out_features": 5}]).json()
    assert got["layers"][0]["output_shape"] == [2, 5]
    assert got["total_params"] == 3 * 4 * 4 * 5 + 5


@pytest.mark.parametrize(
    ("layer", "params"),
    [
        pytest.param({"type": "linear", "out_features": 5, "bias": False}, 48 * 5, id="linear"),
        pytest.param(
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "bias": False},
            4 * 3 * 9,
            id="conv2d",
        ),
        pytest.param(
            {"type": "conv2d", "out_channels": 6, "kernel_size": [1, 3], "groups": 3},
            6 * 1 * 3 + 6,
            id="conv2d-groups",
        ),
    ],
)
def test_param_counts(api, layer: dict[str, Any], params: int) -> None:
    assert _shapes(api, [1, 3, 4, 4], [layer]).json()["total_params"] == params


def test_inexact_division_is_reported(api) -> None:
    layer = {"type": "pool2d", "kernel_size": 2}
    got = _shapes(api, [1, 1, 5, 5], [layer]).json()["layers"][0]
    assert (got["exact"], got["unused"], got["output_shape"]) == (False, [1, 1], [1, 1, 2, 2])


def test_non_positive_size_is_422_naming_the_layer_and_formula(api) -> None:
    layers = [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3},
        {"type": "pool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 5},
    ]
    problem = assert_problem(_shapes(api, [1, 1, 8, 8], layers), 422, ["layers", 2])
    msg = problem["errors"][0]["msg"]
    assert msg.startswith("layer 2 (conv2d)")
    assert "floor((height 3 + padding 0+0 - kernel 5) / stride 1) + 1 = -1" in msg


@pytest.mark.parametrize(
    ("input_shape", "layers", "loc"),
    [
        pytest.param(
            [1, 3, 8, 8],
            [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "groups": 2}],
            ["layers", 0, "groups"],
            id="groups-vs-input-channels",
        ),
        pytest.param(
            [1, 4, 8, 8],
            [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "groups": 2}],
            ["layers", 0, "out_channels"],
            id="groups-vs-out-channels",
        ),
        pytest.param(
            [1, 4, 8, 8],
            [{"type": "relu"}, {"type": "pool2d", "kernel_size": 2, "padding": 2}],
            ["layers", 1, "padding"],
            id="pool-padding",
        ),
        pytest.param(
            [1, 4, 8, 8],
            [{"type": "flatten"}, {"type": "pool2d", "kernel_size": 2}],
            ["layers", 1],
            id="pool-after-flatten",
        ),
        pytest.param(
            [1, 4, 8, 8],
            [{"type": "conv2d", "out_channels": 3, "kernel_size": True}],
            ["layers", 0, "kernel_size"],
            id="bool-kernel",
        ),
        pytest.param(
            [1, 4, 8, 8],
            [{"type": "conv2d", "kernel_size": 3}],
            ["layers", 0, "out_channels"],
            id="missing-field",
        ),
        pytest.param(
            [1, 4, 8, 8],
            [{"type": "relu", "inplace": True}],
            ["layers", 0, "inplace"],
            id="unknown-field",
        ),
        pytest.param([1, 4, 8, 8], [{"type": "conv3d"}], ["layers", 0], id="unknown-type"),
        pytest.param([1, 4, 8, 8], [{"kernel_size": 3}], ["layers", 0], id="missing-type"),
        pytest.param([1, 4, 8, 8], [], ["layers"], id="no-layers"),
        pytest.param([1, 4, 8, 8], [{"type": "relu"}] * 257, ["layers"], id="257-layers"),
        pytest.param([1, 0, 8, 8], [{"type": "relu"}], ["input_shape", 1], id="zero-dim"),
        pytest.param([8], [{"type": "relu"}], ["input_shape"], id="1-d-input"),
        pytest.param([1, 2**40], [{"type": "relu"}], ["input_shape", 1], id="absurd-dim"),
        pytest.param([2**31 - 1] * 8, [{"type": "flatten"}], ["layers", 0], id="count-beyond-2-53"),
        pytest.param(
            [1, 4, 8, 8],
            [{"type": "linear", "out_features": 2**30}],
            ["layers", 0, "out_features"],
            id="absurd-out-features",
        ),
    ],
)
def test_invalid_stack_is_422_naming_the_field(
    api, input_shape: list[int], layers: list[dict[str, Any]], loc: list
) -> None:
    assert_problem(_shapes(api, input_shape, layers), 422, loc)


@pytest.mark.parametrize("encoding", ["list", "b64"])
def test_encoding_is_accepted_like_on_every_request(api, encoding: str) -> None:
    body = {"input_shape": [1, 3], "layers": [{"type": "relu"}], "encoding": encoding}
    response = api.post("/v1/shapes", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["output_shape"] == [1, 3]
