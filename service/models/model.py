"""What a loaded model is: :class:`Model`, its :class:`ModelState`, and :class:`ModelLoadError`.

Every loader (``model.json``: :mod:`service.models.native`; ``model.onnx``:
:mod:`service.models.onnx`) turns one file into a :class:`Model` or raises
:class:`ModelLoadError` with a reason naming the file and the fault. The weights
a model holds are read-only arrays (:func:`hold`), shared by every request in
the process.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncore.graph import Graph

from ..wire.datatypes import DATATYPES, FLOAT_DATATYPES

if TYPE_CHECKING:
    from .onnx_runtime import OrtSession

#: Open Inference Protocol datatypes a model can compute in, and their numpy dtypes.
MODEL_DATATYPES: dict[str, np.dtype] = {name: DATATYPES[name] for name in FLOAT_DATATYPES}

VERSION = "1"
"""Every model has exactly one version."""


class ModelState(str, enum.Enum):
    """A model's state in the repository index (Triton's names)."""

    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


class ModelLoadError(Exception):
    """A model's files are invalid; ``reason`` names the file and the fault.

    Parameters
    ----------
    reason
        Shown in the repository index, ``cnn-service models`` and load errors.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class Model:
    """A model loaded from the repository, ready to compute.

    Attributes
    ----------
    name
        The model's folder name.
    version
        Always ``"1"``.
    platform
        ``"cnncore"`` (``model.json``), ``"onnx"`` (an ONNX model cnncore answers in full)
        or ``"onnxruntime_onnx"`` (onnxruntime answers its plain inference).
    path
        The file it was loaded from.
    datatype, dtype
        The computation's datatype (``"FP32"`` or ``"FP64"``) and numpy dtype.
    input_shape, output_shape
        Shapes of ``x`` and ``out``; ``-1`` for the free batch dimension.
    graph
        The :class:`cnncore.graph.Graph` that computes it (input ``"x"``, output ``"out"``).
    labels
        Class names of the output's columns, or ``None``.
    parameters
        Names of the parameters that get gradients (``"0.w"``, ``"conv1.weight"``), in order.
    nbytes
        Memory the model holds (its parameters and constants).
    op_counts
        Nodes by operator (``{"conv2d": 2, "relu": 2, ...}``).
    runtime
        The onnxruntime session that answers plain inference, or ``None`` (cnncore does).
    classes
        Number of classes (the output's second dimension) when the output is ``(N, classes)``,
        else ``None``: labels are accepted only then.
    """

    name: str
    platform: str
    path: Path
    datatype: str
    input_shape: list[int]
    output_shape: list[int]
    graph: Graph
    parameters: list[str]
    nbytes: int
    op_counts: dict[str, int] = field(default_factory=dict)
    labels: list[str] | None = None
    runtime: OrtSession | None = None
    version: str = VERSION

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of :attr:`datatype`."""
        return MODEL_DATATYPES[self.datatype]

    @property
    def classes(self) -> int | None:
        """Columns of a 2-D output ``(N, classes)``, else ``None``."""
        return self.output_shape[1] if len(self.output_shape) == 2 else None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``out`` for ``x`` (N, *input_shape[1:]) with no gradient: onnxruntime when
        :attr:`runtime` is set, else the graph's forward pass."""
        if self.runtime is not None:
            return self.runtime.run(x)
        out, _ = self.graph.forward(x, backward=False)
        return out

    def parameter_shape(self, name: str) -> tuple[int, ...]:
        """Shape of parameter ``name``."""
        return tuple(self.graph.params[name].shape)


def hold(arrays: Iterable[np.ndarray]) -> int:
    """Make ``arrays`` read-only (a request can never change a model's weights);
    return the bytes they take together."""
    total = 0
    for arr in arrays:
        arr.flags.writeable = False
        total += arr.nbytes
    return total


def describe_input(datatype: str, shape: Any) -> tuple[str, list[int]]:
    """Check a model's input description: a datatype of :data:`MODEL_DATATYPES` and a
    shape of at least two dimensions, each positive or ``-1`` (only the first may be).

    Raises
    ------
    ValueError
        Naming the field at fault; loaders prefix the file.
    """
    if datatype not in MODEL_DATATYPES:
        raise ValueError(f"datatype must be one of {', '.join(MODEL_DATATYPES)}, got {datatype!r}")
    dims = list(shape)
    if len(dims) < 2 or any(isinstance(d, bool) or not isinstance(d, int) for d in dims):
        raise ValueError(f"shape must list at least 2 integers, got {dims}")
    if any(d < 1 for d in dims[1:]) or not (dims[0] == -1 or dims[0] >= 1):
        raise ValueError(f"shape must be positive integers, -1 only for the batch, got {dims}")
    return datatype, dims


def free_batch(shape: tuple[int, ...] | list[int], batch_free: bool) -> list[int]:
    """``shape`` as a list, with ``-1`` as its first dimension when the batch is free."""
    return [-1, *shape[1:]] if batch_free else list(shape)
