"""Train a small CNN on scikit-learn's digits; every gradient comes from the service.

    python -m examples.train_digits [--url URL] [--api-key KEY] [--out DIR]
                                    [--epochs N] [--seed S] [--batch-size B] [--lr LR]

Each step posts the current weights and a mini-batch to ``/v1/network/backward``
(through :class:`service.client.Client`: base64 tensors, one kept-alive connection),
gets back the loss and the gradient of every weight, and applies an Adam update here,
in numpy. The service keeps no state: the weights travel with every request. Without
``--url`` the script starts the service on a free loopback port and stops it at the end.

The network (3,818 parameters) on 1×8×8 images scaled to [0, 1]::

    conv2d 8×1×3×3 padding 1 -> relu -> max pool 2×2          (8, 8, 8) -> (8, 4, 4)
    conv2d 16×8×3×3 padding 1 -> relu -> flatten               (16, 4, 4) -> 256
    linear 256 -> 10                                           class scores

The last line printed is ``test accuracy: A``, on the held-out split of
:func:`load_split`. ``--out DIR`` writes ``DIR/digits/model.json`` in the service's
native model format, which a model repository then serves as ``digits``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import cnncore
from cnncore.network_shapes import FlattenSpec, Pool2dSpec, ReluSpec
from service.client import Client, ServiceError
from service.testing import serve

Params = dict[str, np.ndarray]
"""Weights by the service's parameter names: ``"0.w"``, ``"0.b"``, ``"3.w"`` ..."""

LABELS = [str(digit) for digit in range(10)]
SPLIT_SEED = 0
TEST_SIZE = 360  # 20 % of the 1,797 digits, stratified by class

#: The layers without their weights, as ``/v1/network/*`` and ``model.json`` spell them.
ARCHITECTURE: tuple[dict[str, Any], ...] = (
    {"type": "conv2d", "padding": 1},
    {"type": "relu"},
    {"type": "pool2d", "mode": "max", "kernel_size": 2},
    {"type": "conv2d", "padding": 1},
    {"type": "relu"},
    {"type": "flatten"},
    {"type": "linear"},
)
PARAM_SHAPES: dict[str, tuple[int, ...]] = {
    "0.w": (8, 1, 3, 3),
    "0.b": (8,),
    "3.w": (16, 8, 3, 3),
    "3.b": (16,),
    "6.w": (16 * 4 * 4, 10),
    "6.b": (10,),
}
INPUT_SHAPE = (-1, 1, 8, 8)


# --------------------------------------------------------------------------- data, network


@dataclass(frozen=True)
class Split:
    """The fixed train/test split: ``x_*`` (N, 1, 8, 8) in [0, 1], ``y_*`` (N,) int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_split(dtype: type[np.floating[Any]] = np.float32) -> Split:
    """scikit-learn's 1,797 digits (bundled with it, no download), pixels / 16, split
    1,437 / 360 stratified by class with a fixed seed (the same whatever ``--seed``)."""
    digits = load_digits()
    x = (digits.images / 16).astype(dtype)[:, None]  # (1797, 1, 8, 8); pixels are 0..16
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    return Split(x_train, y_train, x_test, y_test)


def init_params(rng: np.random.Generator, dtype: type[np.floating[Any]] = np.float32) -> Params:
    """He-normal weights (standard deviation sqrt(2 / fan_in), for ReLU) and zero biases."""
    params: Params = {}
    for name, shape in PARAM_SHAPES.items():
        if name.endswith(".b"):
            params[name] = np.zeros(shape, dtype)
        else:  # conv (F, C, KH, KW): fan_in C*KH*KW; linear (D, M): fan_in D
            fan_in = math.prod(shape[1:]) if len(shape) == 4 else shape[0]
            params[name] = (rng.standard_normal(shape) * math.sqrt(2 / fan_in)).astype(dtype)
    return params


def layers(params: Params) -> list[dict[str, Any]]:
    """:data:`ARCHITECTURE` with each layer's ``w`` and ``b`` filled in from ``params``."""
    filled = []
    for i, layer in enumerate(ARCHITECTURE):
        if f"{i}.w" in params:
            layer = {**layer, "w": params[f"{i}.w"], "b": params[f"{i}.b"]}
        filled.append(dict(layer))
    return filled


