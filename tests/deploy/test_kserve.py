"""deploy/kserve: the ServingRuntime and InferenceService follow KServe's custom-runtime
conventions, and the service started with exactly the runtime's arguments serves the one
model of a folder laid out like /mnt/models over V2."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import numpy as np
import orjson
import pytest
import tomllib

import cnncore
from service import cli
from service.models import LOADERS
from service.settings import Settings
from service.testing import free_port, serve

from ..service.v2_models import core_layers, model_doc, tiny_cnn_layers
from .manifests import ROOT, container, documents, memory_budget, quantity

KSERVE = ROOT / "deploy" / "kserve"
#: KServe's conventions (its custom ServingRuntime docs and built-in runtimes): the storage
#: initializer's folder, the model name template, the HTTP port the revision routes to.
MODEL_DIR = "/mnt/models"
NAME_TEMPLATE = "{{.Name}}"
HTTP_PORT = 8080
#: The runtime's model formats and the file each one means in the model's folder.
FORMAT_FILES = {"cnncore": "model.json", "onnx": "model.onnx"}
ONNX_FIXTURE = ROOT / "tests" / "fixtures" / "onnx" / "lenet5.legacy.onnx"


def _runtime() -> dict[str, Any]:
    (runtime,) = documents(KSERVE / "servingruntime.yaml")
    return runtime


def _isvc() -> dict[str, Any]:
    (isvc,) = documents(KSERVE / "inferenceservice.yaml")
    return isvc


def _env(runtime: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var["value"] for var in container(runtime)["env"]}


# --------------------------------------------------------------------------- the manifests


def test_the_runtime_speaks_v2_for_the_onnx_and_native_formats() -> None:
    runtime = _runtime()
    assert (runtime["apiVersion"], runtime["kind"]) == (
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
    )
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert set(formats) == set(FORMAT_FILES)
    assert set(FORMAT_FILES.values()) <= set(LOADERS)  # each format is a file the service loads
    for fmt in formats.values():
        assert isinstance(fmt["version"], str)  # KServe compares versions as strings
    assert formats["onnx"]["autoSelect"] is False  # Triton's runtime claims onnx too


def test_the_runtime_container_passes_kserves_arguments_to_the_console_script() -> None:
    spec = container(_runtime())
    assert spec["name"] == "kserve-container"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert spec["command"] == ["cnn-service"]
    assert "cnn-service" in scripts
    assert spec["args"] == [
        f"--model_name={NAME_TEMPLATE}",
        f"--model_dir={MODEL_DIR}",
        f"--http_port={HTTP_PORT}",
        "--grpc_port=8081",
    ]
    assert [p["containerPort"] for p in spec["ports"]] == [HTTP_PORT]
    assert spec["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": HTTP_PORT}
    assert _env(_runtime())["CNN_HOST"] == "0.0.0.0"
    annotations = _runtime()["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == HTTP_PORT


def test_the_runtime_container_is_a_valid_kubernetes_container() -> None:
    # KServe copies it into the predictor's pod: check it as a core/v1 container, strictly.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "predictor"},
        "spec": {"containers": [container(_runtime())]},
    }
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    security = container(_runtime())["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]


def test_the_runtime_memory_limit_covers_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _runtime()
    for name, value in _env(runtime).items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    resources = container(runtime)["resources"]
    base = quantity(runtime["spec"]["annotations"]["cnn-service/memory-base"])
    assert quantity(resources["limits"]["memory"]) >= memory_budget(settings, base)
    cpus = quantity(resources["limits"]["cpu"])
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "CNN_MAX_CONCURRENCY"):
        assert int(_env(runtime)[name]) == cpus, name


def test_the_inference_service_uses_the_runtime_over_v2() -> None:
    isvc = _isvc()
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == _runtime()["metadata"]["name"]
    formats = {f["name"] for f in _runtime()["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["storageUri"].split("://")[0] in ("gs", "s3", "pvc", "https")
    # {{.Name}} becomes the InferenceService's name: it must be a valid model name.
    cli.parse_args(["--model_name", isvc["metadata"]["name"], "--model_dir", "."], Settings())


# --------------------------------------------------------------------------- the CLI

BAD_ARGS = {
    "name-without-dir": ["--model_name=digits"],
    "dir-without-name": ["--model_dir=."],
    "dir-missing": ["--model_name=digits", "--model_dir=/no/such/folder"],
    "bad-name": ["--model_name=../etc", "--model_dir=."],
}


@pytest.mark.parametrize("argv", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_bad_kserve_arguments_are_refused_by_the_cli(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(argv, Settings())
    assert exited.value.code == 2
    assert "--model_" in capsys.readouterr().err


def test_http_port_is_kserves_spelling_of_port() -> None:
    assert cli.parse_args(["--http_port=8080"], Settings()).port == HTTP_PORT


# --------------------------------------------------------------------------- the real process


def _runtime_argv(name: str, model_dir: Path, port: int) -> list[str]:
    """The runtime's command and arguments with what KServe and the node fill in: the
    model's name, the storage folder (a temporary one here) and a free loopback port."""
    spec = container(_runtime())
    filled = [
        arg.replace(NAME_TEMPLATE, name)
        .replace(f"={MODEL_DIR}", f"={model_dir}")
        .replace(f"--http_port={HTTP_PORT}", f"--http_port={port}")
        for arg in spec["args"]
    ]
    script = Path(sys.executable).parent / spec["command"][0]
    return [str(script) if script.exists() else spec["command"][0], *filled]


