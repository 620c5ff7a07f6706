"""The Open Inference Protocol over gRPC (contract §5), against a real server process.

``tritonclient.grpc`` (run in a process of its own: tests/grpc_tritonclient.py)
gets the same answers as REST V2 for the same request, bit for bit: both transports call
one dataplane, and every engine here is deterministic for a given input (cnncore's bits
do not depend on its thread count; onnxruntime runs with the same session either way).
Malformed messages, sent with plain grpcio and the service's own stubs, get the status
code of the REST answer and leave the server serving.
"""

from __future__ import annotations

import gc
import importlib.util
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.grpc import inference_pb2 as pb
from service.grpc import inference_pb2_grpc as pb_grpc
from service.testing import free_port, serve
from tests.fixtures.onnx.reference import fixtures
from tests.triton import rest_infer, tritonclient

from .v2_models import model_doc, tiny_cnn_layers, write_model

http = pytest.importorskip("tritonclient.http")
if importlib.util.find_spec("tritonclient.grpc") is None:  # imported by the client process only
    pytest.skip("tritonclient[grpc] is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow  # server processes for the module

ONNX = next(fx for fx in fixtures() if fx.id == "lenet5.legacy")
KEY = "grpc-test-key_0123"
SHAPE = [-1, 1, 6, 6]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc-repo")
    layers = tiny_cnn_layers(np.random.default_rng(7))
    write_model(root, "tiny32", model_doc(layers, SHAPE, "FP32", ["a", "b", "c"]))
    write_model(root, "tiny64", model_doc(layers, SHAPE, "FP64"))
    (root / "lenet").mkdir()
    shutil.copy(ONNX.path, root / "lenet" / "model.onnx")
    return root


def _server(repo: Path, **env: str) -> Iterator[tuple[str, str]]:
    grpc_port = free_port()
    settings = {
        "CNN_MODEL_REPOSITORY": str(repo),
        "CNN_ENABLE_GRPC": "true",
        "CNN_GRPC_PORT": str(grpc_port),
        "CNN_MAX_BODY_BYTES": str(8 << 20),
        **env,
    }
    with serve(env=settings) as url:
        yield url, f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[tuple[str, str]]:
    """Model control explicit, no keys."""
    yield from _server(repo, CNN_MODEL_CONTROL_MODE="explicit")


@pytest.fixture(scope="module")
def guarded(repo: Path) -> Iterator[tuple[str, str]]:
    """API keys configured, model control none (the default)."""
    yield from _server(repo, CNN_API_KEYS=KEY)


# --------------------------------------------------------------------------- tritonclient


def test_metadata_readiness_and_index(server: tuple[str, str], tmp_path: Path) -> None:
    url, address = server
    calls = [
        {"op": "live"},
        {"op": "ready"},
        {"op": "model_ready", "model": "tiny32"},
        {"op": "server_metadata"},
        {"op": "model_metadata", "model": "tiny64"},
        {"op": "model_metadata", "model": "lenet"},
        {"op": "index"},
        {"op": "model_ready", "model": "nope"},
    ]
    results, _ = tritonclient(address, calls, tmp_path)
    live, ready, model_ready, server_meta, tiny_meta, lenet_meta, index, unknown = results
    assert (live, ready, model_ready) == (True, True, True)
    rest = http.InferenceServerClient(url.removeprefix("http://"))
    assert server_meta["name"] == "cnn-service"
    assert server_meta["extensions"] == rest.get_server_metadata()["extensions"]
    for meta in (tiny_meta, lenet_meta):
        want = rest.get_model_metadata(meta["name"])
        assert meta["platform"] == want["platform"]
        assert meta["versions"] == want["versions"]
        for side in ("inputs", "outputs"):
            got = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[side]]
            assert got == [(t["name"], t["datatype"], t["shape"]) for t in want[side]]
    assert {m["name"]: m["state"] for m in index["models"]} == {
        "lenet": "READY",
        "tiny32": "READY",
        "tiny64": "READY",
    }
    assert unknown["error"] == "NOT_FOUND"
    rest.close()
    del rest
    gc.collect()  # tritonclient.http's __del__ on this thread (see rest_infer)


