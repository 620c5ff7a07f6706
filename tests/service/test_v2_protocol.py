"""The Open Inference Protocol routes in-process (raw httpx through TestClient): metadata,
health, inference in JSON and binary, every gradient output against central differences,
the errors of the /v2 table, the repository routes, per-model metrics and /v1/info."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

import cnncore
from cnncore.gradcheck import assert_gradient
from service import dataplane
from service.app import create_app
from service.errors import BadRequestError
from service.settings import Settings
from service.wire.infer import InferResponse, OutputTensor
from service.wire.v2 import encode_response

from .v2_models import CLASSES, core_layers, model_doc, tiny_cnn_layers, write_model

SHAPE = [-1, 1, 6, 6]
HEADER = "Inference-Header-Content-Length"
PARAMS = ["0.w", "0.b", "4.w", "4.b"]


@pytest.fixture(scope="module")
def layers() -> list[dict[str, Any]]:
    return tiny_cnn_layers(np.random.default_rng(7))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, layers: list[dict[str, Any]]) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "tiny", model_doc(layers, SHAPE, "FP64", ["a", "b", "c"]))
    write_model(root, "tiny32", model_doc(layers, SHAPE, "FP32"))
    write_model(root, "broken", model_doc(layers[:4], SHAPE) | {"labels": ["x"]})
    # A regression head: its output (N, 2, 3, 3) takes target and out_grad, not labels.
    write_model(root, "maps", model_doc(layers[:3], SHAPE))
    return root


@pytest.fixture(scope="module")
def client(repo: Path) -> Iterator[TestClient]:
    # explicit model control: the repository tests below load and unload models
    settings = Settings(
        model_repository=repo, max_elements=4096, max_flops=1e5, model_control_mode="explicit"
    )
    app = create_app(settings)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def x(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(4, 1, 6, 6))


def tensor(name: str, arr: np.ndarray, datatype: str = "FP64", *, nested: bool = False) -> dict:
    data = arr.tolist() if nested else arr.ravel().tolist()
    return {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": data}


def post_json(client: TestClient, model: str, doc: dict[str, Any]) -> Any:
    return client.post(f"/v2/models/{model}/infer", content=orjson.dumps(doc))


def binary_request(
    inputs: list[tuple[str, np.ndarray, str]], outputs: list[str] | None = None, **params: Any
) -> tuple[bytes, dict[str, str]]:
    """A binary-framed body (every input binary) and its headers."""
    specs, chunks = [], []
    for name, arr, datatype in inputs:
        raw = np.ascontiguousarray(arr).tobytes()
        specs.append(
            {
                "name": name,
                "shape": list(arr.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    doc: dict[str, Any] = {"inputs": specs}
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    if params:
        doc["parameters"] = params
    head = orjson.dumps(doc)
    return head + b"".join(chunks), {HEADER: str(len(head))}


def decode(response: Any) -> dict[str, np.ndarray]:
    """Output name -> array, from a JSON or binary response (checks the framing)."""
    assert response.status_code == 200, response.text
    body = response.content
    length = response.headers.get(HEADER)
    size = int(length) if length else len(body)
    expected_type = "application/octet-stream" if length else "application/json"
    assert response.headers["content-type"] == expected_type
    doc = orjson.loads(body[:size])
    offset, out = size, {}
    for o in doc["outputs"]:
        dtype = {"FP32": "<f4", "FP64": "<f8"}[o["datatype"]]
        nbytes = (o.get("parameters") or {}).get("binary_data_size")
        if nbytes is None:
            out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
        else:
            out[o["name"]] = np.frombuffer(body[offset : offset + nbytes], dtype).reshape(
                o["shape"]
            )
            offset += nbytes
    assert offset == len(body)  # nothing left over
    return out


def reference(layers: list[dict[str, Any]], x: np.ndarray) -> np.ndarray:
    return cnncore.network_forward(x, core_layers(layers))[0]


# --------------------------------------------------------------------------- metadata


def test_server_metadata_and_health(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "cnn-service"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_strict_readiness(repo: Path) -> None:
    with TestClient(create_app(Settings(model_repository=repo, strict_readiness=True))) as c:
        r = c.get("/v2/health/ready")
    assert r.status_code == 400
    assert "broken" in r.json()["error"]


@pytest.mark.parametrize("suffix", ["", "/versions/1"])
def test_model_metadata_lists_every_input_and_output(client: TestClient, suffix: str) -> None:
    meta = client.get(f"/v2/models/tiny{suffix}").json()
    assert (meta["name"], meta["versions"], meta["platform"]) == ("tiny", ["1"], "cnncore")
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    assert inputs == {
        "x": ("FP64", SHAPE),
        "labels": ("INT64", [-1]),
        "target": ("FP64", [-1, CLASSES]),
        "out_grad": ("FP64", [-1, CLASSES]),
    }
    outputs = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert outputs == {
        "out": [-1, 3],
        "loss": [1],
        "probabilities": [-1, 3],
        "grad/x": SHAPE,
        "grad/0.w": [2, 1, 3, 3],
        "grad/0.b": [2],
        "grad/4.w": [18, 3],
        "grad/4.b": [3],
    }
    maps = client.get("/v2/models/maps").json()
    assert "labels" not in {i["name"] for i in maps["inputs"]}


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/tiny/ready", 200, None),
        ("/v2/models/tiny/versions/1/ready", 200, None),
        ("/v2/models/tiny/versions/2/ready", 404, "no version '2'"),
        ("/v2/models/nope/ready", 404, "unknown model 'nope'"),
        ("/v2/models/broken/ready", 400, "broken/model.json: labels"),
        ("/v2/models/broken", 400, "UNAVAILABLE"),
        ("/v2/models/..hidden", 400, "not a valid model name"),
        ("/v2/models/nope/versions/1", 404, "unknown model"),
    ],
)
def test_model_ready_and_errors(
    client: TestClient, path: str, status: int, message: str | None
) -> None:
    r = client.get(path)
    assert r.status_code == status
    if message is not None:
        assert message in r.json()["error"]


# --------------------------------------------------------------------------- inference


@pytest.mark.parametrize("form", ["flat", "nested", "binary"])
@pytest.mark.parametrize("model", ["tiny", "tiny32"])
def test_inference_matches_cnncore(
    client: TestClient, layers: list[dict[str, Any]], x: np.ndarray, form: str, model: str
) -> None:
    datatype, dtype = ("FP64", np.float64) if model == "tiny" else ("FP32", np.float32)
    xs = x.astype(dtype)
    if form == "binary":
        body, headers = binary_request([("x", xs, datatype)], binary_data_output=True)
        r = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    else:
        r = post_json(
            client, model, {"inputs": [tensor("x", xs, datatype, nested=form == "nested")]}
        )
    out = decode(r)
    assert set(out) == {"out"}
    assert out["out"].dtype == dtype
    expected = reference(layers, xs.astype(np.float64))
    # The same sums in float64 (at most 18 terms per output): a few eps. In float32 the
    # weights are rounded once and each of ~30 sequential roundings adds up to eps32 = 1.2e-7
    # relative to the terms' magnitude (|terms| <~ 10 here): 3e-5 absolute allows that.
    tol = {"rtol": 1e-12, "atol": 1e-12} if model == "tiny" else {"rtol": 0, "atol": 3e-5}
    np.testing.assert_allclose(out["out"], expected, **tol)


def test_response_echoes_id_and_model(client: TestClient, x: np.ndarray) -> None:
    r = post_json(client, "tiny", {"id": "req-1", "inputs": [tensor("x", x)]})
    doc = r.json()
    assert (doc["id"], doc["model_name"], doc["model_version"]) == ("req-1", "tiny", "1")


def test_mixed_binary_and_json_outputs(client: TestClient, x: np.ndarray) -> None:
    labels = np.array([0, 2, 1, 1], dtype=np.int64)
    body, headers = binary_request([("x", x, "FP64"), ("labels", labels, "INT64")])
    doc = orjson.loads(body[: int(headers[HEADER])])
    doc["outputs"] = [
        {"name": "out", "parameters": {"binary_data": True}},
        {"name": "loss"},
        {"name": "grad/x", "parameters": {"binary_data": True}},
    ]
    head = orjson.dumps(doc)
    raw = body[int(headers[HEADER]) :]
    r = client.post("/v2/models/tiny/infer", content=head + raw, headers={HEADER: str(len(head))})
    out = decode(r)
    assert list(out) == ["out", "loss", "grad/x"]
    described = orjson.loads(r.content[: int(r.headers[HEADER])])["outputs"]
    assert ["parameters" in o for o in described] == [True, False, True]


def _loss_fn(core: list[Any], x: np.ndarray, signal: str, value: np.ndarray) -> Any:
    def f() -> float | np.ndarray:
        out = cnncore.network_forward(x, core)[0]
        if signal == "labels":
            return cnncore.softmax_cross_entropy(out, value)[0]
        if signal == "target":
            return cnncore.mse_loss(out, value)[0]
        return out  # with dout = out_grad: d sum(out * out_grad)

    return f


@pytest.mark.parametrize("signal", ["labels", "target", "out_grad"])
def test_every_gradient_against_central_differences(
    client: TestClient,
    layers: list[dict[str, Any]],
    x: np.ndarray,
    rng: np.random.Generator,
    signal: str,
) -> None:
    x = x[:2]  # each checked element costs two forward passes: keep the check small
    if signal == "labels":
        value, datatype = np.array([0, 2]), "INT64"
    else:
        value, datatype = rng.normal(size=(2, CLASSES)), "FP64"
    doc = {
        "inputs": [tensor("x", x), tensor(signal, value, datatype)],
        "outputs": [{"name": "grad/*"}, {"name": "out"}]
        + ([{"name": "loss"}] if signal != "out_grad" else []),
    }
    out = decode(post_json(client, "tiny", doc))
    assert set(out) >= {"grad/x", *(f"grad/{p}" for p in PARAMS)}
    core = core_layers(layers)
    xc = x.copy()
    f = _loss_fn(core, xc, signal, value)
    dout = value if signal == "out_grad" else 1.0
    if signal != "out_grad":
        # The loss is the same sums as cnncore's, in float64: agreement to a few eps.
        np.testing.assert_allclose(out["loss"], [f()], rtol=1e-12)
    assert_gradient(f, xc, out["grad/x"], dout)
    params = {"0.w": core[0].w, "0.b": core[0].b, "4.w": core[4].w, "4.b": core[4].b}
    for name, arr in params.items():
        assert_gradient(f, arr, out[f"grad/{name}"], dout)


def test_labels_give_probabilities_and_int32_is_accepted(
    client: TestClient, layers: list[dict[str, Any]], x: np.ndarray
) -> None:
    doc = {"inputs": [tensor("x", x), tensor("labels", np.array([0, 1, 2, 0]), "INT32")]}
    out = decode(post_json(client, "tiny", doc))
    assert list(out) == ["out", "loss", "probabilities"]  # the defaults with a loss input
    expected = np.exp(cnncore.log_softmax(reference(layers, x)))
    # softmax of the same scores in float64: a few eps relative.
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-12)


def test_only_the_requested_gradients_are_computed(
    client: TestClient, x: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = client.app.state.models.entry("tiny").model  # type: ignore[attr-defined]
    seen: list[Any] = []
    backward = model.graph.backward

    def spy(dout: np.ndarray, cache: Any, wrt: Any = None) -> dict[str, np.ndarray]:
        seen.append(list(wrt))
        return backward(dout, cache, wrt=wrt)

    monkeypatch.setattr(model.graph, "backward", spy)
    doc = {
        "inputs": [tensor("x", x), tensor("out_grad", np.ones((4, 3)))],
        "outputs": [{"name": "grad/0.w"}],
    }
    assert list(decode(post_json(client, "tiny", doc))) == ["grad/0.w"]
    assert seen == [["0.w"]]
    doc["outputs"] = [{"name": "out"}]
    decode(post_json(client, "tiny", doc))
    assert seen == [["0.w"]]  # no gradient asked: no backward pass


# --------------------------------------------------------------------------- errors


def _x(n: int = 4) -> dict[str, Any]:
    return tensor("x", np.zeros((n, 1, 6, 6)))


ERRORS = [
    ("x-datatype", "tiny", {"inputs": [{**_x(), "datatype": "FP32"}]}, 400, "computes in FP64"),
    (
        "x-shape",
        "tiny",
        {"inputs": [tensor("x", np.zeros((2, 1, 5, 6)))]},
        400,
        "takes [-1, 1, 6, 6]",
    ),
    ("x-missing", "tiny", {"inputs": [tensor("target", np.zeros((4, 3)))]}, 400, "'x' is missing"),
    ("no-inputs", "tiny", {"inputs": []}, 400, "non-empty list"),
    ("bytes", "tiny", {"inputs": [{**_x(), "datatype": "BYTES"}]}, 400, "BYTES is not supported"),
    (
        "unknown-input",
        "tiny",
        {"inputs": [_x(), tensor("y", np.zeros(4))]},
        400,
        "unknown input 'y'",
    ),
    ("twice", "tiny", {"inputs": [_x(), _x()]}, 400, "given twice"),
    (
        "two-signals",
        "tiny",
        {
            "inputs": [
                _x(),
                tensor("target", np.zeros((4, 3))),
                tensor("out_grad", np.zeros((4, 3))),
            ]
        },
        400,
        "at most one upstream signal",
    ),
    (
        "labels-range",
        "tiny",
        {"inputs": [_x(), tensor("labels", np.array([0, 1, 3, 0]), "INT64")]},
        400,
        "[0, 3)",
    ),
    (
        "labels-float",
        "tiny",
        {"inputs": [_x(), tensor("labels", np.zeros(4), "FP64")]},
        400,
        "INT64 or INT32",
    ),
    (
        "labels-shape",
        "tiny",
        {"inputs": [_x(), tensor("labels", np.zeros(3, int), "INT64")]},
        400,
        "shape [4]",
    ),
    (
        "labels-regression",
        "maps",
        {"inputs": [_x(), tensor("labels", np.zeros(4, int), "INT64")]},
        400,
        "needs an output (N, classes)",
    ),
    (
        "target-shape",
        "tiny",
        {"inputs": [_x(), tensor("target", np.zeros((4, 2)))]},
        400,
        "shape [4, 3]",
    ),
    ("data-count", "tiny", {"inputs": [{**_x(), "data": [0.0] * 10}]}, 400, "needs 144"),
    (
        "data-bool",
        "tiny",
        {"inputs": [{**_x(1), "data": [True] + [0.0] * 35}]},
        400,
        "must be numbers",
    ),
    ("data-ragged", "tiny", {"inputs": [{**_x(1), "data": [[1.0, 2.0], [3.0]]}]}, 400, "ragged"),
    ("data-string", "tiny", {"inputs": [{**_x(1), "data": ["a"] * 36}]}, 400, "must be numbers"),
    (
        "grad-no-signal",
        "tiny",
        {"inputs": [_x()], "outputs": [{"name": "grad/x"}]},
        400,
        "needs an upstream signal",
    ),
    (
        "loss-no-loss",
        "tiny",
        {"inputs": [_x(), tensor("out_grad", np.zeros((4, 3)))], "outputs": [{"name": "loss"}]},
        400,
        "needs an input labels or target",
    ),
    (
        "probabilities-target",
        "tiny",
        {
            "inputs": [_x(), tensor("target", np.zeros((4, 3)))],
            "outputs": [{"name": "probabilities"}],
        },
        400,
        "needs an input labels",
    ),
    (
        "unknown-output",
        "tiny",
        {"inputs": [_x()], "outputs": [{"name": "logits"}]},
        400,
        "unknown output 'logits'",
    ),
    (
        "unknown-grad",
        "tiny",
        {"inputs": [_x(), tensor("out_grad", np.zeros((4, 3)))], "outputs": [{"name": "grad/9.w"}]},
        400,
        "grad/0.w",
    ),
    (
        "duplicate-output",
        "tiny",
        {"inputs": [_x()], "outputs": [{"name": "out"}, {"name": "out"}]},
        400,
        "twice",
    ),
    (
        "binary-output-flag",
        "tiny",
        {"inputs": [_x()], "outputs": [{"name": "out", "parameters": {"binary_data": 1}}]},
        400,
        "true or false",
    ),
    (
        "classification",
        "tiny",
        {"inputs": [_x()], "outputs": [{"name": "out", "parameters": {"classification": 2}}]},
        400,
        "not supported",
    ),
    ("id-type", "tiny", {"id": 5, "inputs": [_x()]}, 400, "id must be a string"),
    ("elements", "tiny", {"inputs": [{**_x(), "shape": [200, 1, 6, 6]}]}, 413, "the limit is 4096"),
    (
        "flops",
        "tiny",
        {"inputs": [tensor("x", np.zeros((100, 1, 6, 6)))]},
        413,
        "batch of 100 is too large for the model: send at most about",
    ),
    ("unknown-model", "nope", {"inputs": [_x()]}, 404, "unknown model"),
    ("unavailable", "broken", {"inputs": [_x()]}, 400, "UNAVAILABLE"),
]


@pytest.mark.parametrize(
    ("model", "doc", "status", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors_carry_error_and_name_the_fault(
    client: TestClient, model: str, doc: dict[str, Any], status: int, message: str
) -> None:
    r = post_json(client, model, doc)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_nan_input_is_refused(client: TestClient) -> None:
    body, headers = binary_request([("x", np.full((1, 1, 6, 6), np.nan), "FP64")])
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 400
    assert "input 'x' holds NaN" in r.json()["error"]


def test_non_finite_output_needs_binary() -> None:
    out = np.array([1.0, np.inf])

    def response(binary: bool) -> InferResponse:
        return InferResponse("m", "1", None, [OutputTensor("out", "FP64", [2], out, binary)])

    with pytest.raises(BadRequestError, match="output 'out' holds NaN or infinity") as info:
        encode_response(response(binary=False))
    assert info.value.status == 400
    body, length, media_type = encode_response(response(binary=True))
    assert media_type == "application/octet-stream"
    assert length is not None
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f8"), out)


def test_wrong_method_and_path_carry_error(client: TestClient) -> None:
    for r in (client.get("/v2/models/tiny/infer"), client.get("/v2/nothing")):
        assert r.status_code in (404, 405)
        assert "error" in r.json()


def test_v1_errors_stay_plain_problem_details(client: TestClient) -> None:
    r = client.post(
        "/v1/conv2d/forward", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert "error" not in r.json()


# --------------------------------------------------------------------------- repository


def test_repository_index_load_unload(client: TestClient, repo: Path, layers: list) -> None:
    index = {e["name"]: e for e in client.post("/v2/repository/index").json()}
    assert index["tiny"] == {"name": "tiny", "version": "1", "state": "READY", "reason": ""}
    assert index["broken"]["state"] == "UNAVAILABLE"
    ready = client.post("/v2/repository/index", json={"ready": True}).json()
    assert "broken" not in {e["name"] for e in ready}

    write_model(repo, "fresh", model_doc(layers, SHAPE))
    try:
        assert client.post("/v2/repository/models/fresh/load").status_code == 200
        assert client.get("/v2/models/fresh/ready").status_code == 200
        assert client.post("/v2/repository/models/fresh/unload", json={}).status_code == 200
        r = client.get("/v2/models/fresh/ready")
        assert r.status_code == 400
        assert "unloaded" in r.json()["error"]
        write_model(repo, "fresh", b"{")
        r = client.post("/v2/repository/models/fresh/load")
        assert r.status_code == 400
        assert "fresh/model.json: not valid JSON" in r.json()["error"]
    finally:
        (repo / "fresh" / "model.json").unlink()
        (repo / "fresh").rmdir()
    assert client.post("/v2/repository/models/fresh/load").status_code == 404
    assert client.post("/v2/repository/models/nope/unload").status_code == 404
    r = client.post("/v2/repository/models/..x/load")
    assert r.status_code == 400
    assert "not a valid model name" in r.json()["error"]
    r = client.post("/v2/repository/models/tiny/load", json={"parameters": {"config": "{}"}})
    assert r.status_code == 400


def test_metrics_per_model_and_info(client: TestClient, x: np.ndarray) -> None:
    decode(post_json(client, "tiny", {"inputs": [tensor("x", x)]}))
    post_json(client, "no-such-model-abc", {"inputs": [tensor("x", x)]})
    text = client.get("/metrics").text
    assert 'cnn_model_requests_total{model="tiny",status="200"}' in text
    assert 'model="no-such-model-abc"' not in text  # unknown names share "other"
    assert 'cnn_model_requests_total{model="other",status="404"}' in text
    models = {m["name"]: m for m in client.get("/v1/info").json()["models"]}
    assert (models["tiny"]["state"], models["tiny"]["platform"]) == ("READY", "cnncore")
    assert models["broken"]["state"] == "UNAVAILABLE"


@pytest.fixture
def on_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every computation on a worker thread, as one over INLINE_FLOPS runs: a test that
    holds one mid-way, to act while it is in flight, would hold the event loop too if
    it ran there (as a tiny one does)."""
    monkeypatch.setattr(dataplane, "INLINE_FLOPS", -1)


