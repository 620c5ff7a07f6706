"""Which engine answers an ONNX model's plain inference (contract §7).

Plain inference (only ``x`` in, no loss or gradient out) runs on onnxruntime when it is
installed and loads the model: it is the format's reference engine and, on AVX-512
machines, about twice as fast as numpy's BLAS on the same graph
(`docs/decisions/2026-12-05-onnxruntime-serving.md`). Every other request runs on
cnncore, which is why a model cnncore cannot import is unavailable whatever onnxruntime
could do.

``CNN_ONNX_RUNTIME`` chooses: :data:`AUTO` (onnxruntime when it can, else cnncore),
:data:`ONNXRUNTIME` (required) or :data:`CNNCORE` (never onnxruntime).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cnncore.threads import WORKERS

AUTO = "auto"
ONNXRUNTIME = "onnxruntime"
CNNCORE = "cnncore"
ENGINES = (AUTO, ONNXRUNTIME, CNNCORE)
"""The values of ``CNN_ONNX_RUNTIME``."""

PLATFORM = "onnxruntime_onnx"
"""The model metadata's platform when onnxruntime answers plain inference (Triton's name)."""

log = logging.getLogger("service")


class OrtUnavailableError(Exception):
    """onnxruntime cannot answer for a model; the message says why."""


def installed() -> bool:
    """Whether ``onnxruntime`` can be imported."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError:
        return False
    return True


class OrtSession:
    """An ``onnxruntime.InferenceSession`` of one model, for plain inference.

    Its intra-op threads are cnncore's worker count (:data:`cnncore.threads.WORKERS`):
    the CPUs this process may use, or fewer when ``OMP_NUM_THREADS`` says so, so the
    two engines share one CPU budget. Inter-op parallelism is off (one graph at a time
    per request; concurrency comes from the admission slots).

    Raises
    ------
    OrtUnavailableError
        If onnxruntime is not installed or refuses the file, or the model does not have
        one input and one output of ``dtype``.
    """

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        try:
            ort: Any = importlib.import_module("onnxruntime")
        except ImportError:
            raise OrtUnavailableError("onnxruntime is not installed") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = WORKERS
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: its warnings are about graph rewrites
        try:
            self._session = ort.InferenceSession(
                str(path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise OrtUnavailableError(f"onnxruntime cannot load it: {_first_line(exc)}") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise OrtUnavailableError(
                f"onnxruntime sees {len(inputs)} inputs and {len(outputs)} outputs, not 1 and 1"
            )
        self.dtype = np.dtype(dtype)
        self._input = inputs[0].name
        self._output = outputs[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        """``out`` for the batch ``x`` (shape and dtype as the model declares)."""
        x = np.ascontiguousarray(x, dtype=self.dtype)
        (out,) = self._session.run([self._output], {self._input: x})
        return np.asarray(out)


def open_session(path: Path, dtype: np.dtype, engine: str, where: str) -> OrtSession | None:
    """The onnxruntime session that answers plain inference for ``path``, or ``None``
    when cnncore answers it.

    With :data:`AUTO`, a model onnxruntime cannot take runs on cnncore and the log says
    why; with :data:`ONNXRUNTIME` that is the caller's fault to report.

    Raises
    ------
    OrtUnavailableError
        Only with ``engine == ONNXRUNTIME``, naming why onnxruntime cannot answer.
    """
    if engine == CNNCORE:
        return None
    try:
        return OrtSession(path, dtype)
    except OrtUnavailableError as exc:
        if engine == ONNXRUNTIME:
            raise
        log.warning("%s: plain inference runs on cnncore: %s", where, exc)
        return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