@pytest.mark.parametrize(
    ("model", "dtype"), [("tiny32", np.float32), ("tiny64", np.float64), ("lenet", np.float32)]
)
def test_inference_and_gradients_equal_rest(
    server: tuple[str, str], tmp_path: Path, model: str, dtype: Any
) -> None:
    url, address = server
    rng = np.random.default_rng(1)
    shape = (3, 1, 6, 6) if model.startswith("tiny") else (3, *ONNX.reference()["x"].shape[1:])
    x = rng.standard_normal(shape).astype(dtype)
    classes = 3 if model.startswith("tiny") else 10
    labels = np.array([0, 2, 1], np.int64)
    out_grad = rng.standard_normal((3, classes)).astype(dtype)
    plain = {"op": "infer", "model": model, "inputs": [["x", "x", _dt(dtype)]]}
    with_labels = {
        "op": "infer",
        "model": model,
        "inputs": [["x", "x", _dt(dtype)], ["labels", "labels", "INT64"]],
        "outputs": ["out", "loss", "probabilities", "grad/x"],
    }
    every_grad = {
        "op": "infer",
        "model": model,
        "inputs": [["x", "x", _dt(dtype)], ["out_grad", "out_grad", _dt(dtype)]],
        "outputs": ["grad/*"],
    }
    calls = [plain, with_labels, every_grad]
    _, arrays = tritonclient(address, calls, tmp_path, x=x, labels=labels, out_grad=out_grad)
    np.testing.assert_array_equal(arrays["0/out"], rest_infer(url, model, {"x": x}, ["out"])["out"])
    names = ["out", "loss", "probabilities", "grad/x"]
    want = rest_infer(url, model, {"x": x, "labels": labels}, names)
    for name in names:
        assert arrays[f"1/{name}"].dtype == dtype
        np.testing.assert_array_equal(arrays[f"1/{name}"], want[name])
    grads = sorted(k.removeprefix("2/") for k in arrays if k.startswith("2/"))
    want = rest_infer(url, model, {"x": x, "out_grad": out_grad}, grads)
    assert "grad/x" in grads
    assert len(grads) > 1  # grad/x and every parameter
    for name in grads:
        np.testing.assert_array_equal(arrays[f"2/{name}"], want[name])


def _dt(dtype: Any) -> str:
    return "FP32" if dtype == np.float32 else "FP64"


def test_an_answer_over_4_mib(server: tuple[str, str], tmp_path: Path) -> None:
    """grad/x of 16,000 float64 6×6 images: 4.6 MB, over gRPC's default 4 MiB."""
    _, address = server
    x = np.random.default_rng(2).standard_normal((16_000, 1, 6, 6))
    out_grad = np.ones((16_000, 3))
    call = {
        "op": "infer",
        "model": "tiny64",
        "inputs": [["x", "x", "FP64"], ["out_grad", "g", "FP64"]],
        "outputs": ["grad/x"],
    }
    _, arrays = tritonclient(address, [call], tmp_path, x=x, g=out_grad)
    assert arrays["0/grad/x"].shape == x.shape
    assert arrays["0/grad/x"].nbytes > 4 << 20


def test_load_unload_and_errors(server: tuple[str, str], tmp_path: Path) -> None:
    _, address = server
    calls = [
        {"op": "unload", "model": "tiny32"},
        {"op": "model_ready", "model": "tiny32"},
        {"op": "infer", "model": "tiny32", "inputs": [["x", "x", "FP32"]]},
        {"op": "load", "model": "tiny32"},
        {"op": "model_ready", "model": "tiny32"},
        {"op": "load", "model": "missing"},
        {"op": "infer", "model": "tiny32", "inputs": [["x", "wide", "FP32"]]},
        {"op": "infer", "model": "tiny32", "inputs": [["x", "x64", "FP64"]]},
    ]
    x = np.zeros((1, 1, 6, 6), np.float32)
    results, _ = tritonclient(
        address, calls, tmp_path, x=x, wide=np.zeros((1, 1, 6, 7), np.float32), x64=x.astype(float)
    )
    assert results[1] is False
    assert results[2]["error"] == "INVALID_ARGUMENT"
    assert "UNAVAILABLE: unloaded" in results[2]["message"]
    assert results[4] is True
    assert results[5]["error"] == "NOT_FOUND"
    assert results[6]["error"] == "INVALID_ARGUMENT"
    assert "shape [1, 1, 6, 7]" in results[6]["message"]
    assert results[7]["error"] == "INVALID_ARGUMENT"
    assert "FP64" in results[7]["message"]