@pytest.mark.usefixtures("on_worker_threads")
def test_unload_lets_an_in_flight_request_finish(
    client: TestClient, layers: list[dict[str, Any]], x: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = client.app.state.models.entry("tiny").model  # type: ignore[attr-defined]
    started, release = threading.Event(), threading.Event()
    forward = model.graph.forward

    def held(xs: np.ndarray, **kwargs: Any) -> Any:
        started.set()
        release.wait(timeout=30)  # a safety net; released below
        return forward(xs, **kwargs)

    monkeypatch.setattr(model.graph, "forward", held)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(post_json, client, "tiny", {"inputs": [tensor("x", x)]})
        assert started.wait(timeout=30)
        assert client.post("/v2/repository/models/tiny/unload").status_code == 200
        assert client.get("/v2/models/tiny/ready").status_code == 400  # new requests: refused
        release.set()
        out = decode(future.result(timeout=30))  # the one in flight: answered in full
    # The same float64 sums as cnncore's (at most 18 terms per output): a few eps.
    np.testing.assert_allclose(out["out"], reference(layers, x), rtol=1e-12, atol=1e-12)
    assert client.post("/v2/repository/models/tiny/load").status_code == 200
    assert client.app.state.models.entry("tiny").model is not model  # type: ignore[attr-defined]


def test_model_control_none_refuses_load_and_unload(repo: Path) -> None:
    """By default (``none``) nobody who reaches the port can take a served model down."""
    with TestClient(create_app(Settings(model_repository=repo))) as c:
        for action in ("unload", "load"):
            r = c.post(f"/v2/repository/models/tiny/{action}")
            assert r.status_code == 403
            assert "model-control-mode explicit" in r.json()["error"]
        assert c.get("/v2/models/tiny/ready").status_code == 200
        assert c.post("/v2/repository/index").status_code == 200  # the index stays readable
        assert c.app.state.dataplane.model_ready("tiny")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v2/models/tiny/infer", {"inputs": [_x(1)], "outputs": None}, "outputs"),
        ("/v2/repository/models/tiny/unload", {"parameters": [None, None]}, "parameters"),
        ("/v2/repository/models/tiny/load", {"parameters": [None, None]}, "parameters"),
    ],
)
def test_what_the_schema_rejects_is_a_400(
    client: TestClient, path: str, body: Any, loc: str
) -> None:
    """Found by schemathesis's negative_data_rejection: both were answered 200."""
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert loc in r.json()["error"]
    assert client.get("/v2/models/tiny/ready").status_code == 200


