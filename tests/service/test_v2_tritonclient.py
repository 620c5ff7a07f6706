"""``tritonclient.http``, unmodified and with no extra headers, against a real server
process: every route, every output, binary on and off and mixed; the repository
extension, also while inferences run; ``service.client.Client`` on the same server.
(That an unload lets an in-flight request finish is shown in-process, deterministically,
in test_v2_protocol.py.)"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnncore
from service.client import Client, ServiceError
from service.testing import serve

from .v2_models import CLASSES, core_layers, model_doc, tiny_cnn_layers, write_model

http = pytest.importorskip("tritonclient.http")
utils = pytest.importorskip("tritonclient.utils")

pytestmark = pytest.mark.slow  # a server process per module

SHAPE = [-1, 1, 6, 6]


@pytest.fixture(scope="module")
def layers() -> list[dict[str, Any]]:
    return tiny_cnn_layers(np.random.default_rng(11))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, layers: list[dict[str, Any]]) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "tiny", model_doc(layers, SHAPE, "FP64", ["a", "b", "c"]))
    write_model(root, "tiny32", model_doc(layers, SHAPE, "FP32"))
    return root


@pytest.fixture(scope="module")
def base_url(repo: Path) -> Iterator[str]:
    env = {
        "CNN_MODEL_REPOSITORY": str(repo),
        "CNN_MAX_CONCURRENCY": "4",
        "CNN_MODEL_CONTROL_MODE": "explicit",  # the repository test loads and unloads
    }
    with serve(env=env) as url:
        yield url


@pytest.fixture(scope="module")
def triton(base_url: str) -> Iterator[Any]:
    client = http.InferenceServerClient(base_url.removeprefix("http://"), concurrency=4)
    yield client
    client.close()
    del client  # __del__ joins its gevent pool again: here, not on another thread
    gc.collect()


@pytest.fixture
def x(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(3, 1, 6, 6))


def infer_input(name: str, arr: np.ndarray, binary: bool) -> Any:
    datatype = utils.np_to_triton_dtype(arr.dtype)
    tensor = http.InferInput(name, list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr, binary_data=binary)
    return tensor


def test_server_routes(triton: Any) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "cnn-service"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    assert triton.is_model_ready("tiny")
    assert triton.is_model_ready("tiny", "1")
    assert not triton.is_model_ready("tiny", "2")
    assert not triton.is_model_ready("nope")
    meta = triton.get_model_metadata("tiny", "1")
    assert meta["platform"] == "cnncore"
    assert {o["name"] for o in meta["outputs"]} >= {"out", "loss", "grad/x", "grad/0.w"}
    index = {e["name"]: e["state"] for e in triton.get_model_repository_index()}
    assert index == {"tiny": "READY", "tiny32": "READY"}


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [(False, False), (True, True), (True, False), (False, True)],
    ids=["json", "binary", "binary-in", "binary-out"],
)
@pytest.mark.parametrize("model", ["tiny", "tiny32"])
def test_inference(
    triton: Any, layers: list, x: np.ndarray, model: str, binary_in: bool, binary_out: bool
) -> None:
    dtype = np.float64 if model == "tiny" else np.float32
    xs = x.astype(dtype)
    outputs = [http.InferRequestedOutput("out", binary_data=binary_out)]
    result = triton.infer(model, [infer_input("x", xs, binary_in)], outputs=outputs)
    out = result.as_numpy("out")
    assert out.dtype == dtype
    expected = cnncore.network_forward(xs.astype(np.float64), core_layers(layers))[0]
    # float64: the same sums (18 terms at most); float32: weights rounded once and ~30
    # roundings of eps32 = 1.2e-7 on terms below ~10: 3e-5 absolute allows both.
    np.testing.assert_allclose(out, expected, rtol=1e-12 if model == "tiny" else 0, atol=3e-5)


def test_default_outputs_come_back_binary(triton: Any, x: np.ndarray) -> None:
    labels = np.array([0, 1, 2], dtype=np.int64)
    result = triton.infer("tiny", [infer_input("x", x, True), infer_input("labels", labels, False)])
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["out", "loss", "probabilities"]
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    assert result.as_numpy("loss").shape == (1,)
    # Rows of softmax sum to 1 up to a few float64 roundings (3 terms).
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, rtol=1e-15)


@pytest.mark.parametrize("signal", ["labels", "target", "out_grad"])
def test_gradients_mixed_binary_and_json(
    triton: Any, layers: list, x: np.ndarray, rng: np.random.Generator, signal: str
) -> None:
    if signal == "labels":
        value = np.array([2, 0, 1], dtype=np.int32)
    else:
        value = rng.normal(size=(3, CLASSES))
    outputs = [
        http.InferRequestedOutput("grad/x", binary_data=True),
        http.InferRequestedOutput("grad/0.w", binary_data=False),
        http.InferRequestedOutput("out", binary_data=True),
    ]
    result = triton.infer(
        "tiny", [infer_input("x", x, False), infer_input(signal, value, True)], outputs=outputs
    )
    core = core_layers(layers)
    out, cache = cnncore.network_forward(x, core)
    if signal == "labels":
        dout = cnncore.softmax_cross_entropy(out, value)[1]
    elif signal == "target":
        dout = cnncore.mse_loss(out, value)[1]
    else:
        dout = value
    dx, grads = cnncore.network_backward(dout, cache)
    # The server runs these same float64 passes (possibly in another order): a few eps
    # relative to the largest terms; 1e-10 absolute on gradients of order 1 allows it.
    np.testing.assert_allclose(result.as_numpy("grad/x"), dx, rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.as_numpy("grad/0.w"), grads[0]["dw"], rtol=0, atol=1e-10)


def test_errors_come_back_as_exceptions_with_the_message(triton: Any, x: np.ndarray) -> None:
    with pytest.raises(utils.InferenceServerException, match="computes in FP32") as info:
        triton.infer("tiny32", [infer_input("x", x, True)])
    assert info.value.status() == "400"
    with pytest.raises(utils.InferenceServerException, match="unknown model"):
        triton.infer("nope", [infer_input("x", x, True)])
    with pytest.raises(utils.InferenceServerException, match="needs an upstream signal"):
        triton.infer(
            "tiny", [infer_input("x", x, True)], outputs=[http.InferRequestedOutput("grad/x")]
        )
    x5 = infer_input("x", np.ascontiguousarray(x[:, :, :5]), True)
    with pytest.raises(utils.InferenceServerException, match="takes \\[-1, 1, 6, 6\\]"):
        triton.infer("tiny", [x5])


def test_load_and_unload_under_concurrent_inference(
    triton: Any, base_url: str, repo: Path, layers: list
) -> None:
    x = np.random.default_rng(2).normal(size=(2, 1, 6, 6))
    stop = threading.Event()
    answers: list[tuple[int | None, str]] = []

    def hammer() -> None:
        with Client(base_url) as api:
            while not stop.is_set():
                try:
                    api.infer("tiny", x)
                    answers.append((200, ""))
                except ServiceError as exc:  # checked below, outside this thread
                    answers.append((exc.status, exc.detail))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()

    def answered(n: int) -> None:
        deadline = time.monotonic() + 30  # a safety net, not a measurement
        while len(answers) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    try:
        answered(3)  # the clients are running
        for _ in range(5):
            triton.unload_model("tiny")
            time.sleep(0.02)  # let requests meet the unloaded model
            triton.load_model("tiny")
        answered(len(answers) + 3)  # and they are answered after the last load
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert answers
    # While unloaded the model is UNAVAILABLE (400); never a 5xx, never a broken answer.
    assert {status for status, _ in answers} <= {200, 400}, answers[:3]
    assert all("'tiny' is UNAVAILABLE: unloaded" in d for s, d in answers if s == 400)
    assert triton.is_model_ready("tiny")
    write_model(repo, "late", model_doc(layers, SHAPE))
    triton.load_model("late")
    assert triton.is_model_ready("late")
    with pytest.raises(utils.InferenceServerException, match="not a valid model name"):
        triton.load_model("..")


def test_python_client(base_url: str, layers: list, x: np.ndarray) -> None:
    with Client(base_url) as api:
        assert {e["name"] for e in api.repository_index()} >= {"tiny", "tiny32"}
        assert api.model_metadata("tiny")["inputs"][0] == {
            "name": "x",
            "datatype": "FP64",
            "shape": SHAPE,
        }
        result = api.infer(
            "tiny", x, labels=[0, 1, 2], outputs=["out", "loss", "grad/x", "grad/4.b"]
        )
        assert list(result) == ["out", "loss", "grad/x", "grad/4.b"]
        core = core_layers(layers)
        out, cache = cnncore.network_forward(x, core)
        loss, dout = cnncore.softmax_cross_entropy(out, np.array([0, 1, 2]))
        dx, grads = cnncore.network_backward(dout, cache)
        # The same float64 passes as the server's: a few eps relative to terms of order 1.
        np.testing.assert_allclose(result["loss"], [loss], rtol=1e-12)
        np.testing.assert_allclose(result["grad/x"], dx, rtol=0, atol=1e-10)
        np.testing.assert_allclose(result["grad/4.b"], grads[4]["db"], rtol=0, atol=1e-10)
        result["out"][0, 0] = 1.0  # the arrays are the caller's (writable)
        with pytest.raises(ServiceError, match="unknown output") as info:
            api.infer("tiny", x, outputs=["nope"])
        assert info.value.status == 400


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(triton: Any, layers: list, x: np.ndarray, algorithm: str) -> None:
    result = triton.infer(
        "tiny", [infer_input("x", x, True)], request_compression_algorithm=algorithm
    )
    expected = cnncore.network_forward(x, core_layers(layers))[0]
    # The same float64 sums as cnncore's (at most 18 terms): a few eps.
    np.testing.assert_allclose(result.as_numpy("out"), expected, rtol=1e-12, atol=1e-12)