_CORE_LAYERS: dict[str, Callable[..., cnncore.network.Layer]] = {
    "conv2d": cnncore.Conv2d,
    "pool2d": Pool2dSpec,
    "relu": ReluSpec,
    "flatten": FlattenSpec,
    "linear": cnncore.Linear,
}


def core_layers(params: Params) -> list[cnncore.network.Layer]:
    """The same network as :mod:`cnncore` layers, to compute in this process."""
    return [
        _CORE_LAYERS[layer["type"]](**{k: v for k, v in layer.items() if k != "type"})
        for layer in layers(params)
    ]


# --------------------------------------------------------------------------- gradients


@dataclass(frozen=True)
class Step:
    """What one gradient computation answered.

    Attributes
    ----------
    loss
        Mean softmax cross-entropy of the batch, before the update.
    grads
        Gradient of ``loss`` for every parameter (the parameter's shape and dtype).
    correct
        Samples of the batch the network classified right, before the update.
    compute_ms
        The service's own compute time (``meta.compute_ms``); in-process, the whole step.
    round_trip_ms
        From building the request to the decoded answer, measured by the caller.
    """

    loss: float
    grads: Params
    correct: int
    compute_ms: float
    round_trip_ms: float


class Backend(Protocol):
    """Where gradients and scores are computed."""

    def gradients(self, params: Params, x: np.ndarray, y: np.ndarray) -> Step: ...

    def scores(self, params: Params, x: np.ndarray) -> np.ndarray: ...


class ServiceBackend:
    """Gradients and scores from the service's ``/v1/network/backward`` and ``/forward``.

    Parameters
    ----------
    client
        An open client; its connection is reused by every step.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    def gradients(self, params: Params, x: np.ndarray, y: np.ndarray) -> Step:
        """One backward request: ``x`` (B, 1, 8, 8), ``y`` (B,) labels."""
        start = time.perf_counter()
        r = self.client.network_backward(
            x, layers(params), {"type": "softmax_cross_entropy", "y": y}
        )
        round_trip_ms = (time.perf_counter() - start) * 1e3
        grads = {
            f"{i}.{key[1]}": array
            for i, layer in enumerate(r["grads"])
            for key, array in layer.items()
            if array is not None
        }
        correct = int(np.count_nonzero(np.asarray(r["predictions"]) == y))
        return Step(r["loss"], grads, correct, r["meta"]["compute_ms"], round_trip_ms)

    def scores(self, params: Params, x: np.ndarray) -> np.ndarray:
        """Class scores (N, 10) of ``x`` (N, 1, 8, 8), from one forward request."""
        out: np.ndarray = self.client.network_forward(x, layers(params))["out"]
        return out


class LocalBackend:
    """The same computation in this process with :mod:`cnncore` (no HTTP): the oracle the
    service's answers are tested against."""

    def gradients(self, params: Params, x: np.ndarray, y: np.ndarray) -> Step:
        """The gradients :meth:`ServiceBackend.gradients` asks the service for."""
        start = time.perf_counter()
        out, cache = cnncore.network_forward(x, core_layers(params))
        loss, dout = cnncore.network_loss(out, cnncore.SoftmaxCrossEntropy(y))
        _, layer_grads = cnncore.network_backward(dout, cache)
        grads = {
            f"{i}.{key[1]}": array
            for i, layer in enumerate(layer_grads)
            for key, array in layer.items()
            if array is not None
        }
        correct = int(np.count_nonzero(np.argmax(out, axis=1) == y))
        ms = (time.perf_counter() - start) * 1e3
        return Step(loss, grads, correct, ms, ms)

    def scores(self, params: Params, x: np.ndarray) -> np.ndarray:
        """Class scores (N, 10) of ``x`` (N, 1, 8, 8)."""
        return cnncore.network_forward(x, core_layers(params))[0]