def test_readme_model_and_answers(tmp_path: Path) -> None:
    """The README's model.json loads and answers what its curl examples show."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### The native format: `model.json`") :]
    doc = section[section.index("```json\n") + 8 : section.index("\n```", section.index("```json"))]
    write_model(tmp_path, "tiny", orjson.loads(doc))
    with TestClient(create_app(Settings(model_repository=tmp_path))) as c:
        x = {"name": "x", "datatype": "FP32", "shape": [1, 1, 4, 4], "data": list(range(16))}
        labels = {"name": "labels", "datatype": "INT64", "shape": [1], "data": [1]}
        out = decode(post_json(c, "tiny", {"inputs": [x]}))
        loss = decode(post_json(c, "tiny", {"inputs": [x, labels], "outputs": [{"name": "loss"}]}))
    exact, magnitude = _readme_model_exact(orjson.loads(doc), np.arange(16.0).reshape(4, 4))
    # float32 round-off, by the standard dot-product bound: the output is a dot product of
    # length 9 (linear, with its bias) of values that are themselves dot products of
    # length 10 (3x3 conv with its bias); ReLU and max pooling are exact and 1-Lipschitz.
    # So |out - exact| <= gamma_19 * (the same network on |x| and |weights|), u = 2^-24.
    # Which of the admissible roundings a CPU takes depends on its BLAS kernel's summation
    # order (the README was printed on an AVX2 machine, another gives 1 ulp less).
    u = 2.0**-24
    bound = 19 * u / (1 - 19 * u) * magnitude
    np.testing.assert_array_less(np.abs(out["out"][0] - exact), bound)
    # The README prints results to 8 digits: within half a unit of the last one plus the bound.
    np.testing.assert_array_less(np.abs(np.array([3.2200003, 4.1500006]) - exact), bound + 5e-8)
    # loss = log(sum exp(out - max)) + max - out[1]: 2 * the output error (through max and
    # out[1]; the log-sum-exp is 1-Lipschitz in the max norm), plus the float32 ops of the
    # loss itself, each at most 4 ulp of its operands' magnitude (numpy's float32 exp and
    # log are within 4 ulp), with max|out| + 1 bounding every operand.
    z = exact - exact.max()
    loss_exact = np.log(np.exp(z).sum()) - z[1]
    loss_bound = 2 * bound.max() + 6 * 4 * u * (np.abs(exact).max() + 1)
    assert abs(float(loss["loss"][0]) - loss_exact) < loss_bound
    assert abs(0.3325744 - loss_exact) < loss_bound + 5e-8


def _readme_model_exact(doc: dict[str, Any], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The README model's output for one 4x4 image in float64 from its float32 weights (so
    exact to about 1e-16), and the same network on |x| and |weights| (the round-off scale)."""

    def weights(v: Any) -> np.ndarray:
        if isinstance(v, dict):
            v = v["data"]
        return np.asarray(v, dtype=np.float32).astype(np.float64)

    conv, lin = doc["layers"][0], doc["layers"][4]
    w1, b1, w2, b2 = weights(conv["w"]), weights(conv["b"]), weights(lin["w"]), weights(lin["b"])

    def run(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray):
        xp = np.pad(x, 1)
        h = np.array(
            [
                [
                    [(xp[i : i + 3, j : j + 3] * w1[f, 0]).sum() + b1[f] for j in range(4)]
                    for i in range(4)
                ]
                for f in range(2)
            ]
        )
        h = np.maximum(h, 0).reshape(2, 2, 2, 2, 2).max(axis=(2, 4))  # relu, 2x2 max pool
        return h.reshape(-1) @ w2 + b2

    return run(x, w1, b1, w2, b2), run(np.abs(x), np.abs(w1), np.abs(b1), np.abs(w2), np.abs(b2))


