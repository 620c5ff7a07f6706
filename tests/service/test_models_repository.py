"""The model repository: states and reasons, names and containment, the memory bound,
the native format, reloads, and ``cnn-service models``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from service.models import (
    ModelNameError,
    ModelNotFoundError,
    ModelRepository,
    ModelState,
    check_name,
)

from .v2_models import model_doc, tiny_cnn_layers, write_model

SHAPE = [-1, 1, 6, 6]


@pytest.fixture
def layers(rng: np.random.Generator) -> list[dict]:
    return tiny_cnn_layers(rng)


def repository(root: Path, max_bytes: int = 1 << 30) -> ModelRepository:
    repo = ModelRepository(root, max_bytes)
    repo.scan()
    return repo


@pytest.mark.parametrize("form", ["list", "data", "b64"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_native_model_loads_from_every_tensor_form(
    tmp_path: Path, layers: list[dict], form: str, datatype: str
) -> None:
    write_model(tmp_path, "tiny", model_doc(layers, SHAPE, datatype, ["a", "b", "c"], form))
    (entry,) = repository(tmp_path).index()
    assert entry.state is ModelState.READY, entry.reason
    model = entry.model
    assert model is not None
    assert (model.input_shape, model.output_shape) == (SHAPE, [-1, 3])
    assert model.parameters == ["0.w", "0.b", "4.w", "4.b"]
    assert model.labels == ["a", "b", "c"]
    assert model.classes == 3
    assert model.op_counts == {"conv2d": 1, "relu": 1, "pool2d": 1, "flatten": 1, "linear": 1}
    params = model.graph.params
    assert all(p.dtype == model.dtype and not p.flags.writeable for p in params.values())
    assert model.nbytes == sum(p.nbytes for p in params.values())
    # float32 weights are the float64 ones rounded once: relative error at most eps32/2.
    np.testing.assert_allclose(
        params["0.w"], layers[0]["w"], rtol=6e-8 if datatype == "FP32" else 0
    )


def test_weights_are_read_only(tmp_path: Path, layers: list[dict]) -> None:
    write_model(tmp_path, "tiny", model_doc(layers, SHAPE))
    model = repository(tmp_path).entry("tiny").model
    assert model is not None
    with pytest.raises(ValueError, match="read-only"):
        model.graph.params["0.w"][0, 0, 0, 0] = 1.0


def _bad_linear(layers: list[dict]) -> list[dict]:
    return [*layers[:4], {**layers[4], "w": layers[4]["w"][:17]}]


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        pytest.param(b"{not json", r"m/model\.json: not valid JSON", id="not-json"),
        pytest.param(b"[1, 2]", r"m/model\.json: expected a JSON object", id="not-object"),
        pytest.param(
            {"inputs": [{"name": "x", "datatype": "FP16", "shape": SHAPE}], "layers": []},
            r"m/model\.json: inputs\.0\.datatype",
            id="datatype",
        ),
        pytest.param(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1, -1, 6]}]},
            r"m/model\.json: (inputs\.0\.shape|layers)",
            id="free-spatial-dim",
        ),
        pytest.param(
            "bad-linear",
            r"m/model\.json: layer 4 \(linear\) expects w of shape \(18, 3\)",
            id="shapes",
        ),
        pytest.param("typo", r"m/model\.json: layers\.1\.kind", id="unknown-field"),
        pytest.param(
            "labels",
            r"m/model\.json: labels: 2 labels for an output of shape \[-1, 3\]",
            id="labels",
        ),
    ],
)
def test_invalid_model_is_unavailable_with_a_reason_naming_file_and_fault(
    tmp_path: Path, layers: list[dict], doc: object, reason: str
) -> None:
    if doc == "bad-linear":
        doc = model_doc(_bad_linear(layers), SHAPE)
    elif doc == "typo":
        doc = model_doc([layers[0], {"type": "relu", "kind": 1}, *layers[2:]], SHAPE)
    elif doc == "labels":
        doc = model_doc(layers, SHAPE, labels=["a", "b"])
    elif isinstance(doc, dict) and "layers" not in doc:
        doc = {**doc, "layers": model_doc(layers, SHAPE)["layers"]}
    write_model(tmp_path, "m", doc)  # type: ignore[arg-type]
    write_model(tmp_path, "ok", model_doc(layers, SHAPE))
    repo = repository(tmp_path)
    bad, ok = repo.index()
    assert (bad.name, bad.state, ok.state) == ("m", ModelState.UNAVAILABLE, ModelState.READY)
    assert bad.model is None
    assert re.match(reason, bad.reason), bad.reason


def test_folder_states(tmp_path: Path, layers: list[dict]) -> None:
    (tmp_path / "empty").mkdir()
    write_model(tmp_path, "both", model_doc(layers, SHAPE))
    (tmp_path / "both" / "model.onnx").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "README.md").write_text("not a model")
    (tmp_path / "bad name!").mkdir()
    index = {e.name: e for e in repository(tmp_path).index()}
    assert set(index) == {"bad name!", "both", "empty"}
    assert "no model file" in index["empty"].reason
    assert "holds model.json and model.onnx" in index["both"].reason
    assert "not a valid model name" in index["bad name!"].reason


def test_missing_default_repository_is_empty(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "nothing", 1 << 20, must_exist=False)
    assert repo.scan() == []
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ModelRepository(tmp_path / "nothing", 1 << 20)


@pytest.mark.parametrize(
    "name",
    ["..", "../etc", "a/b", "/abs", ".hidden", "-dash", "a..b", "x" * 65, "", "é", "a b"],
)
def test_invalid_names_are_refused_before_the_file_system(tmp_path: Path, name: str) -> None:
    repo = repository(tmp_path)
    with pytest.raises(ModelNameError, match="not a valid model name"):
        check_name(name)
    with pytest.raises(ModelNameError):
        repo.load(name)
    with pytest.raises(ModelNameError):
        repo.entry(name)


@pytest.mark.parametrize("name", ["a", "A9", "digits", "resnet-18_v1.2", "x" * 64])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


def test_symlinks_out_of_the_repository_are_refused(tmp_path: Path, layers: list[dict]) -> None:
    outside = tmp_path / "outside"
    write_model(outside, "real", model_doc(layers, SHAPE))
    root = tmp_path / "repo"
    root.mkdir()
    os.symlink(outside / "real", root / "linked-folder")
    (root / "linked-file").mkdir()
    os.symlink(outside / "real" / "model.json", root / "linked-file" / "model.json")
    write_model(root, "inside", model_doc(layers, SHAPE))
    os.symlink(root / "inside", root / "alias")  # a link that stays inside is fine
    index = {e.name: e for e in repository(root).index()}
    assert "outside the repository" in index["linked-folder"].reason
    assert "outside the repository" in index["linked-file"].reason
    assert index["alias"].state is ModelState.READY


def test_memory_bound_counts_all_models(tmp_path: Path, layers: list[dict]) -> None:
    write_model(tmp_path, "a", model_doc(layers, SHAPE))
    one = repository(tmp_path).entry("a").model
    assert one is not None
    write_model(tmp_path, "b", model_doc(layers, SHAPE))
    file_size = (tmp_path / "a" / "model.json").stat().st_size
    # Room for the first model's file, not for a second one: b is refused, saying why.
    repo = repository(tmp_path, max_bytes=file_size + one.nbytes - 1)
    a, b = repo.index()
    assert a.state is ModelState.READY
    assert b.state is ModelState.UNAVAILABLE
    assert "CNN_MAX_MODEL_BYTES" in b.reason
    assert "b/model.json" in b.reason
    # Unloading a frees its share: b now loads.
    repo.unload("a")
    assert repo.load("b").state is ModelState.READY


def test_load_rereads_and_unload_drops(tmp_path: Path, layers: list[dict]) -> None:
    write_model(tmp_path, "m", model_doc(layers, SHAPE))
    repo = repository(tmp_path)
    old = repo.entry("m").model
    assert repo.unload("m").reason == "unloaded"
    assert repo.entry("m").state is ModelState.UNAVAILABLE
    write_model(tmp_path, "m", model_doc(_bad_linear(layers), SHAPE))
    assert repo.load("m").state is ModelState.UNAVAILABLE
    write_model(tmp_path, "m", model_doc(layers, SHAPE, "FP32"))
    new = repo.load("m").model
    assert new is not None
    assert old is not None
    assert new is not old
    assert (old.datatype, new.datatype) == ("FP64", "FP32")  # the old one is untouched
    write_model(tmp_path, "later", model_doc(layers, SHAPE))
    assert repo.load("later").state is ModelState.READY
    with pytest.raises(ModelNotFoundError):
        repo.load("never")
    with pytest.raises(ModelNotFoundError):
        repo.unload("never")


def test_single_model_layout(tmp_path: Path, layers: list[dict]) -> None:
    (tmp_path / "model.json").write_bytes(
        write_model(tmp_path / "x", "y", model_doc(layers, SHAPE)).read_bytes()
    )
    repo = ModelRepository(tmp_path, 1 << 30, single_model="served")
    (entry,) = repo.scan()
    assert (entry.name, entry.state) == ("served", ModelState.READY)
    with pytest.raises(ModelNotFoundError):
        repo.load("y")


def test_models_command(
    tmp_path: Path, layers: list[dict], capsys: pytest.CaptureFixture[str]
) -> None:
    write_model(tmp_path, "good", model_doc(layers, SHAPE))
    assert main(["models", "--model-repository", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "good  cnncore  READY" in out
    assert "conv2d 1" in out
    write_model(tmp_path, "broken", model_doc(_bad_linear(layers), SHAPE))
    assert main(["models", "--model-repository", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "broken  -  UNAVAILABLE" in out
    assert "layer 4 (linear)" in out
    assert main(["models", "--model-repository", str(tmp_path / "none")]) == 2
