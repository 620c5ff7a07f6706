"""Who answers an ONNX model's plain inference (contract §7): ``CNN_ONNX_RUNTIME``'s three
values, the fallback when onnxruntime is missing or refuses a model, the weights counted
twice, the shared thread budget, and the start-up refusals. In-process; the served
comparison with onnxruntime's own answer is in test_v2_onnx.py."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnncore.threads import WORKERS
from service.cli import main
from service.models import ModelRepository, ModelState
from service.models.onnx_runtime import ENGINES
from tests.fixtures.onnx.reference import EPS, fixtures, magnitudes, sum_terms

ort = pytest.importorskip("onnxruntime")

FIXTURE = next(fx for fx in fixtures() if fx.id == "lenet5.legacy")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "lenet").mkdir()
    shutil.copy(FIXTURE.path, tmp_path / "lenet" / "model.onnx")
    return tmp_path


def _entry(root: Path, engine: str) -> Any:
    repo = ModelRepository(root, 1 << 30, onnx_runtime=engine)
    (entry,) = repo.scan()
    return entry


@pytest.fixture
def no_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import onnxruntime`` fail as it does where it is not installed."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


@pytest.mark.parametrize(
    ("engine", "platform"),
    [("auto", "onnxruntime_onnx"), ("onnxruntime", "onnxruntime_onnx"), ("cnncore", "onnx")],
)
def test_engine_sets_the_platform(root: Path, engine: str, platform: str) -> None:
    entry = _entry(root, engine)
    assert entry.state is ModelState.READY, entry.reason
    assert entry.model.platform == platform
    assert (entry.model.runtime is None) == (engine == "cnncore")


def test_onnxruntimes_copy_of_the_weights_counts(root: Path) -> None:
    alone = _entry(root, "cnncore").model.nbytes
    assert alone > 0
    assert _entry(root, "onnxruntime").model.nbytes == 2 * alone


def test_the_weights_count_against_the_model_budget(root: Path) -> None:
    alone = _entry(root, "cnncore").model.nbytes
    repo = ModelRepository(root, alone + alone // 2, onnx_runtime="onnxruntime")
    (entry,) = repo.scan()
    assert entry.state is ModelState.UNAVAILABLE
    assert "CNN_MAX_MODEL_BYTES" in entry.reason


def test_intra_op_threads_are_cnncores_budget(root: Path) -> None:
    session = _entry(root, "onnxruntime").model.runtime._session
    opts = session.get_session_options()
    assert opts.intra_op_num_threads == WORKERS
    assert opts.inter_op_num_threads == 1


def test_predict_is_inference_sessions_answer(root: Path, rng: np.random.Generator) -> None:
    model = _entry(root, "auto").model
    x = rng.standard_normal((3, *model.input_shape[1:])).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = WORKERS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(FIXTURE.path), opts, providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, {sess.get_inputs()[0].name: x})
    np.testing.assert_array_equal(model.predict(x), want)
    # The engines agree to float32 round-off: each computes every element as a sum of at
    # most K terms whose magnitudes sum to T (the bound of tests/fixtures/onnx/reference.py),
    # so each is within K·eps32·T of the exact value, and the two within twice that.
    out, _ = model.graph.forward(x, backward=False)
    t_out, _ = magnitudes(model.graph, x, np.ones_like(out))
    bound = 2 * sum_terms(model.graph, x.shape) * EPS[np.dtype(np.float32)] * t_out
    assert np.all(np.abs(model.predict(x).astype(np.float64) - out) <= bound)


def test_auto_falls_back_to_cnncore_and_says_why(
    root: Path, no_onnxruntime: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="service"):
        entry = _entry(root, "auto")
    assert entry.state is ModelState.READY
    assert entry.model.platform == "onnx"
    assert "lenet/model.onnx: plain inference runs on cnncore: onnxruntime is not installed" in (
        caplog.text
    )


def test_a_model_onnxruntime_refuses(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : no kernel for op")

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    required = _entry(root, "onnxruntime")
    assert required.state is ModelState.UNAVAILABLE
    assert required.reason == (
        "lenet/model.onnx: onnxruntime cannot load it: "
        "[ONNXRuntimeError] : 10 : INVALID_GRAPH : no kernel for op"
    )
    assert _entry(root, "auto").model.platform == "onnx"


def test_required_onnxruntime_missing_refuses_to_start(
    no_onnxruntime: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CNN_ONNX_RUNTIME", "onnxruntime")
    assert main(["--port", "0"]) == 2
    assert "CNN_ONNX_RUNTIME=onnxruntime, but onnxruntime is not installed" in (
        capsys.readouterr().err
    )


def test_an_unknown_engine_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CNN_ONNX_RUNTIME", "tensorrt")
    assert main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "onnx_runtime" in err
    assert all(engine in err for engine in ENGINES)


def test_repository_refuses_an_unknown_engine(root: Path) -> None:
    with pytest.raises(ValueError, match="onnx_runtime must be one of auto, onnxruntime"):
        ModelRepository(root, 1 << 30, onnx_runtime="tensorrt")