def test_keys_and_model_control_none(guarded: tuple[str, str], tmp_path: Path) -> None:
    _, address = guarded
    bearer = {"authorization": f"Bearer {KEY}"}
    calls = [
        {"op": "live"},  # open
        {"op": "ready"},  # open
        {"op": "model_metadata", "model": "tiny32"},
        {"op": "model_metadata", "model": "tiny32", "headers": {"authorization": "Bearer nope"}},
        {"op": "model_metadata", "model": "tiny32", "headers": bearer},
        {"op": "unload", "model": "tiny32", "headers": bearer},
        {"op": "model_ready", "model": "tiny32", "headers": bearer},
    ]
    results, _ = tritonclient(address, calls, tmp_path)
    assert results[:2] == [True, True]
    assert results[2]["error"] == "UNAUTHENTICATED"
    assert "authorization: Bearer" in results[2]["message"]
    assert results[3]["error"] == "UNAUTHENTICATED"
    assert results[4]["name"] == "tiny32"
    assert results[5]["error"] == "PERMISSION_DENIED"
    assert "--model-control-mode explicit" in results[5]["message"]
    assert results[6] is True  # still served


# --------------------------------------------------------------------------- plain grpcio


@pytest.fixture(scope="module")
def stub(server: tuple[str, str]) -> Iterator[Any]:
    with grpc.insecure_channel(server[1]) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _request(*inputs: Any, raw: list[bytes] | None = None) -> Any:
    req = pb.ModelInferRequest(model_name="tiny32", inputs=list(inputs))
    req.raw_input_contents.extend(raw or [])
    return req


def _x(shape: list[int], datatype: str = "FP32", **contents: Any) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return tensor


ZEROS = np.zeros(36, np.float32).tobytes()

