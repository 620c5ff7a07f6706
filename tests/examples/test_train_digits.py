"""examples/train_digits.py: training through the HTTP API, and the shipped digits model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from examples import train_digits as td
from service.client import Client
from service.models import native

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "service/default_models/digits"


@pytest.fixture(scope="module")
def data() -> td.Split:
    return td.load_split()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_http_and_in_process_training_give_identical_weights(
    client: Client, dtype: type[np.floating]
) -> None:
    # Exact equality, not a tolerance: b64 carries each tensor's IEEE-754 bytes
    # unchanged in both directions (and the loss travels as the shortest decimal that
    # reads back as the same double), and the server runs the same cnncore functions on
    # those bytes in the same order: cnncore's conv cuts a batch into chunks fixed by the
    # shapes, not by the thread count, and adds their partial dW in chunk order, and
    # OpenBLAS threads a GEMM over blocks of the output, never inside one dot product.
    # Same operations on the same bits give the same bits, so every gradient, and thus
    # every Adam update, matches to the last bit.
    split = td.load_split(dtype)
    x, y = split.x_train[:96], split.y_train[:96]
    runs = []
    for backend in (td.ServiceBackend(client), td.LocalBackend()):
        rng = np.random.default_rng(11)
        params = td.init_params(rng, dtype)
        history = td.train(
            backend, params, x, y, epochs=2, batch_size=32, lr=0.01, rng=rng, progress=False
        )
        runs.append((params, [epoch.loss for epoch in history]))
    (http, http_losses), (local, local_losses) = runs
    assert http_losses == local_losses
    for name in td.PARAM_SHAPES:
        assert http[name].dtype == dtype
        assert http[name].tobytes() == local[name].tobytes(), name


def test_short_training_through_the_api_learns(client: Client, data: td.Split) -> None:
    rng = np.random.default_rng(5)
    params = td.init_params(rng)
    backend = td.ServiceBackend(client)
    history = td.train(
        backend,
        params,
        data.x_train[:400],
        data.y_train[:400],
        epochs=2,
        batch_size=32,
        lr=0.01,
        rng=rng,
        progress=False,
    )
    assert history[1].loss < 0.7 * history[0].loss
    accuracy = td.count_correct(backend, params, data.x_test, data.y_test) / len(data.y_test)
    assert accuracy > 0.6  # chance is 0.1


def test_command_line_trains_and_writes_the_model(
    base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    td.main(["--url", base_url, "--epochs", "1", "--seed", "2", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    match = re.fullmatch(r"test accuracy: (\d\.\d{4})", lines[-1])
    assert match, lines[-1]
    assert float(match[1]) > 0.6  # one epoch; chance is 0.1
    path = tmp_path / "digits/model.json"
    doc = json.loads(path.read_text())
    assert doc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert doc["labels"] == [str(d) for d in range(10)]
    assert [layer["type"] for layer in doc["layers"]] == [
        layer["type"] for layer in td.ARCHITECTURE
    ]
    assert all("b64" in layer["w"] for layer in doc["layers"] if "w" in layer)
    assert {name: p.shape for name, p in td.read_model(path).items()} == td.PARAM_SHAPES


@pytest.mark.parametrize(
    "argv",
    [["--epochs", "0"], ["--batch-size", "0"], ["--lr", "0"], ["--lr", "nan"]],
    ids=["epochs-0", "batch-size-0", "lr-0", "lr-nan"],
)
def test_command_line_refuses_bad_arguments(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        td.parse_args(argv)
    assert argv[0] in capsys.readouterr().err


def test_read_model_refuses_another_network(tmp_path: Path) -> None:
    doc = td.model_document(td.init_params(np.random.default_rng(0)))
    del doc["layers"][1]
    path = tmp_path / "model.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not the digits network"):
        td.read_model(path)


def test_split_is_fixed_and_stratified(data: td.Split) -> None:
    assert data.x_train.shape == (1437, 1, 8, 8)
    assert data.x_test.shape == (360, 1, 8, 8)
    assert data.x_train.dtype == np.float32
    assert data.x_train.min() >= 0
    assert data.x_train.max() <= 1
    # Stratified: each class's share of the test split is within one image of its share
    # of the whole data set.
    counts = np.bincount(data.y_test, minlength=10)
    whole = np.bincount(np.concatenate([data.y_train, data.y_test]), minlength=10)
    assert np.all(np.abs(counts - whole * 360 / 1797) < 1)


def test_shipped_model_reaches_its_stated_accuracy(data: td.Split) -> None:
    card = (SHIPPED / "README.md").read_text()
    stated = re.search(r"\*\*(\d\.\d{4})\*\* \((\d+) of (\d+) held-out digits\)", card)
    assert stated, "the model card states its test accuracy"
    assert int(stated[3]) == len(data.y_test)
    doc = json.loads((SHIPPED / "model.json").read_text())
    assert doc["labels"] == [str(d) for d in range(10)]
    assert doc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    params = td.read_model(SHIPPED / "model.json")
    scores = td.LocalBackend().scores(params, data.x_test)
    predicted = np.argmax(scores, axis=1)
    assert np.count_nonzero(predicted == data.y_test) == int(stated[2])
    assert f"{int(stated[2]) / len(data.y_test):.4f}" == stated[1]
    # The count does not hinge on float32 rounding: the same weights evaluated in
    # float64 (rounding errors ~1e-9 times smaller) predict the same class for every
    # held-out digit, so no other summation order (BLAS, threads) can flip one.
    wide = {name: p.astype(np.float64) for name, p in params.items()}
    scores64 = td.LocalBackend().scores(wide, data.x_test.astype(np.float64))
    assert np.array_equal(np.argmax(scores64, axis=1), predicted)


def test_service_loads_the_shipped_model_as_the_card_says(data: td.Split) -> None:
    model = native.load(SHIPPED / "model.json", "digits")
    assert (model.datatype, model.input_shape, model.labels) == ("FP32", [-1, 1, 8, 8], td.LABELS)
    out, _ = model.graph.forward(data.x_test)
    params = td.read_model(SHIPPED / "model.json")
    # Bit for bit: the service's graph runs the same cnncore operations on the same weights.
    assert out.tobytes() == td.LocalBackend().scores(params, data.x_test).tobytes()


def test_unconfigured_service_serves_digits_over_v2(client: Client, data: td.Split) -> None:
    params = td.read_model(SHIPPED / "model.json")
    out = client.infer("digits", data.x_test)["out"]
    assert out.tobytes() == td.LocalBackend().scores(params, data.x_test).tobytes()
