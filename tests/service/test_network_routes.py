"""POST /v1/network/forward and /backward: against the single-op endpoints composed over
HTTP, against cnncore, and every error path."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import cnncore
from service.client import Client, ServiceError
from service.schemas.network import MAX_NETWORK_LAYERS
from tests.helpers import assert_close

from .wire import assert_problem, client, from_wire, to_wire


@pytest.fixture(scope="module")
def api() -> TestClient:
    return client()


def cnn(rng: np.random.Generator, dtype: Any = np.float64) -> dict[str, np.ndarray]:
    """Arrays of x (2, 3, 6, 6) -> conv 4×3×3×3 pad 1 -> relu -> max pool 2 -> flatten -> 36×5."""

    def t(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(dtype)

    return {"x": t(2, 3, 6, 6, scale=1.0), "w0": t(4, 3, 3, 3), "b0": t(4), "w4": t(36, 5)}


Y = [1, 4]


def body(a: dict[str, np.ndarray], form: str = "list", **extra: Any) -> dict[str, Any]:
    """The request for :func:`cnn`'s arrays (linear without bias), softmax CE loss."""
    return {
        "x": to_wire(a["x"], form),
        "layers": [
            {
                "type": "conv2d",
                "w": to_wire(a["w0"], form),
                "b": to_wire(a["b0"], form),
                "padding": 1,
            },
            {"type": "relu"},
            {"type": "pool2d", "mode": "max", "kernel_size": 2},
            {"type": "flatten"},
            {"type": "linear", "w": to_wire(a["w4"], form)},
        ],
        "loss": {"type": "softmax_cross_entropy", "y": Y},
        **extra,
    }


def core_layers(a: dict[str, np.ndarray]) -> list:
    """The cnncore layers of :func:`body`."""
    return [
        cnncore.Conv2d(a["w0"], a["b0"], padding=1),
        cnncore.network_shapes.ReluSpec(),
        cnncore.network_shapes.Pool2dSpec(kernel_size=2),
        cnncore.network_shapes.FlattenSpec(),
        cnncore.Linear(a["w4"]),
    ]


