"""The dataplane: the one way every transport (REST ``/v2``, gRPC) runs the Open
Inference Protocol over the model repository.

A request arrives as a :class:`service.wire.infer.InferRequest`, whatever carried it,
and goes: model (404 unknown, 400 not ready) -> inputs decoded and checked
(:func:`service.wire.infer.decode_input`) -> mapped onto the model (``x``, one upstream
signal, the outputs asked for) -> planned from shapes (``graph.infer``) -> budgeted
with :meth:`cnncore.graph.GraphInfo.working_bytes`, the measured estimate -> a
computation slot -> forward, loss and probabilities, backward for the gradients asked
for -> an :class:`~service.wire.infer.InferResponse`. Every failure is a domain
exception of :mod:`service.errors`; the transport maps it to its status.

Inputs: ``x`` and at most one upstream signal: ``labels`` (INT64 or INT32, shape
``[N]``: mean softmax cross-entropy), ``target`` (the output's shape: mean squared
error) or ``out_grad`` (dL/d``out``). Outputs: ``out``, ``loss``, ``probabilities``,
``grad/x``, ``grad/<parameter>`` and ``grad/*``.

The API (agreed with the gRPC transport): :meth:`DataPlane.server_metadata`,
:meth:`~DataPlane.live`, :meth:`~DataPlane.ready`, :meth:`~DataPlane.model_metadata`,
:meth:`~DataPlane.model_ready`, :meth:`~DataPlane.infer`,
:meth:`~DataPlane.repository_index`, :meth:`~DataPlane.load`, :meth:`~DataPlane.unload`.
``infer``, ``load`` and ``unload`` are synchronous and CPU- or disk-bound: call them in
a worker thread, or call :meth:`~DataPlane.infer_async` and :meth:`~DataPlane.run_async`
from the event loop, which compute small work there and the rest on a worker thread.
Refinements of the agreed shape: ``repository_index(ready_only=False)``;
``model_ready`` raises (NotFoundError, BadRequestError) for an unknown or invalid name
rather than answering False; ``InferRequest.may_hold_bools`` lets a transport skip the
scan for booleans; helpers the transports share: :meth:`~DataPlane.ready_model`,
:meth:`~DataPlane.not_ready_reason`, :meth:`~DataPlane.check_model_control` (to refuse
before reading a body), and for ``/v1`` :meth:`~DataPlane.check_budget` and
:meth:`~DataPlane.run`. Admission (:meth:`service.compute.ComputeSlots.admit`, counted before
a body is read) stays with the transport, which can refuse before reading anything.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio.to_thread
import numpy as np

import cnncore
from cnncore.network import Conv2d, Layer, Linear, network_graph

from . import __version__, metrics
from .compute import ComputeSlots
from .errors import (
    Loc,
    NotFoundError,
    PermissionDeniedError,
    ServiceError,
    TooLargeError,
    bad_request,
    from_cnn_error,
)
from .models import Model, ModelEntry, ModelNameError, ModelNotFoundError, ModelRepository
from .models.model import VERSION, ModelState
from .settings import Settings
from .wire.datatypes import LABEL_DATATYPES, v2_name
from .wire.infer import InferInput, InferRequest, InferResponse, OutputTensor, decode_input

T = TypeVar("T")

SIGNALS = ("labels", "target", "out_grad")
LOSS_SIGNALS = ("labels", "target")
GRAD = "grad/"
ALL_GRADS = "grad/*"
#: The protocol extensions served (REST and gRPC alike).
EXTENSIONS = ["binary_tensor_data", "model_repository"]
#: Request parameters of Triton's that this service cannot honour: refused, not ignored.
UNSUPPORTED_PARAMETERS = ("classification", "shared_memory_region")
#: The model-control modes (Triton's ``--model-control-mode``).
MODEL_CONTROL_MODES = ("none", "explicit")
#: A request body at most this large is decoded on the event loop; work of at most
#: INLINE_FLOPS computes there (:meth:`DataPlane.run_async`): well under a millisecond.
INLINE_BYTES = 64 << 10
INLINE_FLOPS = 1_000_000


class _HasState(Protocol):
    ready: bool


@dataclass
class _Plan:
    """A request checked against its model and the budgets: ready to compute."""

    model: Model
    x: np.ndarray
    signal: str | None
    signal_value: np.ndarray | None
    outputs: list[tuple[str, bool]]  # (name, as binary), in the order asked
    wrt: list[str]  # gradients to compute: "x" and parameter names
    request_id: str | None
    flops: int  # of every pass the request needs


#: Set while :meth:`DataPlane.run_async` computes on the event loop in a slot it holds.
_SLOT_HELD: contextvars.ContextVar[bool] = contextvars.ContextVar("slot_held", default=False)


class DataPlane:
    """The Open Inference Protocol's operations on one model repository.

    Parameters
    ----------
    settings
        Limits (elements, FLOPs, working memory) and the model-control mode.
    models
        The model repository.
    slots
        The computation slots every computing request takes one of.
    state
        An object whose ``ready`` turns false when the instance shuts down (the app's
        state); ``None``: always ready once the repository is read.
    """

    def __init__(
        self,
        settings: Settings,
        models: ModelRepository,
        slots: ComputeSlots,
        state: _HasState | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.slots = slots
        self.state = state

    # ----------------------------------------------------------------------- server

    def server_metadata(self) -> dict[str, Any]:
        """Name, version and the protocol extensions supported."""
        return {"name": "cnn-service", "version": __version__, "extensions": list(EXTENSIONS)}

    def live(self) -> bool:
        """True while the process answers."""
        return True

    def not_ready_reason(self) -> str | None:
        """Why the server is not ready, or ``None`` when it is: shutting down, the
        repository not read yet, or (strict readiness) a model not READY."""
        if self.state is not None and not self.state.ready:
            return "shutting down: this instance no longer accepts new requests"
        if not self.models.scanned:
            return "the model repository has not been read yet"
        if self.settings.strict_readiness:
            down = [e.name for e in self.models.index() if e.state is not ModelState.READY]
            if down:
                return f"strict readiness: {len(down)} model(s) not READY: {', '.join(down[:5])}"
        return None

    def ready(self) -> bool:
        """Whether the server is ready (see :meth:`not_ready_reason`)."""
        return self.not_ready_reason() is None

    # ----------------------------------------------------------------------- models

    def entry(self, name: str, version: str | None = None) -> ModelEntry:
        """Model ``name``'s entry at ``version`` (``None``: its only one).

        Raises
        ------
        service.errors.BadRequestError
            for an invalid name.
        service.errors.NotFoundError
            for an unknown model or version.
        """
        with _model_named():
            entry = self.models.entry(name)
        if version is not None and version != VERSION:
            raise NotFoundError(
                f"model {name!r} has no version {version[:20]!r}; its only version is '{VERSION}'",
                [(["path", "version"], "unknown version")],
            )
        return entry

    def ready_model(self, name: str, version: str | None = None) -> Model:
        """Model ``name`` if it is READY; else :class:`~service.errors.BadRequestError` with its
        reason (or as :meth:`entry` raises)."""
        entry = self.entry(name, version)
        if entry.model is None:
            raise bad_request(
                f"model {name!r} is {entry.state.value}: {entry.reason}", ["path", "model"]
            )
        return entry.model

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether model ``name`` is READY (raises for an unknown or invalid name)."""
        return self.entry(name, version).model is not None

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Every input the model accepts and every output it can answer."""
        return metadata(self.ready_model(name, version))

    # ----------------------------------------------------------------------- inference

    def infer(self, name: str, version: str | None, request: InferRequest) -> InferResponse:
        """Check ``request`` against model ``name`` and the budgets, then compute it in a
        computation slot (:meth:`prepare`, then :meth:`answer`).

        Raises
        ------
        service.errors.ServiceError
            BadRequestError naming the input or output at fault; NotFoundError; TooLargeError over a
            limit (the message says how many samples would fit); OverloadedError when no slot
            frees up in time.
        """
        return self.answer(self.prepare(name, version, request))

    def prepare(self, name: str, version: str | None, request: InferRequest) -> _Plan:
        """``request`` decoded and checked against model ``name`` and the budgets: what
        :meth:`answer` computes (errors as :meth:`infer`)."""
        return self._plan(self.ready_model(name, version), request)

    def answer(self, plan: _Plan) -> InferResponse:
        """Compute a prepared request in a computation slot."""
        with self._slot():
            try:
                # Overflow is not a warning to log: non-finite outputs are refused as JSON.
                with np.errstate(all="ignore"):
                    arrays = _compute(plan)
            except cnncore.CnnError as exc:  # shapes were checked; a core refusal is a 400
                raise bad_request(str(exc)) from None
        outputs = [
            OutputTensor(n, v2_name(a.dtype), list(a.shape), a, binary)
            for (n, binary), a in zip(plan.outputs, arrays, strict=True)
        ]
        return InferResponse(plan.model.name, plan.model.version, plan.request_id, outputs)

    async def infer_async(
        self,
        name: str,
        version: str | None,
        nbytes: int,
        decode: Callable[[], InferRequest],
        encode: Callable[[InferResponse], T],
    ) -> T:
        """:meth:`infer` from a transport's event loop: ``decode()`` the request (whose
        body has ``nbytes``), infer, ``encode(...)`` the answer. A body of at most
        :data:`INLINE_BYTES` is decoded and planned on the loop, and computed as
        :meth:`run_async` says; a larger one goes to a worker thread whole."""
        if nbytes <= INLINE_BYTES:
            plan = self.prepare(name, version, decode())
            return await self.run_async(plan.flops, lambda: encode(self.answer(plan)))
        return await anyio.to_thread.run_sync(lambda: encode(self.infer(name, version, decode())))

    async def run_async(self, flops: int, work: Callable[[], T]) -> T:
        """``work()`` (planned and budgeted, computing through :meth:`run` or
        :meth:`answer`) from the event loop: on the loop itself when it has at most
        :data:`INLINE_FLOPS` and a slot is free at once, else on a worker thread (which
        waits for a slot). The hop to a thread and back costs more than a small
        computation (0.2 ms of a 1.2 ms tiny gRPC call, ``2026-12-05-dataplane.md``)."""
        if flops <= INLINE_FLOPS:
            with self.slots.acquire(wait=False) as held:
                if held:
                    token = _SLOT_HELD.set(True)
                    try:
                        return work()
                    finally:
                        _SLOT_HELD.reset(token)
        return await anyio.to_thread.run_sync(work)

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """A computation slot for the block, unless :meth:`run_async` holds one already."""
        if _SLOT_HELD.get():
            yield
            return
        with self.slots.acquire():
            yield

    def _plan(self, model: Model, request: InferRequest) -> _Plan:
        _refuse_unsupported(request.parameters, ["parameters"])
        tensors = self._inputs(request)
        x = _x(model, tensors)
        try:
            # the output shape first (of a forward pass), for the signal's checks
            out_shape = model_budget(model, x.shape, x.itemsize, False)[0]
        except cnncore.CnnError as exc:
            raise bad_request(f"input 'x': {exc}", ["inputs", "x"]) from None
        signal, value = _signal(model, tensors, out_shape, x.shape[0])
        outputs = _outputs(model, request, signal)
        wrt = [n[len(GRAD) :] for n, _ in outputs if n.startswith(GRAD)]
        _, forward_flops, work = model_budget(model, x.shape, x.itemsize, bool(wrt))
        passes = 3 if wrt else 1  # a backward pass costs about two forward passes more
        flops = passes * forward_flops
        try:
            check_budget(self.settings, flops, work, ["inputs", "x"])
        except TooLargeError as exc:
            raise _batch_hint(exc, x.shape[0], flops, work, self.settings) from None
        return _Plan(model, x, signal, value, outputs, wrt, request.id, flops)

    def _inputs(self, request: InferRequest) -> dict[str, tuple[InferInput, np.ndarray]]:
        tensors: dict[str, tuple[InferInput, np.ndarray]] = {}
        limit = self.settings.max_elements
        for i, inp in enumerate(request.inputs):
            array = decode_input(inp, i, limit, request.may_hold_bools)
            if inp.name in tensors:
                raise bad_request(f"input {inp.name[:40]!r} is given twice", ["inputs", i, "name"])
            tensors[inp.name] = (inp, array)
        unknown = [n for n in tensors if n != "x" and n not in SIGNALS]
        if unknown:
            raise bad_request(
                f"unknown input {unknown[0][:40]!r}: a model takes x and at most one of "
                + ", ".join(SIGNALS),
                ["inputs", unknown[0][:40]],
            )
        given = [n for n in SIGNALS if n in tensors]
        if len(given) > 1:
            raise bad_request(
                f"inputs {' and '.join(given)} are both given; send at most one upstream signal",
                ["inputs", given[1]],
            )
        return tensors

    # ----------------------------------------------------------------------- /v1

    def check_budget(self, flops: int, work_bytes: int, loc: Loc = ()) -> None:
        """Refuse (too large) a request over the FLOP or working-memory budget."""
        check_budget(self.settings, flops, work_bytes, loc)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
        """Call ``fn`` in a computation slot (``/v1``'s computations, already planned and
        budgeted); its result and the time taken in ms. Core errors
        (:class:`cnncore.CnnError`) become 422s naming the argument."""
        with self._slot():
            start = time.perf_counter()
            try:
                # Overflow is not a warning to log: a non-finite result is refused when encoded.
                with np.errstate(all="ignore"):
                    result = fn(*args, **kwargs)
            except cnncore.CnnError as exc:
                raise from_cnn_error(exc) from None
            return result, (time.perf_counter() - start) * 1e3

    # ----------------------------------------------------------------------- repository

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model with its state and, when UNAVAILABLE, the reason."""
        return [
            e.as_index()
            for e in self.models.index()
            if not ready_only or e.state is ModelState.READY
        ]

    def check_model_control(self) -> None:
        """Refuse (:class:`~service.errors.PermissionDeniedError`) load and unload unless the
        model-control mode is ``explicit``: otherwise anyone who reaches the port could
        take the served models down."""
        if self.settings.model_control_mode != "explicit":
            raise PermissionDeniedError(
                "model control is disabled: start the server with --model-control-mode "
                "explicit (CNN_MODEL_CONTROL_MODE=explicit) to load and unload models",
                [(["path", "model"], "model control mode is 'none'")],
            )

    def load(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """(Re)read model ``name``'s folder and swap it in; requests already running finish
        with the old one. ``parameters`` of the request: a config or files are refused.

        Raises
        ------
        service.errors.ServiceError
            PermissionDeniedError unless model control is ``explicit``; BadRequestError for an
            invalid name or model (which is then UNAVAILABLE in the index), or a config or
            files in the request; NotFound.
        """
        self.check_model_control()
        params = parameters or {}
        if "config" in params or any(str(k).startswith("file:") for k in params):
            raise bad_request(
                "loading from a config or files in the request is not supported: put the model "
                "in the repository folder",
                ["parameters"],
            )
        with _model_named():
            entry = self.models.load(name)
        if entry.model is None:
            raise bad_request(f"failed to load {name!r}: {entry.reason}", ["path", "model"])

    def unload(self, name: str) -> None:
        """Drop model ``name`` (UNAVAILABLE, "unloaded"); requests already running finish.

        Raises as :meth:`load` does.
        """
        self.check_model_control()
        with _model_named():
            self.models.unload(name)


@contextlib.contextmanager
def _model_named() -> Iterator[None]:
    """The repository's refusals of a model name as the protocol's: an invalid name is a
    bad request, an unknown one not found (both located at the path's ``model``)."""
    try:
        yield
    except ModelNameError as exc:
        raise bad_request(str(exc), ["path", "model"]) from None
    except ModelNotFoundError as exc:
        raise NotFoundError(str(exc), [(["path", "model"], "unknown model")]) from None


# --------------------------------------------------------------------------- budgets


def check_budget(settings: Settings, flops: int, work_bytes: int, loc: Loc = ()) -> None:
    """Refuse (:class:`~service.errors.TooLargeError`, 413) a request whose FLOPs or
    working memory exceed the configured limits.

    Both numbers come from shapes alone, so nothing has been computed or allocated yet.
    """
    if flops > settings.max_flops:
        metrics.REJECTED.labels(limit="flops").inc()
        raise TooLargeError(
            f"this request needs {flops:.3g} FLOPs; the limit is {settings.max_flops:.3g} "
            "(CNN_MAX_FLOPS)",
            [(list(loc), f"{flops:.3g} FLOPs exceeds the limit of {settings.max_flops:.3g}")],
        )
    if work_bytes > settings.max_request_bytes:
        metrics.REJECTED.labels(limit="memory").inc()
        raise TooLargeError(
            f"this request needs about {work_bytes / 2**20:.1f} MiB of working memory; the limit "
            f"is {settings.max_request_bytes / 2**20:.1f} MiB (CNN_MAX_REQUEST_BYTES)",
            [(list(loc), "working memory exceeds the limit")],
        )


V = TypeVar("V")

#: How many distinct request shapes each budget memo remembers (per process).
BUDGET_CACHE_SIZE = 512


class _ShapeMemo:
    """Values computed from shapes alone, remembered for the last ``size`` keys (least
    recently used out); thread-safe, since requests are planned on worker threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Callable[[], V]) -> V:
        """The value remembered for ``key``, else ``compute()`` (an exception is not
        remembered)."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                found: V = self._values[key]
                return found
        value = compute()
        with self._lock:
            self._values[key] = value
            if len(self._values) > self.size:
                self._values.popitem(last=False)
        return value


_network_budgets = _ShapeMemo(BUDGET_CACHE_SIZE)
_model_budgets = _ShapeMemo(BUDGET_CACHE_SIZE)


def model_budget(
    model: Model, x_shape: tuple[int, ...], itemsize: int, backward: bool
) -> tuple[tuple[int, ...], int, int]:
    """A model's output shape, FLOPs of a forward pass and working-memory bytes for an
    input of ``x_shape`` (``graph.infer`` and its measured estimate, 0.3 ms for the
    bundled digits model), remembered by shapes. The key holds the model weakly: an
    unloaded model's weights are never kept alive by it.

    Raises
    ------
    cnncore.CnnError
        If ``x_shape`` does not fit the model.
    """

    def compute() -> tuple[tuple[int, ...], int, int]:
        info = model.graph.infer(x_shape)
        work = info.working_bytes(itemsize, backward=backward)
        return tuple(info.output_shape), info.total_flops, work

    return _model_budgets.get((weakref.ref(model), x_shape, itemsize, backward), compute)


def network_budget(
    layers: Sequence[Layer], x_shape: Sequence[int], itemsize: int, backward: bool
) -> tuple[int, int]:
    """FLOPs and working-memory bytes of running ``layers`` (checked from shapes already)
    forward, and backward with ``backward``: the same measured estimate
    (:meth:`cnncore.graph.GraphInfo.working_bytes`) as a model's on ``/v2``, plus the
    parameters, which a ``/v1`` request brings itself. A backward pass counts as three
    passes of FLOPs (forward, dx, dw).

    The numbers depend on shapes alone, so they are remembered by shapes (the last
    :data:`BUDGET_CACHE_SIZE`): a convolution's estimate costs about 0.2 ms of Python,
    a tenth of a tiny request's round trip, and clients repeat their shapes.
    """
    specs = repr(
        [layer.spec() if isinstance(layer, Conv2d | Linear) else layer for layer in layers]
    )

    def compute() -> tuple[int, int]:
        info = network_graph(layers).infer(tuple(x_shape))
        params = info.total_params * itemsize
        passes = 3 if backward else 1
        return passes * info.total_flops, info.working_bytes(itemsize, backward=backward) + params

    return _network_budgets.get((specs, tuple(x_shape), itemsize, backward), compute)


def dataplane_of(app: Any) -> DataPlane:
    """The dataplane an application keeps at ``app.state.dataplane``."""
    plane: DataPlane = app.state.dataplane
    return plane


def metadata(model: Model) -> dict[str, Any]:
    """A model's metadata: every input it accepts and output it can answer."""
    dt = model.datatype
    out = model.output_shape
    inputs = [{"name": "x", "datatype": dt, "shape": model.input_shape}]
    outputs = [{"name": "out", "datatype": dt, "shape": out}]
    if model.classes is not None:
        inputs.append({"name": "labels", "datatype": "INT64", "shape": [out[0]]})
    inputs += [
        {"name": "target", "datatype": dt, "shape": out},
        {"name": "out_grad", "datatype": dt, "shape": out},
    ]
    outputs.append({"name": "loss", "datatype": dt, "shape": [1]})
    if model.classes is not None:
        outputs.append({"name": "probabilities", "datatype": dt, "shape": out})
    outputs.append({"name": "grad/x", "datatype": dt, "shape": model.input_shape})
    outputs += [
        {"name": GRAD + p, "datatype": dt, "shape": list(model.parameter_shape(p))}
        for p in model.parameters
    ]
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": model.platform,
        "inputs": inputs,
        "outputs": outputs,
    }


