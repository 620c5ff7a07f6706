"""``model.json``, the native model format: the layers of ``/v1/network/forward`` with
their weights, and the input's description.

.. code-block:: json

    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
     "layers": [{"type": "conv2d", "w": {"shape": [2, 1, 3, 3], "dtype": "float32",
                 "b64": "..."}, "b": [0.1, -0.2], "padding": 1},
                {"type": "relu"}, {"type": "flatten"},
                {"type": "linear", "w": {"shape": [128, 10], "data": [...]}}],
     "labels": ["zero", "one", "..."]}

Weights take any of the three tensor forms of ``/v1`` and are parsed by the same
schemas (so a model file is exactly what a ``/v1/network/forward`` request would
send, minus ``x``); they are cast to the input's datatype and held read-only. The
network is then checked from shapes, with one sample standing for a free batch:
every reason names the model's file and the layer (``digits/model.json: layer 3
(linear) expects w of shape ...``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import Field, StrictInt, StrictStr, ValidationError

import cnncore
from cnncore.network import Layer, network_graph
from cnncore.network_shapes import LayerError

from ..problems import _message, _pydantic_loc
from ..schemas import StrictModel
from ..schemas.network import MAX_NETWORK_LAYERS, NetworkLayer, core_layer
from ..wire.v1 import DTYPES, TensorLimits, limits_scope, list_dtype_scope
from .model import MODEL_DATATYPES, Model, ModelLoadError, describe_input, free_batch, hold

FILE_NAME = "model.json"
MAX_LABEL_CHARS = 256
#: Weights are bounded by CNN_MAX_MODEL_BYTES (checked on the file before it is read),
#: not by the per-request element limit: one fully connected layer of VGG-16 holds 103 M.
MAX_WEIGHT_ELEMENTS = 1 << 34


class ModelInput(StrictModel):
    """The model's one input: its datatype is the computation's dtype."""

    name: Literal["x"] = Field(description="Always 'x'.")
    datatype: Literal["FP32", "FP64"]
    shape: Annotated[list[StrictInt], Field(min_length=2, max_length=8)] = Field(
        description="The input's shape; -1 as the first dimension for any batch size."
    )


class ModelFile(StrictModel):
    """The document a ``model.json`` holds."""

    inputs: Annotated[list[ModelInput], Field(min_length=1, max_length=1)]
    layers: Annotated[list[NetworkLayer], Field(min_length=1, max_length=MAX_NETWORK_LAYERS)]
    labels: list[Annotated[StrictStr, Field(max_length=MAX_LABEL_CHARS)]] | None = None


def load(path: Path, name: str) -> Model:
    """Load the native model in ``path`` (a ``model.json``) as model ``name``.

    Raises
    ------
    ModelLoadError
        Naming ``<name>/model.json`` and the fault: not JSON, a field that does not fit
        the format (with its location, ``layers.3.w``), or a layer whose weights do not
        fit the shape arriving at it.
    """
    where = f"{name}/{path.name}"
    try:
        doc = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ModelLoadError(f"{where}: cannot be read ({exc.strerror})") from None
    except orjson.JSONDecodeError as exc:
        raise ModelLoadError(f"{where}: not valid JSON: {exc}") from None
    spec = _parse(doc, where)
    datatype, shape = _input(spec, where)
    dtype = MODEL_DATATYPES[datatype]
    layers = [_cast(core_layer(layer), dtype) for layer in spec.layers]
    try:
        infos = cnncore.network_info((1, *shape[1:]) if shape[0] == -1 else shape, layers)
    except LayerError as exc:
        raise ModelLoadError(f"{where}: {exc.message}") from None
    except cnncore.CnnError as exc:
        raise ModelLoadError(f"{where}: inputs[0].shape: {exc.message}") from None
    output_shape = free_batch(infos[-1].output_shape, shape[0] == -1)
    graph = network_graph(layers, dtype=dtype)
    labels = spec.labels
    if labels is not None and (len(output_shape) != 2 or len(labels) != output_shape[1]):
        raise ModelLoadError(
            f"{where}: labels: {len(labels)} labels for an output of shape {output_shape}; "
            "expected one per column of a 2-D output (N, classes)"
        )
    return Model(
        name=name,
        platform="cnncore",
        path=path,
        datatype=datatype,
        input_shape=shape,
        output_shape=output_shape,
        graph=graph,
        parameters=list(graph.params),
        nbytes=hold(graph.params.values()),
        op_counts=graph.op_counts(),
        labels=labels,
    )


def _parse(doc: Any, where: str) -> ModelFile:
    """Validate the document; nested-list weights decode straight to the input's dtype."""
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{where}: expected a JSON object with inputs and layers")
    dtype = DTYPES["float64"]
    try:
        if doc["inputs"][0]["datatype"] == "FP32":
            dtype = DTYPES["float32"]
    except (KeyError, IndexError, TypeError):
        pass  # validation below says what is wrong
    try:
        with limits_scope(TensorLimits(MAX_WEIGHT_ELEMENTS)), list_dtype_scope(dtype):
            return ModelFile.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in _pydantic_loc(first["loc"]))
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ModelLoadError(f"{where}: {loc or 'document'}: {_message(first)}{more}") from None


def _input(spec: ModelFile, where: str) -> tuple[str, list[int]]:
    x = spec.inputs[0]
    try:
        return describe_input(x.datatype, x.shape)
    except ValueError as exc:
        raise ModelLoadError(f"{where}: inputs.0.{exc}") from None


def _cast(layer: Layer, dtype: np.dtype) -> Layer:
    """The layer with its weights in the model's dtype, contiguous (and, later, read-only)."""
    if not isinstance(layer, cnncore.Conv2d | cnncore.Linear):
        return layer
    b = None if layer.b is None else np.ascontiguousarray(layer.b, dtype=dtype)
    return dataclasses.replace(layer, w=np.ascontiguousarray(layer.w, dtype=dtype), b=b)
