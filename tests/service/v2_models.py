"""Small native models written into a temporary repository, and the same network as
cnncore layers (writable copies) for reference answers and central differences."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import orjson

import cnncore
from cnncore.network_shapes import FlattenSpec, Pool2dSpec, ReluSpec

#: A LeNet-shaped classifier on 1×6×6 images: conv(pad 1) relu pool flatten linear -> 3 classes.
CLASSES = 3


def tiny_cnn_layers(rng: np.random.Generator) -> list[dict[str, Any]]:
    """Layers of the tiny classifier, weights as float64 arrays."""
    return [
        {
            "type": "conv2d",
            "w": rng.normal(size=(2, 1, 3, 3)),
            "b": rng.normal(size=2),
            "padding": 1,
        },
        {"type": "relu"},
        {"type": "pool2d", "mode": "max", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "linear", "w": rng.normal(size=(18, CLASSES)) / 3, "b": rng.normal(size=CLASSES)},
    ]


def wire_tensor(arr: np.ndarray, form: str) -> Any:
    """``arr`` in one of the three /v1 tensor forms (list, data, b64)."""
    if form == "list":
        return arr.tolist()
    if form == "data":
        return {"shape": list(arr.shape), "dtype": "float64", "data": arr.ravel().tolist()}
    b64 = base64.b64encode(np.ascontiguousarray(arr, dtype="<f8").tobytes()).decode()
    return {"shape": list(arr.shape), "dtype": "float64", "b64": b64}


def model_doc(
    layers: list[dict[str, Any]],
    shape: list[int],
    datatype: str = "FP64",
    labels: list[str] | None = None,
    form: str = "b64",
) -> dict[str, Any]:
    """The model.json document of ``layers``."""
    wire = [
        {k: wire_tensor(v, form) if isinstance(v, np.ndarray) else v for k, v in layer.items()}
        for layer in layers
    ]
    doc: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": datatype, "shape": shape}],
        "layers": wire,
    }
    if labels is not None:
        doc["labels"] = labels
    return doc


def write_model(repo: Path, name: str, doc: dict[str, Any] | bytes) -> Path:
    """Write ``doc`` as ``repo/name/model.json``; returns the file."""
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.json"
    path.write_bytes(doc if isinstance(doc, bytes) else orjson.dumps(doc))
    return path


def core_layers(layers: list[dict[str, Any]], dtype: Any = np.float64) -> list[Any]:
    """The same network as cnncore layers with writable weight copies in ``dtype``."""
    out: list[Any] = []
    for layer in layers:
        kind = layer["type"]
        if kind == "conv2d":
            params = {k: v for k, v in layer.items() if k not in ("type", "w", "b")}
            out.append(cnncore.Conv2d(layer["w"].astype(dtype), layer["b"].astype(dtype), **params))
        elif kind == "linear":
            out.append(cnncore.Linear(layer["w"].astype(dtype), layer["b"].astype(dtype)))
        elif kind == "pool2d":
            out.append(Pool2dSpec(**{k: v for k, v in layer.items() if k != "type"}))
        elif kind == "relu":
            out.append(ReluSpec())
        else:
            out.append(FlattenSpec())
    return out