def _compute(plan: _Plan) -> list[np.ndarray]:
    """The plan's forward (and backward) pass; the outputs asked for, in order."""
    model = plan.model
    if plan.signal is None and not plan.wrt:  # plain inference: the model's fastest engine
        out = model.predict(plan.x)  # without a signal "out" is the only output there is
        return [out for _ in plan.outputs]
    out, cache = model.graph.forward(plan.x, backward=bool(plan.wrt))
    results: dict[str, np.ndarray] = {"out": out}
    dout = plan.signal_value
    if plan.signal in LOSS_SIGNALS:
        assert plan.signal_value is not None
        loss, dout, probabilities = loss_and_gradient(plan.signal, out, plan.signal_value)
        results["loss"] = np.array([loss + 0.0], dtype=model.dtype)  # -0.0 reads as 0.0
        if probabilities is not None:
            results["probabilities"] = probabilities
    if plan.wrt:
        grads = model.graph.backward(dout, cache, wrt=plan.wrt)
        results.update({GRAD + name: grads[name] for name in plan.wrt})
    return [results[name] for name, _ in plan.outputs]


def probabilities(out: np.ndarray) -> np.ndarray:
    """Softmax of each row of ``out`` (computed from the log-softmax, which never
    overflows)."""
    return np.exp(cnncore.log_softmax(out))


