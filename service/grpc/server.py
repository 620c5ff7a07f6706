"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` and the
standard ``grpc.health.v1.Health``, on grpcio's asyncio server, beside uvicorn in every
worker process (contract §5).

A thin transport: each RPC turns its message into a call on the app's
:class:`~service.dataplane.DataPlane` and the answer back into a message. An inference
request becomes the wire layer's :class:`~service.wire.infer.InferRequest`
(``raw_input_contents`` as raw bytes, typed ``contents`` as numbers), decoded and checked
by the same :func:`~service.wire.infer.decode_input` as REST's;
failures are :class:`~service.errors.ServiceError`, whose gRPC code comes from the one
table of :mod:`service.errors`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.concurrency import run_in_threadpool

from .. import metrics
from ..auth import KeyCheck
from ..dataplane import DataPlane
from ..errors import ServiceError, bad_request
from ..settings import Settings
from ..wire.datatypes import DATATYPES
from ..wire.infer import InferInput, InferRequest, InferResponse, RequestedOutput
from . import inference_pb2 as pb
from . import inference_pb2_grpc as pb_grpc

log = logging.getLogger("service")

SERVICE = "inference.GRPCInferenceService"

#: The typed-contents field that carries each datatype (the protocol's table).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

#: RPCs that need no API key (their REST twins are the open probes).
OPEN_RPCS = frozenset({"ServerLive", "ServerReady"})

R = TypeVar("R")