# --------------------------------------------------------------------------- training


class Adam:
    """Adam (Kingma and Ba, 2015) with bias correction, in the parameters' own dtype.

    Parameters
    ----------
    params
        The parameters to update; :meth:`step` changes them in place.
    lr, beta1, beta2, eps
        Step size, decay of the gradient's mean and of its square, and the small
        constant that keeps the division finite.
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        self.params = params
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}
        self.t = 0

    def step(self, grads: Params) -> None:
        """Move every parameter against its gradient (``grads`` has every name)."""
        self.t += 1
        c1 = 1 - self.beta1**self.t
        c2 = 1 - self.beta2**self.t
        for name, p in self.params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


@dataclass(frozen=True)
class Epoch:
    """One epoch's record: mean batch ``loss`` and training ``accuracy`` (each batch
    measured before its update), wall-clock ``seconds``, and the sums over its steps of
    the client's round trips and the service's compute times (ms)."""

    loss: float
    accuracy: float
    seconds: float
    steps: int
    round_trip_ms: float
    compute_ms: float


def train(
    backend: Backend,
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    progress: bool = True,
) -> list[Epoch]:
    """Mini-batch Adam on ``params`` (updated in place) with gradients from ``backend``.

    Parameters
    ----------
    backend
        :class:`ServiceBackend` or :class:`LocalBackend`.
    params
        Initial weights (:func:`init_params`).
    x, y
        Training images (N, 1, 8, 8) and labels (N,).
    epochs, batch_size, lr
        Passes over the data, samples per step (the last batch may be smaller), step size.
    rng
        Shuffles the samples before each epoch.
    progress
        Show a progress bar per epoch (on stderr) with the running loss and accuracy.

    Returns
    -------
    list of Epoch
    """
    optimizer = Adam(params, lr)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        batches = [order[i : i + batch_size] for i in range(0, len(x), batch_size)]
        start = time.perf_counter()
        loss_sum = round_trip = compute = 0.0
        seen = correct = 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", unit="step", disable=not progress)
        for batch in bar:
            step = backend.gradients(params, x[batch], y[batch])
            optimizer.step(step.grads)
            loss_sum += step.loss * len(batch)
            seen += len(batch)
            correct += step.correct
            round_trip += step.round_trip_ms
            compute += step.compute_ms
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        seconds = time.perf_counter() - start
        history.append(
            Epoch(loss_sum / seen, correct / seen, seconds, len(batches), round_trip, compute)
        )
    return history


def count_correct(backend: Backend, params: Params, x: np.ndarray, y: np.ndarray) -> int:
    """How many of ``x`` (N, 1, 8, 8) the network classifies as ``y`` (N,)."""
    return int(np.count_nonzero(np.argmax(backend.scores(params, x), axis=1) == y))


# --------------------------------------------------------------------------- model files


def b64_tensor(arr: np.ndarray) -> dict[str, Any]:
    """The contract's exact tensor form: ``{shape, dtype, b64}``, base64 of the
    little-endian C-order bytes (a float32 weight in 5.3 characters instead of ~12)."""
    le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    text = base64.b64encode(le.tobytes()).decode("ascii")
    return {"shape": list(arr.shape), "dtype": arr.dtype.name, "b64": text}


def from_b64_tensor(wire: dict[str, Any]) -> np.ndarray:
    """The array of :func:`b64_tensor`'s form (a writable copy in native byte order)."""
    le = np.dtype(wire["dtype"]).newbyteorder("<")
    flat = np.frombuffer(base64.b64decode(wire["b64"], validate=True), dtype=le)
    return flat.reshape(wire["shape"]).astype(le.newbyteorder("="))