MALFORMED = {
    "raw count": (_request(_x([1, 1, 6, 6]), raw=[ZEROS, ZEROS]), "INVALID_ARGUMENT", "entries"),
    "raw size": (_request(_x([1, 1, 6, 6]), raw=[ZEROS[:-4]]), "INVALID_ARGUMENT", "140 bytes"),
    "negative dim": (_request(_x([1, -1, 6, 6]), raw=[ZEROS]), "INVALID_ARGUMENT", "shape"),
    "huge dims": (  # compared with the bytes sent, never allocated
        _request(_x([1 << 40, 1 << 40, 6, 6]), raw=[ZEROS]),
        "INVALID_ARGUMENT",
        "raw_input_contents[0] has 144 bytes",
    ),
    "huge typed dims": (
        _request(_x([1 << 40, 1 << 40, 6, 6], fp32_contents=[0.0])),
        "INVALID_ARGUMENT",
        "has 1 values",
    ),
    "typed and raw": (
        _request(_x([1, 1, 6, 6], fp32_contents=[0.0] * 36), raw=[ZEROS]),
        "INVALID_ARGUMENT",
        "one or the other",
    ),
    "typed count": (
        _request(_x([1, 1, 6, 6], fp32_contents=[0.0] * 35)),
        "INVALID_ARGUMENT",
        "has 35 values",
    ),
    "typed field": (
        _request(_x([1, 1, 6, 6], fp64_contents=[0.0] * 36)),
        "INVALID_ARGUMENT",
        "contents.fp32_contents",
    ),
    "datatype": (_request(_x([1, 1, 6, 6], "BYTES")), "INVALID_ARGUMENT", "BYTES"),
    "no model": (pb.ModelInferRequest(model_name="nope"), "NOT_FOUND", "unknown model"),
    "bad name": (pb.ModelInferRequest(model_name="../x"), "INVALID_ARGUMENT", "model name"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_messages(stub: Any, case: str) -> None:
    request, code, words = MALFORMED[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code().name == code
    assert words in info.value.details()
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live


def test_typed_contents_answer_typed(stub: Any, server: tuple[str, str]) -> None:
    x = np.random.default_rng(3).standard_normal((2, 1, 6, 6)).astype(np.float32)
    typed = stub.ModelInfer(_request(_x([2, 1, 6, 6], fp32_contents=x.ravel())), timeout=30)
    raw = stub.ModelInfer(_request(_x([2, 1, 6, 6]), raw=[x.tobytes()]), timeout=30)
    assert not typed.raw_output_contents
    (out,) = typed.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("out", "FP32", [2, 3])
    from_raw = np.frombuffer(raw.raw_output_contents[0], "<f4")
    np.testing.assert_array_equal(np.array(out.contents.fp32_contents, np.float32), from_raw)


def test_a_message_over_the_body_limit(stub: Any) -> None:
    big = np.zeros((60_000, 1, 6, 6), np.float32)  # 8.6 MB > CNN_MAX_BODY_BYTES (8 MiB)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(_request(_x(list(big.shape)), raw=[big.tobytes()]), timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live


def test_health_service(server: tuple[str, str]) -> None:
    with grpc.insecure_channel(server[1]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="other"), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_count_rpcs(stub: Any, server: tuple[str, str]) -> None:
    import httpx

    stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30)
    text = httpx.get(f"{server[0]}/metrics").text
    assert 'route="grpc:ServerMetadata"' in text
    assert 'cnn_requests_total{method="GRPC",route="grpc:ModelInfer",status="NOT_FOUND"}' in text


def test_sigterm_finishes_rpcs_in_flight_and_refuses_new_ones(repo: Path) -> None:
    """Contract §5: on SIGTERM new RPCs get UNAVAILABLE (and the health service says
    NOT_SERVING) while the one in flight is answered in full."""
    import signal
    import threading

    import httpx

    from service.testing import serve_process

    grpc_port = free_port()
    env = {
        "CNN_MODEL_REPOSITORY": str(repo),
        "CNN_ENABLE_GRPC": "true",
        "CNN_GRPC_PORT": str(grpc_port),
        "CNN_SHUTDOWN_DELAY": "3",  # not ready at once; the listeners close after 3 s
        "CNN_MAX_BODY_BYTES": str(64 << 20),
    }
    x = np.random.default_rng(4).standard_normal((100_000, 1, 6, 6))  # a second or so
    slow = pb.ModelInferRequest(model_name="tiny64", inputs=[_x(list(x.shape), "FP64")])
    slow.raw_input_contents.append(x.tobytes())
    answers: list[Any] = []
    with (
        serve_process(env=env) as (url, proc),
        grpc.insecure_channel(
            f"127.0.0.1:{grpc_port}", options=[("grpc.max_receive_message_length", -1)]
        ) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        caller = threading.Thread(target=lambda: answers.append(stub.ModelInfer(slow, timeout=120)))
        caller.start()
        metric = 'cnn_model_requests_in_flight{model="tiny64"} 1.0'
        deadline = time.monotonic() + 60
        while metric not in httpx.get(f"{url}/metrics").text:  # the call is being computed
            assert time.monotonic() < deadline
            assert caller.is_alive()
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the handler runs at once; well inside the 3 s delay
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_request(_x([1, 1, 6, 6]), raw=[ZEROS]), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=30).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        caller.join(timeout=120)
    (answer,) = answers
    assert list(answer.outputs[0].shape) == [100_000, 3]


def test_load_and_overload_give_only_answers_and_unavailable(repo: Path) -> None:
    """The load test's gRPC leg: 8 callers × 5 calls against one computation slot and no
    queue; every call is answered or refused with UNAVAILABLE (never another code), the
    liveness RPC answers meanwhile, and the server computes normally afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    grpc_port = free_port()
    env = {
        "CNN_MODEL_REPOSITORY": str(repo),
        "CNN_ENABLE_GRPC": "true",
        "CNN_GRPC_PORT": str(grpc_port),
        "CNN_MAX_CONCURRENCY": "1",
        "CNN_MAX_QUEUE": "0",
        "CNN_QUEUE_TIMEOUT": "0.05",
    }
    x = np.random.default_rng(5).standard_normal((20_000, 1, 6, 6))
    heavy = pb.ModelInferRequest(model_name="tiny64", inputs=[_x(list(x.shape), "FP64")])
    heavy.raw_input_contents.append(x.tobytes())
    heavy.outputs.add(name="out")
    codes: list[str] = []
    with serve(env=env), grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def caller(_: int) -> None:
            for _ in range(5):
                try:
                    stub.ModelInfer(heavy, timeout=60)
                    codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)

        with ThreadPoolExecutor(8) as pool:
            running = list(pool.map(lambda i: pool.submit(caller, i), range(8)))
            while not all(f.done() for f in running):
                assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
                time.sleep(0.05)
            for f in running:
                f.result()
        answer = stub.ModelInfer(_request(_x([1, 1, 6, 6]), raw=[ZEROS]), timeout=30)
    assert len(codes) == 40
    assert set(codes) <= {"OK", "UNAVAILABLE"}, set(codes)
    assert "OK" in codes
    assert list(answer.outputs[0].shape) == [1, 3]