def test_working_memory_budget(repo: Path, x: np.ndarray) -> None:
    with TestClient(create_app(Settings(model_repository=repo, max_request_bytes=64))) as c:
        r = post_json(c, "tiny", {"inputs": [tensor("x", x)]})
    assert r.status_code == 413
    assert "CNN_MAX_REQUEST_BYTES" in r.json()["error"]
    assert "even one sample of this shape is over the limit" in r.json()["error"]


@pytest.mark.usefixtures("on_worker_threads")
def test_overload_is_a_503_with_retry_after(
    repo: Path, x: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(model_repository=repo, max_concurrency=1, max_queue=0, retry_after=3)
    with TestClient(create_app(settings)) as c:
        model = c.app.state.models.entry("tiny").model  # type: ignore[attr-defined]
        started, release = threading.Event(), threading.Event()
        forward = model.graph.forward

        def held(xs: np.ndarray, **kwargs: Any) -> Any:
            started.set()
            release.wait(timeout=30)  # a safety net; released below
            return forward(xs, **kwargs)

        monkeypatch.setattr(model.graph, "forward", held)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post_json, c, "tiny", {"inputs": [tensor("x", x)]})
            assert started.wait(timeout=30)
            r = post_json(c, "tiny", {"inputs": [tensor("x", x)]})
            release.set()
            assert first.result(timeout=30).status_code == 200
    assert r.status_code == 503
    assert r.headers["retry-after"] == "3"
    assert "at capacity" in r.json()["error"]