def post(api: TestClient, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    r = api.post(path, json=payload)
    assert r.status_code == 200, r.text[:500]
    return r.json()


# --------------------------------------------------------------------------- values


def test_network_equals_the_single_op_endpoints_composed(
    api: TestClient, rng: np.random.Generator
) -> None:
    a = cnn(rng)
    wire = {k: v.tolist() for k, v in a.items()}
    conv = {"w": wire["w0"], "b": wire["b0"], "padding": 1}
    pool = {"mode": "max", "kernel_size": 2}

    # Forward, one endpoint per layer (ReLU has none: it is applied here).
    a1 = from_wire(post(api, "/v1/conv2d/forward", {"x": wire["x"], **conv})["out"])
    a2, relu_cache = cnncore.relu_forward(a1)
    a3 = from_wire(post(api, "/v1/pool2d/forward", {"x": a2.tolist(), **pool})["out"])
    out = from_wire(post(api, "/v1/linear/forward", {"x": a3.tolist(), "w": wire["w4"]})["out"])
    loss, dout = cnncore.softmax_cross_entropy(out, np.array(Y))

    # Backward, in reverse.
    lin = post(
        api, "/v1/linear/backward", {"x": a3.tolist(), "w": wire["w4"], "dout": dout.tolist()}
    )
    d3 = from_wire(lin["dx"])
    d2 = from_wire(
        post(api, "/v1/pool2d/backward", {"x": a2.tolist(), **pool, "dout": d3.tolist()})["dx"]
    )
    d1 = cnncore.relu_backward(d2, relu_cache)
    cv = post(api, "/v1/conv2d/backward", {"x": wire["x"], **conv, "dout": d1.tolist()})

    fwd = post(api, "/v1/network/forward", body(a))
    bwd = post(api, "/v1/network/backward", body(a))
    assert_close(from_wire(fwd["out"]), out)
    # Losses are means of positive terms (no cancellation): a few eps relative; 1e-12 = 4500 eps.
    assert fwd["loss"] == pytest.approx(loss, rel=1e-12)
    assert bwd["loss"] == pytest.approx(loss, rel=1e-12)
    assert_close(from_wire(bwd["dx"]), from_wire(cv["dx"]))
    grads = bwd["grads"]
    assert [sorted(g) for g in grads] == [["db", "dw"], [], [], [], ["db", "dw"]]
    assert_close(from_wire(grads[0]["dw"]), from_wire(cv["dw"]))
    assert_close(from_wire(grads[0]["db"]), from_wire(cv["db"]))
    assert_close(from_wire(grads[4]["dw"]), from_wire(lin["dw"]))
    assert grads[4]["db"] is None


@pytest.mark.parametrize(
    ("form", "dtype", "encoding"),
    [
        pytest.param("list", np.float64, "list", id="list-float64"),
        pytest.param("b64", np.float64, "b64", id="b64-float64"),
        pytest.param("data", np.float32, "b64", id="data-float32"),
        pytest.param("list", np.float32, "b64", id="list-float32-by-request-dtype"),
    ],
)
def test_forward_and_backward_against_cnncore(
    api: TestClient, rng: np.random.Generator, form: str, dtype: Any, encoding: str
) -> None:
    a = cnn(rng, dtype)
    extra = {"encoding": encoding, **({"dtype": "float32"} if dtype == np.float32 else {})}
    out, cache = cnncore.network_forward(a["x"], core_layers(a))
    loss, dout = cnncore.network_loss(out, cnncore.SoftmaxCrossEntropy(np.array(Y)))
    dx, grads = cnncore.network_backward(dout, cache)

    fwd = post(api, "/v1/network/forward", body(a, form, **extra))
    got = from_wire(fwd["out"])
    assert got.dtype == (dtype if encoding == "b64" else np.float64)
    assert_close(got, out, dtype)
    assert fwd["meta"]["dtype"] == np.dtype(dtype).name
    bwd = post(api, "/v1/network/backward", body(a, form, **extra))
    assert_close(from_wire(bwd["dx"]), dx, dtype)
    assert_close(from_wire(bwd["grads"][0]["dw"]), grads[0]["dw"], dtype)
    # The loss of the same float32 (or float64) network computed twice, each within
    # ~K·eps of the exact one for the ~100 products per output: 1e-5 = 80 eps32 (4500 eps64).
    assert bwd["loss"] == pytest.approx(loss, rel=1e-5 if dtype == np.float32 else 1e-12)


def test_meta_describes_every_layer(api: TestClient, rng: np.random.Generator) -> None:
    a = cnn(rng)
    meta = post(api, "/v1/network/forward", body(a))["meta"]
    infos = cnncore.network_info(a["x"].shape, core_layers(a))
    assert [m["type"] for m in meta["layers"]] == ["conv2d", "relu", "pool2d", "flatten", "linear"]
    assert [m["output_shape"] for m in meta["layers"]] == [list(i.output_shape) for i in infos]
    assert meta["total_params"] == 4 * 27 + 4 + 36 * 5
    assert meta["total_flops"] == sum(i.flops for i in infos)
    assert meta["input_shape"] == [2, 3, 6, 6]
    assert meta["output_shape"] == [2, 5]
    bwd_meta = post(api, "/v1/network/backward", body(a))["meta"]
    assert bwd_meta["total_flops"] == 3 * meta["total_flops"]


def test_probabilities_predictions_and_activations(
    api: TestClient, rng: np.random.Generator
) -> None:
    a = cnn(rng)
    res = post(api, "/v1/network/forward", body(a, return_activations=True))
    out = from_wire(res["out"])
    probs = from_wire(res["probabilities"])
    assert_close(probs, np.exp(out) / np.exp(out).sum(axis=1, keepdims=True))
    assert res["predictions"] == np.argmax(out, axis=1).tolist()
    shapes = [from_wire(act).shape for act in res["activations"]]
    assert shapes == [(2, 4, 6, 6), (2, 4, 6, 6), (2, 4, 3, 3), (2, 36), (2, 5)]
    assert_close(from_wire(res["activations"][-1]), out)


@pytest.mark.parametrize(
    ("extra", "has_probabilities"),
    [
        pytest.param({"loss": None}, False, id="no-loss"),
        pytest.param({"loss": None, "return_probabilities": True}, True, id="no-loss-asked"),
        pytest.param({"loss": {"type": "mse", "target": [[0.0] * 5] * 2}}, False, id="mse"),
    ],
)
def test_probabilities_only_with_cross_entropy_or_when_asked(
    api: TestClient, rng: np.random.Generator, extra: dict, has_probabilities: bool
) -> None:
    res = post(api, "/v1/network/forward", body(cnn(rng), **extra))
    assert ("probabilities" in res) == has_probabilities
    assert ("predictions" in res) == has_probabilities
    assert "activations" not in res


def test_mse_loss_and_dout(api: TestClient, rng: np.random.Generator) -> None:
    a = cnn(rng)
    target = rng.standard_normal((2, 5))
    fwd = post(api, "/v1/network/forward", body(a, loss={"type": "mse", "target": target.tolist()}))
    out = from_wire(fwd["out"])
    assert fwd["loss"] == pytest.approx(
        np.mean((out - target) ** 2), rel=1e-12
    )  # a mean of positive terms (no cancellation): a few eps relative; 1e-12 = 4500 eps
    # backward from the MSE loss equals backward from its gradient given as dout
    by_loss = post(
        api, "/v1/network/backward", body(a, loss={"type": "mse", "target": target.tolist()})
    )
    dout = 2 * (out - target) / out.size
    by_dout = post(api, "/v1/network/backward", body(a, loss=None, dout=dout.tolist()))
    assert by_dout["loss"] is None
    assert_close(from_wire(by_dout["dx"]), from_wire(by_loss["dx"]))
    assert_close(from_wire(by_dout["grads"][4]["dw"]), from_wire(by_loss["grads"][4]["dw"]))


# --------------------------------------------------------------------------- errors


def _edit(path: list, value: Any) -> Any:
    """A function setting ``body[path...] = value`` (deleting when value is ...)."""

    def apply(b: dict) -> dict:
        b = copy.deepcopy(b)
        node = b
        for key in path[:-1]:
            node = node[key]
        if value is ...:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return b

    return apply


ERRORS = [
    pytest.param(
        _edit(["layers", 4, "w"], [[0.1] * 5] * 37),
        "forward",
        ["layers", 4, "w"],
        "layer 4 (linear) expects w of shape (36, 5), got (37, 5): layer 3 (flatten) gives "
        "shape (2, 36), 36 features per sample, but w has 37 rows",
        id="linear-w-rows",
    ),
    pytest.param(
        _edit(["layers", 0, "w"], [[[[0.0] * 3] * 3] * 2] * 4),
        "backward",
        ["layers", 0, "w"],
        "3 channels / groups=1 = 3 input channels per filter, but w has 2",
        id="conv-w-channels",
    ),
    pytest.param(
        _edit(["layers", 0, "b"], [0.0] * 3), "forward", ["layers", 0, "b"], "(4,)", id="conv-b"
    ),
    pytest.param(
        _edit(["layers", 2, "kernel_size"], 7),
        "forward",
        ["layers", 2],
        "layer 2 (pool2d): output height would be 0",
        id="pool-too-big",
    ),
    pytest.param(
        _edit(["layers", 0, "groups"], 2),
        "forward",
        ["layers", 0, "groups"],
        "the input has 3 channels, which groups=2 does not divide",
        id="groups",
    ),
    pytest.param(
        _edit(["layers", 0, "stride"], True), "forward", ["layers", 0, "stride"], "", id="bool"
    ),
    pytest.param(
        _edit(["layers", 1, "type"], "softmax"), "forward", ["layers", 1], "one of", id="type"
    ),
    pytest.param(
        _edit(["layers", 1, "alpha"], 0.1), "forward", ["layers", 1, "alpha"], "", id="extra-field"
    ),
    pytest.param(
        _edit(["layers", 4, "w"], [1.0, 2.0]), "forward", ["layers", 4, "w"], "2-D", id="w-1d"
    ),
    pytest.param(
        _edit(["layers"], [{"type": "relu"}] * (MAX_NETWORK_LAYERS + 1)),
        "forward",
        ["layers"],
        "",
        id="too-many-layers",
    ),
    pytest.param(_edit(["layers"], []), "forward", ["layers"], "", id="no-layers"),
    pytest.param(
        _edit(["x"], [[1.0, 2.0]] * 2), "forward", ["layers", 0], "4-D input", id="x-2d-to-conv"
    ),
    pytest.param(
        _edit(["loss", "y"], [1, 5]), "forward", ["loss", "y"], "label 5", id="label-range"
    ),
    pytest.param(_edit(["loss", "y"], [1]), "backward", ["loss", "y"], "(2,)", id="label-count"),
    pytest.param(_edit(["loss", "y"], [True, 1]), "forward", ["loss", "y", 0], "", id="label-bool"),
    pytest.param(
        _edit(["loss"], {"type": "mse", "target": [[0.0] * 4] * 2}),
        "forward",
        ["loss", "target"],
        "target has shape (2, 4) but the network output has shape (2, 5)",
        id="mse-target",
    ),
    pytest.param(_edit(["loss"], {"type": "hinge"}), "forward", ["loss"], "one of", id="loss-type"),
    pytest.param(
        lambda b: {**b, "layers": b["layers"][:3]},
        "forward",
        ["loss"],
        "2-D output (N, classes); the network output has shape (2, 4, 3, 3)",
        id="ce-on-4d",
    ),
    pytest.param(
        lambda b: {**b, "layers": b["layers"][:3], "loss": None, "return_probabilities": True},
        "forward",
        ["return_probabilities"],
        "shape (2, 4, 3, 3)",
        id="probabilities-on-4d",
    ),
    pytest.param(
        _edit(["dout"], [[0.0] * 5] * 2), "forward", ["dout"], "Extra", id="dout-on-forward"
    ),
    pytest.param(
        _edit(["loss"], None), "backward", ["dout"], "got neither", id="neither-loss-nor-dout"
    ),
    pytest.param(_edit(["dout"], [[0.0] * 5] * 2), "backward", ["dout"], "got both", id="both"),
    pytest.param(
        lambda b: {**b, "loss": None, "dout": [[0.0] * 4] * 2},
        "backward",
        ["dout"],
        "dout has shape (2, 4) but the network output has shape (2, 5)",
        id="dout-shape",
    ),
    pytest.param(
        _edit(["return_activations"], 1), "forward", ["return_activations"], "", id="flag-int"
    ),
    pytest.param(
        _edit(["loss"], {"type": "mse", "target": {"shape": [1], "dtype": {}, "b64": ""}}),
        "backward",
        ["loss", "target"],
        "dtype must be",
        id="unhashable-dtype",  # was a 500 (found by schemathesis)
    ),
    pytest.param(_edit(["dtype"], {}), "forward", ["dtype"], "", id="request-dtype-object"),
]


@pytest.mark.parametrize(("edit", "route", "loc", "fragment"), ERRORS)
def test_errors_point_at_the_field(
    api: TestClient,
    rng: np.random.Generator,
    edit: Any,
    route: str,
    loc: list,
    fragment: str,
) -> None:
    r = api.post(f"/v1/network/{route}", json=edit(body(cnn(rng))))
    problem = assert_problem(r, 422, loc)
    msgs = [e["msg"] for e in problem["errors"] if e["loc"] == loc]
    assert any(fragment in m for m in msgs), msgs


def _flops(a: dict[str, np.ndarray]) -> int:
    b = body(a)
    return client().post("/v1/network/forward", json=b).json()["meta"]["total_flops"]


def test_the_flop_budget_applies_to_the_whole_network(rng: np.random.Generator) -> None:
    a = cnn(rng)
    total = _flops(a)
    api = client(max_flops=total)  # forward fits exactly; backward needs 3×
    assert api.post("/v1/network/forward", json=body(a)).status_code == 200
    problem = assert_problem(api.post("/v1/network/backward", json=body(a)), 413)
    assert "CNN_MAX_FLOPS" in problem["detail"]
    # Every layer alone fits under a limit the whole network exceeds.
    tight = client(max_flops=total - 1)
    assert_problem(tight.post("/v1/network/forward", json=body(a)), 413)
    conv = {"x": a["x"].tolist(), "w": a["w0"].tolist(), "b": a["b0"].tolist(), "padding": 1}
    assert tight.post("/v1/conv2d/forward", json=conv).status_code == 200


def test_the_memory_budget_applies_to_the_whole_network(rng: np.random.Generator) -> None:
    api = client(max_request_bytes=10_000)
    problem = assert_problem(api.post("/v1/network/forward", json=body(cnn(rng))), 413)
    assert "CNN_MAX_REQUEST_BYTES" in problem["detail"]


# --------------------------------------------------------------------------- client


@pytest.mark.parametrize("encoding", ["b64", "list"])
def test_client_network_forward_and_backward(
    api: TestClient, rng: np.random.Generator, encoding: str
) -> None:
    a = cnn(rng, np.float32)
    layers = [
        {"type": "conv2d", "w": a["w0"], "b": a["b0"], "padding": 1},
        {"type": "relu"},
        {"type": "pool2d", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "linear", "w": a["w4"]},
    ]
    loss = {"type": "softmax_cross_entropy", "y": np.array(Y)}
    remote = Client(http=api, encoding=encoding)
    fwd = remote.network_forward(a["x"], layers, loss, return_activations=True)
    out, cache = cnncore.network_forward(a["x"], core_layers(a))
    _, dout = cnncore.network_loss(out, cnncore.SoftmaxCrossEntropy(np.array(Y)))
    dx, grads = cnncore.network_backward(dout, cache)
    assert fwd["out"].dtype == np.float32
    assert_close(fwd["out"], out)
    assert len(fwd["activations"]) == 5
    assert fwd["predictions"] == np.argmax(out, axis=1).tolist()
    bwd = remote.network_backward(a["x"], layers, dout=dout)
    assert bwd["loss"] is None
    assert_close(bwd["dx"], dx)
    assert_close(bwd["grads"][0]["dw"], grads[0]["dw"])
    assert bwd["grads"][4]["db"] is None
    assert bwd["grads"][1] == {}


def test_client_network_errors_carry_the_loc(api: TestClient, rng: np.random.Generator) -> None:
    a = cnn(rng)
    layers = [{"type": "linear", "w": np.zeros((107, 5))}]
    with pytest.raises(ServiceError) as info:
        Client(http=api).network_forward(a["x"], layers)
    assert info.value.status == 422
    assert info.value.errors[0]["loc"] == ["layers", 0, "w"]


def test_a_zero_loss_is_not_negative_zero(api: TestClient) -> None:
    # one class: the cross-entropy is -log(1), which numpy computes as -0.0
    one_class = {
        "x": [[1.0, 2.0]],
        "layers": [{"type": "linear", "w": [[1.0], [1.0]]}],
        "loss": {"type": "softmax_cross_entropy", "y": [0]},
    }
    for route in ("/v1/network/forward", "/v1/network/backward"):
        response = api.post(route, json=one_class)
        assert response.status_code == 200, response.text
        assert b'"loss":0.0' in response.content