def loss_and_gradient(
    kind: str, out: np.ndarray, signal: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """The loss of ``out`` against ``signal`` (``"labels"``: mean softmax cross-entropy;
    ``"target"``: mean squared error), dL/d``out``, and the softmax probabilities (with
    labels; else ``None``): :func:`cnncore.network_loss`, as ``/v1/network`` computes it."""
    if kind == "labels":
        loss, dout = cnncore.network_loss(out, cnncore.SoftmaxCrossEntropy(signal))
        return loss, dout, probabilities(out)
    loss, dout = cnncore.network_loss(out, cnncore.MeanSquaredError(signal))
    return loss, dout, None


# --------------------------------------------------------------------------- inputs


def _refuse_unsupported(params: dict[str, Any], loc: list[str | int]) -> None:
    for key in UNSUPPORTED_PARAMETERS:
        if key in params:
            raise bad_request(f"parameter {key!r} is not supported by this server", [*loc, key])


def _shape_text(shape: Any) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _float_input(inp: InferInput, array: np.ndarray, model: Model) -> np.ndarray:
    if inp.datatype != model.datatype:
        raise bad_request(
            f"input {inp.name!r} has datatype {inp.datatype}; model {model.name!r} computes "
            f"in {model.datatype}",
            ["inputs", inp.name, "datatype"],
        )
    if not np.isfinite(array).all():
        raise bad_request(f"input {inp.name!r} holds NaN or infinity", ["inputs", inp.name])
    return array


def _x(model: Model, tensors: dict[str, tuple[InferInput, np.ndarray]]) -> np.ndarray:
    if "x" not in tensors:
        raise bad_request("input 'x' is missing", ["inputs"])
    inp, array = tensors["x"]
    want = model.input_shape
    fits = array.ndim == len(want) and all(
        w in (-1, s) for w, s in zip(want, array.shape, strict=True)
    )
    if not fits or 0 in array.shape:
        raise bad_request(
            f"input 'x' has shape {_shape_text(array.shape)}; model {model.name!r} takes "
            f"{_shape_text(want)} (-1: any size from 1)",
            ["inputs", "x", "shape"],
        )
    return _float_input(inp, array, model)


def _signal(
    model: Model,
    tensors: dict[str, tuple[InferInput, np.ndarray]],
    out_shape: tuple[int, ...],
    batch: int,
) -> tuple[str | None, np.ndarray | None]:
    name = next((n for n in SIGNALS if n in tensors), None)
    if name is None:
        return None, None
    inp, array = tensors[name]
    loc: list[str | int] = ["inputs", name]
    if name != "labels":
        if array.shape != out_shape:
            raise bad_request(
                f"input {name!r} has shape {_shape_text(array.shape)}; the output for this x "
                f"has shape {_shape_text(out_shape)}",
                [*loc, "shape"],
            )
        return name, _float_input(inp, array, model)
    classes = model.classes
    if classes is None:
        raise bad_request(
            f"input 'labels' needs an output (N, classes); model {model.name!r} answers "
            f"{_shape_text(model.output_shape)} (send target or out_grad)",
            loc,
        )
    if inp.datatype not in LABEL_DATATYPES:
        raise bad_request(
            f"input 'labels' has datatype {inp.datatype}; send INT64 or INT32",
            [*loc, "datatype"],
        )
    if array.shape != (batch,):
        raise bad_request(
            f"input 'labels' has shape {_shape_text(array.shape)}; x has {batch} samples, so "
            f"labels has shape [{batch}]",
            [*loc, "shape"],
        )
    labels = array.astype(np.int64, copy=False)
    if labels.min() < 0 or labels.max() >= classes:
        bad = int(labels[(labels < 0) | (labels >= classes)][0])
        raise bad_request(
            f"input 'labels' holds {bad}; labels are class indices in [0, {classes})", loc
        )
    return name, labels


# --------------------------------------------------------------------------- outputs


def _outputs(model: Model, request: InferRequest, signal: str | None) -> list[tuple[str, bool]]:
    binary_default = request.binary_default
    if request.outputs is None:
        names = ["out"]
        if signal in LOSS_SIGNALS:
            names.append("loss")
        if signal == "labels":
            names.append("probabilities")
        return [(n, binary_default) for n in names]
    asked: set[str] = set()
    chosen: dict[str, bool] = {}  # an output grad/* also names keeps its own binary_data
    for i, spec in enumerate(request.outputs):
        _refuse_unsupported(spec.parameters, ["outputs", i, "parameters"])
        name = spec.name
        binary = binary_default if spec.binary is None else spec.binary
        if name in asked:
            raise bad_request(f"output {name[:60]!r} is asked for twice", ["outputs", i, "name"])
        asked.add(name)
        for n in _expand(model, name, signal, i):
            if name != ALL_GRADS or n not in chosen:
                chosen[n] = binary
    return list(chosen.items())


def _expand(model: Model, name: str, signal: str | None, i: int) -> list[str]:
    """The outputs ``name`` stands for (``grad/*``: every gradient), checked against what
    the request can answer."""
    loc: list[str | int] = ["outputs", i, "name"]
    if name == "out":
        return [name]
    if name == "loss":
        if signal not in LOSS_SIGNALS:
            raise bad_request("output 'loss' needs an input labels or target", loc)
        return [name]
    if name == "probabilities":
        if signal != "labels":
            raise bad_request("output 'probabilities' needs an input labels", loc)
        return [name]
    if name.startswith(GRAD):
        if signal is None:
            raise bad_request(
                f"output {name[:60]!r} needs an upstream signal: an input labels, target "
                "or out_grad",
                loc,
            )
        if name == ALL_GRADS:
            return [GRAD + "x"] + [GRAD + p for p in model.parameters]
        if name == GRAD + "x" or name[len(GRAD) :] in model.graph.params:
            return [name]
        some = ", ".join(GRAD + p for p in model.parameters[:6])
        raise bad_request(
            f"unknown output {name[:60]!r}: model {model.name!r} has gradients grad/x, "
            f"{some}{', ...' if len(model.parameters) > 6 else ''} and grad/*",
            loc,
        )
    raise bad_request(
        f"unknown output {name[:60]!r}: outputs are out, loss, probabilities, grad/x, "
        "grad/<parameter> and grad/*",
        loc,
    )


def _batch_hint(
    exc: ServiceError, batch: int, flops: int, work: int, settings: Settings
) -> TooLargeError:
    """The budget's refusal, saying how many samples of this shape would fit (both
    budgets grow about linearly with the batch)."""
    fit = min(
        int(batch * settings.max_flops // max(flops, 1)),
        batch * settings.max_request_bytes // max(work, 1),
    )
    if fit >= 1:
        hint = f"the batch of {batch} is too large for the model: send at most about {fit}"
    else:
        hint = "even one sample of this shape is over the limit for the model"
    return TooLargeError(f"{exc.detail}; {hint}", exc.errors, exc.headers)
