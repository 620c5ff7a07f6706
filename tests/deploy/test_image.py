"""The Dockerfile, built and called: its own CMD serves REST and gRPC, as a non-root user.

Built with buildah on a stand-in for ``python:3.11-slim`` made from Debian's packages
and run in a network namespace of its own (tests/deploy/image.py says how and why).
The container serves a repository mounted read-only at ``/models``: the bundled
``digits`` model (native) and LeNet-5 (ONNX, plain inference on onnxruntime inside the
image, gradients on cnncore).

Oracles. tritonclient.http and tritonclient.grpc on this host send the same requests; the
two transports call one dataplane, so their answers are equal bit for bit. The answers
are also checked against an independent computation here: for LeNet-5, torch's float64
reference (the ONNX fixtures'); for ``digits``, this host's cnncore in float32. The
image's numpy, BLAS and onnxruntime may differ from this host's, so the bound is the
error analysis of tests/fixtures/onnx/reference.py: each float32 answer is within
``K·eps32·T`` of the exact value (``K`` the sum of the pass's largest tensor sizes,
``T`` the magnitude twin's answer), so two float32 answers differ by at most twice that,
and a float32 answer from a float64 reference by ``K·(eps32 + eps64)·T``.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cnncore import load_onnx
from service.models import native
from service.testing import serve_process
from tests.fixtures.onnx.reference import EPS, fixtures, magnitudes, sum_terms
from tests.triton import rest_infer, tritonclient

from . import image
from .conftest import IMAGE_REPORT

pytestmark = pytest.mark.slow  # a Debian root file system, an image build, a server

ROOT = Path(__file__).resolve().parents[2]
LENET = next(fx for fx in fixtures() if fx.id == "lenet5.legacy")
DIGITS = ROOT / "service" / "default_models" / "digits" / "model.json"
if importlib.util.find_spec("tritonclient") is None:
    pytest.skip("tritonclient is not installed (pip install -e '.[dev]')", allow_module_level=True)


@dataclass(frozen=True)
class Served:
    """The image's CMD running in ``ns``: REST at ``url``, gRPC at ``grpc``."""

    tag: str
    container: str
    ns: image.Namespace
    url: str
    grpc: str


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest) -> str:
    why = image.missing()
    if why:
        pytest.skip(f"the image cannot be built here: {why}")
    started = time.monotonic()
    tag = image.build_image()
    size = image.image_size(tag)
    request.config.stash.setdefault(IMAGE_REPORT, []).append(
        f"image {tag}: {size} uncompressed (the stand-in base: {image.image_size(image.BASE_TAG)}),"
        f" built in {time.monotonic() - started:.0f} s (the base included when not cached)"
    )
    return tag


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image-repo") / "models"
    for name, source, file in (
        ("digits", DIGITS, "model.json"),
        ("lenet", LENET.path, "model.onnx"),
    ):
        (root / name).mkdir(parents=True)
        shutil.copy(source, root / name / file)
    for path in [root, *root.rglob("*")]:  # the container's user is not this one
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.fixture(scope="module")
def served(built: str, repo: Path) -> Iterator[Served]:
    config = image.image_config(built)
    argv = [*(config.get("Entrypoint") or []), *config["Cmd"]]  # the image's own command
    with image.container(built) as name, image.network_namespace() as ns:
        command = image.buildah_run(
            name, argv, volumes=[f"{repo}:/models:ro"], env=["CNN_MODEL_REPOSITORY=/models"]
        )
        with serve_process(
            ["ip", "netns", "exec", ns.name, *command],
            base_url=f"http://{ns.address}:8000",
            timeout=120,
        ) as (url, _):
            yield Served(built, name, ns, url, f"{ns.address}:8081")


def test_the_image_config(built: str) -> None:
    config = image.image_config(built)
    assert config["User"].split(":")[0] not in ("", "0", "root")
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8081/tcp"}
    assert config["Cmd"] == ["cnn-service", "--host", "0.0.0.0"]
    assert "/health/ready" in " ".join(config["Healthcheck"]["Test"])


def test_serves_as_a_non_root_user(served: Served) -> None:
    argvs = {
        pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in served.ns.pids()
    }
    # The server's processes, not buildah's (root, outside the chroot) that started them.
    servers = [p for p, argv in argvs.items() if any(a.endswith(b"/cnn-service") for a in argv[:2])]
    assert servers, f"no cnn-service process in the container's namespace: {argvs}"
    assert {image.process_uid(pid) for pid in servers} == {10001}
    meta = httpx.get(f"{served.url}/v2", timeout=10).json()
    assert meta["name"] == "cnn-service"


