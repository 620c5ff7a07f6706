"""ONNX models through the real service: every fixture of tests/fixtures/onnx (PyTorch's
legacy and dynamo exports) dropped into a repository as ``<model>/model.onnx`` and called
with ``tritonclient.http``: metadata from the graph, and outputs and gradients equal to
torch's numbers. A model the importer refuses is UNAVAILABLE with the importer's reason.
Plain inference runs on onnxruntime (contract §7) and equals its in-process answer.

Tolerance: the service computes in float32 (the models' datatype); torch's references are
float64, so each element may differ by ``K·(eps32 + eps64)·T`` (tests/fixtures/onnx/
reference.py derives ``K`` and ``T``), the bound test_onnx_fixtures.py uses in-process.
"""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnncore import load_onnx
from cnncore.threads import WORKERS
from service.testing import serve
from tests.fixtures.onnx.reference import EPS, Fixture, fixtures, magnitudes, sum_terms

http = pytest.importorskip("tritonclient.http")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow  # one server process for the module

FIXTURES = fixtures()
REFUSED_REASON = 'refused/model.onnx: node "Conv_12" (Conv): auto_pad SAME_LOWER is not supported'


def _refused_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W"], ["y"], name="Conv_12", auto_pad="SAME_LOWER")],
        "refused",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 4, 4])],
        initializer=[numpy_helper.from_array(np.ones((1, 1, 2, 2), np.float32), "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("onnx-repo")
    for fx in FIXTURES:
        (root / fx.id).mkdir()
        shutil.copy(fx.path, root / fx.id / "model.onnx")
    (root / "refused").mkdir()
    onnx.save(_refused_model(), root / "refused" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def triton(repo: Path) -> Iterator[Any]:
    with serve(env={"CNN_MODEL_REPOSITORY": str(repo)}) as url:
        client = http.InferenceServerClient(url.removeprefix("http://"))
        yield client
        client.close()
        del client  # __del__ joins its gevent pool again: here, not on another thread
        gc.collect()


def test_repository_index(triton: Any) -> None:
    index = {m["name"]: m for m in triton.get_model_repository_index()}
    assert set(index) == {fx.id for fx in FIXTURES} | {"refused"}
    for fx in FIXTURES:
        assert index[fx.id]["state"] == "READY", index[fx.id]
    assert index["refused"]["state"] == "UNAVAILABLE"
    assert index["refused"]["reason"] == REFUSED_REASON


@pytest.mark.parametrize("fx", FIXTURES, ids=[f.id for f in FIXTURES])
def test_metadata_from_the_graph(triton: Any, fx: Fixture) -> None:
    meta = triton.get_model_metadata(fx.id)
    g = load_onnx(fx.path)
    assert meta["platform"] == "onnxruntime_onnx"  # onnxruntime is installed with the dev extra
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["x"] == {"name": "x", "datatype": "FP32", "shape": list(g.input_shape or ())}
    outputs = {o["name"] for o in meta["outputs"]}
    assert {"out", "grad/x"} | {f"grad/{p}" for p in g.params} <= outputs


@pytest.mark.parametrize("fx", FIXTURES, ids=[f.id for f in FIXTURES])
def test_infers_and_differentiates_like_torch(triton: Any, fx: Fixture) -> None:
    ref = fx.reference()
    x, dout = ref["x"], ref["out_grad"]
    g = load_onnx(fx.path)  # in-process, only for the bound's K and T
    names = (
        ["out", "grad/x", *(f"grad/{p}" for p in fx.params)]
        if fx.param_grads
        else ["out", "grad/x"]
    )
    inputs = []
    for name, arr in (("x", x), ("out_grad", dout)):
        tensor = http.InferInput(name, list(arr.shape), "FP32")
        tensor.set_data_from_numpy(arr.astype(np.float32), binary_data=True)
        inputs.append(tensor)
    result = triton.infer(
        fx.id, inputs, outputs=[http.InferRequestedOutput(n, binary_data=True) for n in names]
    )

    t_out, t_grads = magnitudes(g, x, dout)
    scale = sum_terms(g, x.shape) * (EPS[np.dtype(np.float32)] + EPS[np.dtype(np.float64)])
    wanted = {"out": (ref["out"], t_out), "grad/x": (ref["grad/x"], t_grads["x"])}
    if fx.param_grads:
        for init, torch_name in fx.params.items():
            wanted[f"grad/{init}"] = (ref[f"grad/{torch_name}"], t_grads[init])
    for name, (want, t) in wanted.items():
        got = result.as_numpy(name)
        assert got.dtype == np.float32, name
        assert got.shape == want.shape, name
        err = np.abs(got.astype(np.float64) - want)
        assert np.all(err <= scale * t), f"{name}: max error {err.max():.3g}"


def _ort_out(path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's own answer, with the server's session options (same thread count, so
    the same partition of every reduction and the same bits)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = WORKERS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x})
    return np.asarray(out)


@pytest.mark.parametrize("fx", FIXTURES, ids=[f.id for f in FIXTURES])
def test_plain_inference_is_onnxruntimes_and_gradients_cnncores(triton: Any, fx: Fixture) -> None:
    """Contract §7: plain inference gives exactly InferenceSession.run's answer; a request
    with an upstream signal runs on cnncore, whose out is graph.forward's, bit for bit
    (cnncore's bits do not depend on its thread count)."""
    ref = fx.reference()
    x, dout = ref["x"].astype(np.float32), ref["out_grad"].astype(np.float32)
    image = http.InferInput("x", list(x.shape), "FP32")
    image.set_data_from_numpy(x, binary_data=True)
    plain = triton.infer(fx.id, [image], outputs=[http.InferRequestedOutput("out")])
    np.testing.assert_array_equal(plain.as_numpy("out"), _ort_out(fx.path, x))

    signal = http.InferInput("out_grad", list(dout.shape), "FP32")
    signal.set_data_from_numpy(dout, binary_data=True)
    with_grad = triton.infer(
        fx.id,
        [image, signal],
        outputs=[http.InferRequestedOutput("out"), http.InferRequestedOutput("grad/x")],
    )
    cnn_out, _ = load_onnx(fx.path).forward(x, backward=True)  # the pass a gradient runs
    np.testing.assert_array_equal(with_grad.as_numpy("out"), cnn_out)


def test_cnn_service_models_lists_onnx_operators(repo: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "models", "--model-repository", str(repo)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1  # the refused model is unavailable
    assert "conv2d 4" in done.stdout  # resnet_block: stem, two block convolutions, downsample
    assert REFUSED_REASON in done.stdout