def _runtime_env() -> dict[str, str]:
    # Listening on the loopback here, not 0.0.0.0 as in the pod; no 5 s delay at exit.
    return {**_env(_runtime()), "CNN_HOST": "127.0.0.1", "CNN_SHUTDOWN_DELAY": "0"}


def _infer(base_url: str, name: str, x: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64"}[x.dtype]
    request = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}
        ]
    }
    r = httpx.post(f"{base_url}/v2/models/{name}/infer", json=request, timeout=60)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "out"
    assert out["datatype"] == datatype
    return out, np.asarray(out["data"], dtype=x.dtype).reshape(out["shape"])


def _served_alone(base_url: str, name: str, platform: str) -> dict[str, Any]:
    index = httpx.post(f"{base_url}/v2/repository/index", timeout=30).json()
    assert [(m["name"], m["state"]) for m in index] == [(name, "READY")]
    metadata = httpx.get(f"{base_url}/v2/models/{name}", timeout=30).json()
    assert metadata["name"] == name
    assert metadata["platform"] == platform
    assert httpx.get(f"{base_url}/v2/models/{name}/ready", timeout=30).status_code == 200
    return metadata


@pytest.mark.slow
def test_started_with_the_runtime_arguments_it_serves_the_native_model_of_the_folder(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    layers = tiny_cnn_layers(rng)
    (tmp_path / "model.json").write_bytes(orjson.dumps(model_doc(layers, [-1, 1, 6, 6])))
    port = free_port()
    argv = _runtime_argv("digits", tmp_path, port)
    with serve(argv, port=port, env=_runtime_env(), timeout=60) as base_url:
        metadata = _served_alone(base_url, "digits", "cnncore")
        assert metadata["inputs"][0]["shape"] == [-1, 1, 6, 6]
        x = rng.standard_normal((2, 1, 6, 6))
        out, served = _infer(base_url, "digits", x)
    expected, _ = cnncore.network_forward(x, core_layers(layers))
    assert out["shape"] == list(expected.shape)
    # float64, the same operations; the longest sum has 18 terms (linear), so summation
    # order alone can differ by ~18 eps = 4e-15 of the sum of |terms| (values are O(1)).
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_started_with_the_runtime_arguments_it_serves_an_onnx_model_of_the_folder(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    ort = pytest.importorskip("onnxruntime")
    if not ONNX_FIXTURE.is_file():
        pytest.skip(f"the ONNX fixture {ONNX_FIXTURE.name} is not in this checkout")
    shutil.copy(ONNX_FIXTURE, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(ONNX_FIXTURE), providers=["CPUExecutionProvider"])
    (declared,) = session.get_inputs()
    shape = [2, *(int(d) for d in declared.shape[1:])]
    x = rng.standard_normal(shape).astype(np.float32)
    (expected,) = session.run(None, {declared.name: x})
    port = free_port()
    argv = _runtime_argv("lenet5", tmp_path, port)
    with serve(argv, port=port, env=_runtime_env(), timeout=60) as base_url:
        _served_alone(base_url, "lenet5", "onnxruntime_onnx")  # plain inference: ort
        _, served = _infer(base_url, "lenet5", x)
    # float32 against onnxruntime's own kernels: the longest sum (fc1) has 400 terms, so
    # accumulation order may differ by ~400 eps32 = 5e-5 of the sum of |terms|, which is
    # at most a few times the output scale; 1e-4 of that scale leaves room for both.
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-4 * max(scale, 1.0))