def test_the_healthcheck_passes(served: Served) -> None:
    test = image.image_config(served.tag)["Healthcheck"]["Test"]
    assert test[0] == "CMD"
    done = served.ns.run(image.buildah_run(served.container, test[1:]), timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_platforms(served: Served) -> None:
    platforms = {
        name: httpx.get(f"{served.url}/v2/models/{name}", timeout=10).json()["platform"]
        for name in ("digits", "lenet")
    }
    assert platforms == {"digits": "cnncore", "lenet": "onnxruntime_onnx"}


def _both(
    served: Served, model: str, inputs: dict[str, np.ndarray], outputs: list[str], tmp_path: Path
) -> dict[str, np.ndarray]:
    """The answer over REST V2 (binary) after checking gRPC gives the same bits."""
    rest = rest_infer(served.url, model, inputs, outputs)
    call = {
        "op": "infer",
        "model": model,
        "inputs": [[name, name, "FP32"] for name in inputs],
        "outputs": outputs,
    }
    tmp_path.mkdir(exist_ok=True)
    results, arrays = tritonclient(served.grpc, [call], tmp_path, **inputs)
    assert results == [None], results
    for name in outputs:
        got = arrays[f"0/{name}"]
        assert got.dtype == rest[name].dtype == np.float32, name
        assert got.tobytes() == rest[name].tobytes(), f"{name}: gRPC and REST differ"
    return rest


def test_lenet_over_rest_and_grpc(served: Served, tmp_path: Path) -> None:
    ref = LENET.reference()
    x, dout = ref["x"].astype(np.float32), ref["out_grad"].astype(np.float32)
    g = load_onnx(LENET.path)
    t_out, t_grads = magnitudes(g, x, dout)
    scale = sum_terms(g, x.shape) * (EPS[np.dtype(np.float32)] + EPS[np.dtype(np.float64)])

    plain = _both(served, "lenet", {"x": x}, ["out"], tmp_path / "plain")  # onnxruntime
    names = ["out", "grad/x", *(f"grad/{p}" for p in LENET.params)]
    grads = _both(served, "lenet", {"x": x, "out_grad": dout}, names, tmp_path / "grad")
    wanted: dict[str, tuple[Any, np.ndarray, np.ndarray]] = {
        "out (onnxruntime)": (plain["out"], ref["out"], t_out),
        "out": (grads["out"], ref["out"], t_out),
        "grad/x": (grads["grad/x"], ref["grad/x"], t_grads["x"]),
    }
    for init, torch_name in LENET.params.items():
        wanted[f"grad/{init}"] = (grads[f"grad/{init}"], ref[f"grad/{torch_name}"], t_grads[init])
    for name, (got, want, t) in wanted.items():
        assert got.shape == want.shape, name
        err = np.abs(got.astype(np.float64) - want)
        assert np.all(err <= scale * t), f"{name}: max error {err.max():.3g}"


def test_digits_over_rest_and_grpc(served: Served, tmp_path: Path) -> None:
    model = native.load(DIGITS, "digits")
    rng = np.random.default_rng(5)
    x = rng.integers(0, 17, size=(3, 1, 8, 8)).astype(np.float32) / 16  # as the model card says
    dout = rng.standard_normal((3, 10)).astype(np.float32)
    names = ["out", "grad/x", *(f"grad/{p}" for p in model.parameters)]
    got = _both(served, "digits", {"x": x, "out_grad": dout}, names, tmp_path)

    g = model.graph
    out, cache = g.forward(x)
    here = {"out": out, **{f"grad/{k}": v for k, v in g.backward(dout, cache).items()}}
    t_out, t_grads = magnitudes(g, x, dout)
    twins = {"out": t_out, **{f"grad/{k}": v for k, v in t_grads.items()}}
    scale = 2 * sum_terms(g, x.shape) * EPS[np.dtype(np.float32)]  # two float32 answers
    for name in names:
        assert got[name].shape == here[name].shape, name
        err = np.abs(got[name].astype(np.float64) - here[name].astype(np.float64))
        assert np.all(err <= scale * twins[name]), f"{name}: max error {err.max():.3g}"
