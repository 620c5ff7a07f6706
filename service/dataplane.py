"""The Open Inference Protocol's one dataplane, shared by every transport.

REST (:mod:`service.v2.routes`) and gRPC (:mod:`service.grpc.server`) turn their
messages into calls on :class:`DataPlane` and its answers back into theirs; neither
decodes, budgets, admits or computes on its own. An inference request reaches it in the
protocol's own form, its JSON head plus the bytes of its binary inputs (what REST
receives; gRPC maps ``raw_input_contents`` to those bytes and typed contents to
``data``), so the one codec of :mod:`service.v2.binary` checks every input.

Failures are :class:`~service.problems.ApiError` with an HTTP status; each transport maps
the status once (REST: the problem handlers; gRPC: :data:`service.problems.GRPC_CODES`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

import cnncore

from . import __version__, metrics
from .compute import ComputeSlots
from .models import Model, ModelEntry, ModelNameError, ModelNotFoundError, ModelRepository
from .models.model import VERSION, ModelState
from .problems import ApiError
from .settings import Settings
from .v2.binary import OutputTensor, bad_request
from .v2.openapi import EXTENSIONS
from .v2.protocol import Plan, compute, model_metadata, plan_request, response_head

SERVER_NAME = "cnn-service"


@dataclass
class DataPlane:
    """What the server answers, whatever the transport.

    Parameters
    ----------
    settings
        The limits and options in force.
    models
        The model repository.
    slots
        The admission slots every computation takes.
    draining
        Whether the process is shutting down (SIGTERM received): not ready then.
    """

    settings: Settings
    models: ModelRepository
    slots: ComputeSlots
    draining: Callable[[], bool] = lambda: False

    # -- server -----------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        """Name, version and the protocol extensions supported."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def not_ready_reason(self) -> str | None:
        """Why the server is not ready, or ``None`` when it is: ready once the repository
        has been read, whatever each model's state (with ``CNN_STRICT_READINESS``: only
        while every model is READY), and not while shutting down."""
        if self.draining():
            return "shutting down: this instance no longer accepts new requests"
        if not self.models.scanned:
            return "the model repository has not been read yet"
        if self.settings.strict_readiness:
            down = [e.name for e in self.models.index() if e.state is not ModelState.READY]
            if down:
                return f"strict readiness: {len(down)} model(s) not READY: {', '.join(down[:5])}"
        return None

    # -- models -----------------------------------------------------------------------

    def entry(self, name: str, version: str | None = None) -> ModelEntry:
        """The entry of model ``name`` at ``version`` (``None`` or empty: the only one).

        Raises
        ------
        ApiError
            400 for an invalid name, 404 for an unknown model or version.
        """
        try:
            entry = self.models.entry(name)
        except ModelNameError as exc:
            raise bad_request(str(exc), ["path", "model"]) from None
        except ModelNotFoundError as exc:
            raise ApiError(404, str(exc), [(["path", "model"], "unknown model")]) from None
        if version and version != VERSION:
            raise ApiError(
                404,
                f"model {name!r} has no version {version[:20]!r}; its only version is '{VERSION}'",
                [(["path", "version"], "unknown version")],
            )
        return entry

    def ready_model(self, name: str, version: str | None = None) -> Model:
        """Model ``name`` if it is READY.

        Raises
        ------
        ApiError
            As :meth:`entry`, and 400 with its reason when it is not READY.
        """
        entry = self.entry(name, version)
        if entry.model is None:
            raise bad_request(
                f"model {name!r} is {entry.state.value}: {entry.reason}", ["path", "model"]
            )
        return entry.model

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Every input the model accepts and every output it can answer."""
        return model_metadata(self.ready_model(name, version))

    # -- inference --------------------------------------------------------------------

    def plan(
        self,
        model: Model,
        header: dict[str, Any],
        binary: memoryview,
        may_hold_bools: bool = True,
    ) -> Plan:
        """Check an inference request (its JSON head and binary bytes) against ``model``
        and the budgets, before anything is computed (see :func:`plan_request`)."""
        return plan_request(model, header, binary, self.settings, may_hold_bools)

    def compute(self, plan: Plan) -> list[OutputTensor]:
        """Run a checked plan in a computation slot (blocking: call it off the event loop).

        Raises
        ------
        ApiError
            503 when no slot frees up in time; 400 when cnncore refuses the input.
        """
        with self.slots.acquire():
            try:
                # Overflow is not a warning to log: non-finite JSON outputs are refused later.
                with np.errstate(all="ignore"):
                    return compute(plan)
            except cnncore.CnnError as exc:  # shapes were checked; a core refusal is a 400
                raise bad_request(str(exc)) from None

    @staticmethod
    def response_head(plan: Plan) -> dict[str, Any]:
        """The response's members other than its outputs."""
        return response_head(plan)

    @contextmanager
    def observed(self, name: str) -> Iterator[None]:
        """Count, time and gauge one inference request under its model's label (a known
        model's name, else ``other``), with the HTTP status it ended with."""
        label = name if name in self.models.names() else metrics.OTHER
        start = time.perf_counter()
        status = "500"
        metrics.MODEL_IN_FLIGHT.labels(model=label).inc()
        try:
            yield
            status = "200"
        except ApiError as exc:
            status = str(exc.status)
            raise
        finally:
            metrics.MODEL_IN_FLIGHT.labels(model=label).dec()
            metrics.MODEL_LATENCY.labels(model=label).observe(time.perf_counter() - start)
            metrics.MODEL_REQUESTS.labels(model=label, status=status).inc()

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Count one computing request from before its body is read until its answer
        (503 at once when the server is at capacity; see :meth:`ComputeSlots.admit`)."""
        with self.slots.admit():
            yield

    # -- repository -------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model with its state and, when UNAVAILABLE, the reason."""
        return [
            e.as_index()
            for e in self.models.index()
            if not ready_only or e.state is ModelState.READY
        ]

    def check_model_control(self) -> None:
        """Load and unload only with ``--model-control-mode explicit`` (Triton's rule): by
        default the models served are the ones read at start-up, whoever reaches the port.

        Raises
        ------
        ApiError
            403 naming the flag.
        """
        if self.settings.model_control_mode != "explicit":
            raise ApiError(
                403,
                "model control is disabled: this server serves the models it read at "
                "start-up (--model-control-mode none); start it with --model-control-mode "
                "explicit (CNN_MODEL_CONTROL_MODE=explicit) to load and unload models",
                [(["path", "model"], "model control disabled")],
            )

    def load(self, name: str, parameters: dict[str, Any]) -> None:
        """(Re)read the model's folder and swap the new model in (blocking).

        Raises
        ------
        ApiError
            403 unless model control is explicit; 400 for a config or files in the
            request, an invalid name or a model that fails to load (with its reason);
            404 for a folder the repository does not have.
        """
        self.check_model_control()
        if "config" in parameters or any(str(k).startswith("file:") for k in parameters):
            raise bad_request(
                "loading from a config or files in the request is not supported: put the "
                "model in the repository folder",
                ["parameters"],
            )
        entry = self._repository_call(self.models.load, name)
        if entry.model is None:
            raise bad_request(f"failed to load {name!r}: {entry.reason}", ["path", "model"])

    def unload(self, name: str) -> None:
        """Drop the model (UNAVAILABLE, "unloaded"); requests already running finish.

        Raises
        ------
        ApiError
            403 unless model control is explicit; 400 for an invalid name, 404 for an
            unknown model.
        """
        self.check_model_control()
        self._repository_call(self.models.unload, name)

    @staticmethod
    def _repository_call(fn: Any, name: str) -> ModelEntry:
        try:
            entry: ModelEntry = fn(name)
        except ModelNameError as exc:
            raise bad_request(str(exc), ["path", "model"]) from None
        except ModelNotFoundError as exc:
            raise ApiError(404, str(exc), [(["path", "model"], "unknown model")]) from None
        return entry