class _RefusedError(Exception):
    """A refusal decided before the dataplane is asked (a status code and a message)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _status(exc: ServiceError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.grpc_code)


def _rpc(
    fn: Callable[[InferenceServicer, Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[InferenceServicer, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    """One RPC: the API key, the metrics (``route="grpc:<Rpc>"``, the status code's name)
    and every failure as a status code with its message."""
    name = fn.__name__
    route = f"grpc:{name}"

    @functools.wraps(fn)
    async def handler(
        self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext
    ) -> R:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if name not in OPEN_RPCS:
                self.authorize(context)
            return await fn(self, request, context)
        except ServiceError as exc:
            code = _status(exc)
            detail = exc.detail
        except _RefusedError as exc:
            code, detail = exc.code, exc.message
        except Exception:  # a bug: logged with its traceback, answered without details
            log.exception("gRPC %s failed", name)
            code, detail = grpc.StatusCode.INTERNAL, "internal error (logged by the server)"
        finally:
            metrics.REQUESTS.labels(route=route, method="GRPC", status=code.name).inc()
            metrics.LATENCY.labels(route=route).observe(time.perf_counter() - start)
        if code is grpc.StatusCode.UNAUTHENTICATED:
            metrics.REJECTED.labels(limit="auth").inc()
        await context.abort(code, detail)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return handler


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over a :class:`DataPlane`.

    Parameters
    ----------
    plane
        The app's dataplane.
    keys
        The API key check, or ``None`` for an open service.
    """

    def __init__(self, plane: DataPlane, keys: KeyCheck | None) -> None:
        self.plane = plane
        self.keys = keys

    def authorize(self, context: grpc.aio.ServicerContext) -> None:
        """Refuse (``UNAUTHENTICATED``) a call without ``authorization: Bearer <key>``
        metadata when keys are configured."""
        if self.keys is None:
            return
        offered = dict(context.invocation_metadata() or ()).get("authorization")
        if not self.keys.accepts(offered):
            what = "needs an API key: send metadata 'authorization: Bearer <key>'"
            if offered is not None:
                what = "has an API key that is not valid (expected 'authorization: Bearer <key>')"
            raise _RefusedError(grpc.StatusCode.UNAUTHENTICATED, f"this call {what}")

    # -- server -----------------------------------------------------------------------

    @_rpc
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    @_rpc
    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    # -- models -----------------------------------------------------------------------

    @_rpc
    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        ready = self.plane.model_ready(request.name, request.version or None)  # unknown: NOT_FOUND
        return pb.ModelReadyResponse(ready=ready)

    @_rpc
    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        meta = self.plane.model_metadata(request.name, request.version or None)
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensors(**t) for t in meta["inputs"]],
            outputs=[tensors(**t) for t in meta["outputs"]],
        )

    @_rpc
    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        plane = self.plane
        if plane.state is not None and not plane.state.ready:
            raise _RefusedError(
                grpc.StatusCode.UNAVAILABLE, "shutting down: send the call elsewhere"
            )
        name = request.model_name
        label = name if name in plane.models.names() else metrics.OTHER
        version = request.model_version or None
        raw = len(request.raw_input_contents) > 0  # answered raw when asked raw
        with metrics.observe_model(label), plane.slots.admit():
            plane.ready_model(name, version)  # before any decoding
            return await plane.infer_async(
                name,
                version,
                request.ByteSize(),
                lambda: request_of(request)[0],
                lambda response: response_of(response, raw),
            )

    # -- repository -------------------------------------------------------------------

    @_rpc
    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        models = self.plane.repository_index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[index(**m) for m in models])

    @_rpc
    async def RepositoryModelLoad(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        self.plane.check_model_control()
        params = {k: _repository_value(v) for k, v in request.parameters.items()}
        await run_in_threadpool(self.plane.load, request.model_name, params)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        self.plane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


# --------------------------------------------------------------------------- inference


def request_of(request: Any) -> tuple[InferRequest, bool]:
    """A ``ModelInferRequest`` as the wire layer's request, and whether its inputs came raw.

    Raises
    ------
    service.errors.BadRequestError
        naming the field: typed and raw contents mixed, a raw entry count or size that
        disagrees with the inputs, typed contents in another datatype's field or of the
        wrong count. Every size is compared before anything is converted.
    """
    raw = list(request.raw_input_contents)
    tensors = list(request.inputs)
    if raw and len(raw) != len(tensors):
        raise bad_request(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs; send one "
            "per input, in order",
            ["raw_input_contents"],
        )
    inputs: list[InferInput] = []
    for i, t in enumerate(tensors):
        loc: list[str | int] = ["inputs", i]
        if raw and t.HasField("contents"):
            raise bad_request(
                f"input {t.name[:60]!r} has typed contents while the request sends "
                "raw_input_contents; send one or the other",
                [*loc, "contents"],
            )
        params = {k: _infer_value(v) for k, v in t.parameters.items()}
        if raw:
            _check_raw_size(t, len(raw[i]), i)
            data: Any = raw[i]
        else:
            data = _typed(t, loc)
        inputs.append(InferInput(t.name, t.datatype, list(t.shape), data, params))
    outputs = [
        RequestedOutput(o.name, None, {k: _infer_value(v) for k, v in o.parameters.items()})
        for o in request.outputs
    ]
    infer_request = InferRequest(
        id=request.id or None,
        inputs=inputs,
        outputs=outputs or None,
        parameters={k: _infer_value(v) for k, v in request.parameters.items()},
        may_hold_bools=False,  # typed contents hold numbers of their field's kind
    )
    return infer_request, bool(raw)


def _check_raw_size(t: Any, size: int, i: int) -> None:
    """A raw entry's byte count against its input's shape and datatype (other faults of
    the shape or datatype are the codec's to name)."""
    dtype = DATATYPES.get(t.datatype)
    if dtype is None or any(d < 0 for d in t.shape):
        return
    expected = math.prod(t.shape) * dtype.itemsize
    if size != expected:
        raise bad_request(
            f"raw_input_contents[{i}] has {size} bytes, but input {t.name[:60]!r} of shape "
            f"{list(t.shape)} and datatype {t.datatype} takes {expected}",
            ["raw_input_contents", i],
        )


def _typed(t: Any, loc: list[str | int]) -> list[Any]:
    """An input's typed contents as a flat list (counted before it is converted)."""
    field = CONTENTS_FIELD.get(t.datatype)
    who = f"input {t.name[:60]!r}"
    if field is None or field == "bytes_contents":
        return []  # the wire layer refuses the datatype, naming it
    present = [f.name for f, _ in t.contents.ListFields()] if t.HasField("contents") else []
    others = [f for f in present if f != field]
    if others:
        raise bad_request(
            f"{who}: datatype {t.datatype} is carried in contents.{field}, got "
            f"contents.{others[0]}",
            [*loc, "contents"],
        )
    values = getattr(t.contents, field)
    count = math.prod(t.shape) if all(d >= 0 for d in t.shape) else -1
    if len(values) != count:
        raise bad_request(
            f"{who}: contents.{field} has {len(values)} values; shape {list(t.shape)} needs "
            f"{max(count, 0)}",
            [*loc, "contents", field],
        )
    return list(values)


def response_of(response: InferResponse, raw: bool) -> pb.ModelInferResponse:
    """The ``ModelInferResponse``: raw little-endian bytes when the request was raw (what
    ``tritonclient.grpc`` reads), typed contents otherwise."""
    answer = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    for out in response.outputs:
        arr = out.array
        tensor = answer.outputs.add(name=out.name, datatype=out.datatype, shape=list(arr.shape))
        if raw:
            le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            answer.raw_output_contents.append(le.tobytes())
        else:
            getattr(tensor.contents, CONTENTS_FIELD[out.datatype]).extend(arr.ravel().tolist())
    return answer


def _infer_value(p: Any) -> Any:
    """An ``InferParameter``'s value (``None`` when none of its fields is set)."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _repository_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


# --------------------------------------------------------------------------- health


class HealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health``: ``SERVING`` while the server is ready (as
    ``/v2/health/ready`` says), for the whole server (``""``) and for
    ``inference.GRPCInferenceService``; ``SERVICE_UNKNOWN`` for other names."""

    WATCH_INTERVAL = 1.0
    """Seconds between readiness checks while a ``Watch`` stream is open."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def _status(self, service: str) -> Any:
        if service not in ("", SERVICE):
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        if self.plane.ready():
            return health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: Any, context: Any) -> Any:
        status = self._status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: Any) -> Any:
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(self.WATCH_INTERVAL)


# --------------------------------------------------------------------------- server


def build_server(plane: DataPlane, settings: Settings, keys: KeyCheck | None) -> grpc.aio.Server:
    """A started-to-be gRPC server with both services, bound to ``--host:--grpc-port``.

    Messages over ``CNN_MAX_BODY_BYTES`` are refused (``RESOURCE_EXHAUSTED``) before they
    are parsed; responses are as large as the result needs. Every worker process binds
    the same port (``SO_REUSEPORT``), as uvicorn's workers share the HTTP one.

    Raises
    ------
    RuntimeError
        If the address cannot be bound.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane, keys), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(plane), server)
    address = f"{_host(settings.host)}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"gRPC: cannot listen on {address}")
    return server


def _host(host: str) -> str:
    """``host`` as a gRPC address part (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