def model_document(params: Params) -> dict[str, Any]:
    """The native ``model.json`` of the trained network: its input, the layers with
    their weights as base64 tensors (exact and compact), and the class labels."""
    datatype = {"float32": "FP32", "float64": "FP64"}[params["0.w"].dtype.name]
    wire = [
        {k: b64_tensor(v) if isinstance(v, np.ndarray) else v for k, v in layer.items()}
        for layer in layers(params)
    ]
    return {
        "inputs": [{"name": "x", "datatype": datatype, "shape": list(INPUT_SHAPE)}],
        "layers": wire,
        "labels": LABELS,
    }


def write_model(params: Params, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/digits/model.json`` (folders created); return its path."""
    path = Path(out_dir) / "digits" / "model.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = model_document(params)
    layer_lines = ",\n  ".join(json.dumps(layer) for layer in doc["layers"])
    path.write_text(  # one layer a line: the file reads as the network it is
        f'{{"inputs": {json.dumps(doc["inputs"])},\n'
        f' "layers": [\n  {layer_lines}\n ],\n'
        f' "labels": {json.dumps(doc["labels"])}}}\n'
    )
    return path


def read_model(path: str | Path) -> Params:
    """The weights of a ``model.json`` written by :func:`write_model`.

    Raises
    ------
    ValueError
        If the file's layers are not :data:`ARCHITECTURE` or a weight has the wrong shape.
    """
    doc = json.loads(Path(path).read_text())
    kinds = [layer["type"] for layer in doc["layers"]]
    if kinds != [layer["type"] for layer in ARCHITECTURE]:
        raise ValueError(f"{path}: layers {kinds} are not the digits network's")
    params = {
        f"{i}.{key}": from_b64_tensor(layer[key])
        for i, layer in enumerate(doc["layers"])
        for key in ("w", "b")
        if key in layer
    }
    for name, shape in PARAM_SHAPES.items():
        if params[name].shape != shape:
            raise ValueError(f"{path}: {name} has shape {params[name].shape}, expected {shape}")
    return params


# --------------------------------------------------------------------------- command line


@contextlib.contextmanager
def service_url(url: str | None) -> Iterator[str]:
    """``url`` itself, or the address of a service started for the ``with`` block (on a
    free loopback port, stopped afterwards)."""
    if url:
        yield url.rstrip("/")
    else:
        with serve() as started:
            yield started


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.train_digits",
        description="Train a small CNN on scikit-learn's digits with gradients from cnn-service.",
    )
    parser.add_argument("--url", help="a running service (default: start one on a free port)")
    parser.add_argument("--api-key", help="for a service that needs one (CNN_API_KEYS)")
    parser.add_argument("--out", type=Path, help="write OUT/digits/model.json")
    parser.add_argument("--epochs", type=int, default=8, help="passes over the data (8)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and shuffling (0)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step (32)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam step size (0.01)")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.lr > 0:
        parser.error("--lr must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Train, report the time per epoch and its HTTP/compute split, and print the test
    accuracy last."""
    args = parse_args(argv)
    data = load_split()
    rng = np.random.default_rng(args.seed)
    params = init_params(rng)
    with service_url(args.url) as url, Client(url, api_key=args.api_key) as client:
        backend = ServiceBackend(client)
        history = train(
            backend,
            params,
            data.x_train,
            data.y_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            rng=rng,
        )
        correct = count_correct(backend, params, data.x_test, data.y_test)
    steps = sum(e.steps for e in history)
    round_trip = sum(e.round_trip_ms for e in history) / steps
    compute = sum(e.compute_ms for e in history) / steps
    seconds = sum(e.seconds for e in history) / len(history)
    print(f"{len(history)} epochs of {history[0].steps} steps: {seconds:.2f} s per epoch")
    print(
        f"per step: round trip {round_trip:.2f} ms, of which service compute {compute:.2f} ms "
        f"({compute / round_trip:.0%}); HTTP, JSON and the client {round_trip - compute:.2f} ms"
    )
    if args.out:
        print(f"wrote {write_model(params, args.out)}")
    print(f"test accuracy: {correct / len(data.y_test):.4f}")


if __name__ == "__main__":
    try:
        main()
    except ServiceError as err:  # a message, not a traceback
        raise SystemExit(f"cnn-service: {err}") from None
