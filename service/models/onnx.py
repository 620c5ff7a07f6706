"""``model.onnx``: an ONNX model imported with :func:`cnncore.load_onnx` and served like a
native model (``x`` in, ``out`` out, ``grad/<initializer name>`` for every parameter).

Every fault is the importer's message with the file in front, so the repository index
says which node and attribute stopped the model (``resnet/model.onnx: node "Conv_12"
(Conv): auto_pad SAME_LOWER is not supported``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import cnncore
from cnncore.onnx import OnnxImportError

from .model import Model, ModelLoadError, describe_input, free_batch, hold
from .onnx_runtime import CNNCORE, PLATFORM, OrtUnavailableError, open_session

FILE_NAME = "model.onnx"


def load(path: Path, name: str, engine: str = CNNCORE) -> Model:
    """Load the ONNX model in ``path`` as model ``name``; ``engine`` (``CNN_ONNX_RUNTIME``,
    see :mod:`service.models.onnx_runtime`) says who answers its plain inference.

    The datatype is the graph input's (``FP32`` unless the file declares double),
    the input and output shapes come from the declared input through the graph's
    shape rules (``-1`` for a free batch), and the parameters are the float
    initializers the gradient reaches, by their names in the file.

    Raises
    ------
    ModelLoadError
        Naming ``<name>/model.onnx`` and the fault: not an ONNX file, an opset the
        importer is not tested with, or the node, operator and attribute it cannot
        import exactly; with ``engine="onnxruntime"``, why onnxruntime cannot load it.
    """
    where = f"{name}/{path.name}"
    try:
        graph = cnncore.load_onnx(path)
    except OnnxImportError as exc:
        raise ModelLoadError(f"{where}: {exc.message}") from None
    datatype = "FP64" if np.dtype(graph.dtype) == np.float64 else "FP32"
    try:
        datatype, shape = describe_input(datatype, list(graph.input_shape or ()))
    except ValueError as exc:
        raise ModelLoadError(f"{where}: input: {exc}") from None
    batch_free = shape[0] == -1
    try:
        info = graph.infer((1, *shape[1:]) if batch_free else tuple(shape))
    except (
        cnncore.CnnError
    ) as exc:  # the importer inferred at two batches; one more is cheap insurance
        raise ModelLoadError(f"{where}: {exc.message}") from None
    try:
        runtime = open_session(path, np.dtype(graph.dtype), engine, where)
    except OrtUnavailableError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    held = hold([*graph.params.values(), *graph.constants.values()])
    return Model(
        name=name,
        platform="onnx" if runtime is None else PLATFORM,
        path=path,
        datatype=datatype,
        input_shape=shape,
        output_shape=free_batch(info.output_shape, batch_free),
        graph=graph,
        parameters=list(graph.params),
        nbytes=held if runtime is None else 2 * held,  # onnxruntime holds its own copy
        op_counts=graph.op_counts(),
        runtime=runtime,
    )
