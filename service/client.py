"""A Python client for the service: numpy arrays in, numpy arrays out.

>>> import numpy as np
>>> from service.client import Client, ServiceError
>>> with Client("http://127.0.0.1:8000") as api:            # doctest: +SKIP
...     out, meta = api.conv2d_forward(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), padding=1)
...     out.shape, meta["flops"]
((1, 4, 8, 8), 13824)

Tensors travel as base64 of their little-endian bytes by default (``encoding="b64"``):
several times smaller and faster than JSON numbers, and exact. Arrays come back with
the dtype of the computation (float32 in, float32 out).

Every failure raises :class:`ServiceError`: a problem response from the server
(``status`` set, with its ``title``, ``detail`` and field ``errors``), and also a
network failure or timeout (``status`` is ``None``; the httpx exception is the
``__cause__``).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import httpx
import numpy as np
import orjson
import pybase64

from .wire.datatypes import DATATYPES, v2_name
from .wire.v1 import TakenB64, is_placeholder, take_long_b64

Encoding = Literal["list", "b64"]
IntOrPair = int | tuple[int, int]
Padding = int | tuple[int, int] | tuple[int, int, int, int] | str

_HEADER_LENGTH = "Inference-Header-Content-Length"
_JSON = {"Content-Type": "application/json"}


class ServiceError(Exception):
    """The service refused a request, or could not be reached.

    Attributes
    ----------
    status
        HTTP status, or ``None`` when no response arrived (connection error, timeout).
    title, detail
        The problem's summary and explanation.
    errors
        Field errors: ``[{"loc": [...], "msg": "..."}]``.
    problem
        The whole problem details document.
    """

    def __init__(self, status: int | None, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.title = str(problem.get("title", "Error"))
        self.detail = str(problem.get("detail", ""))
        self.errors: list[dict[str, Any]] = list(problem.get("errors") or [])
        prefix = f"{status} {self.title}" if status is not None else self.title
        super().__init__(f"{prefix}: {self.detail}" if self.detail else prefix)


class Client:
    """HTTP client for cnn-service; a context manager.

    Parameters
    ----------
    base_url
        Where the service listens, e.g. ``"http://127.0.0.1:8000"``.
    timeout
        Seconds allowed for connecting, sending, and each wait for data.
    encoding
        ``"b64"`` (default) or ``"list"``: how tensors travel, both ways.
    http
        An ``httpx.Client`` to send requests through instead of a new one (custom
        transports, proxies, tests against an in-process app). The caller closes it.
    api_key
        Sent as ``Authorization: Bearer <api_key>`` with every request, for a service
        started with ``CNN_API_KEYS``; also set on ``http`` when that is given.
    **httpx_options
        Passed to ``httpx.Client`` when ``http`` is not given (headers, event_hooks, ...).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 60.0,
        encoding: Encoding = "b64",
        http: httpx.Client | None = None,
        api_key: str | None = None,
        **httpx_options: Any,
    ) -> None:
        if encoding not in ("list", "b64"):
            raise ValueError(f"encoding must be 'list' or 'b64', got {encoding!r}")
        self.encoding: Encoding = encoding
        self._owns_http = http is None
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout, **httpx_options)
        if api_key is not None:
            self._http.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        """Close the connection pool (unless the ``http`` client was passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- operations --------------------------------------------------------------------

    def conv2d_forward(
        self,
        x: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None = None,
        *,
        stride: IntOrPair = 1,
        padding: Padding = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Convolution forward (see :func:`cnncore.conv2d_forward`).

        ``x`` (N, C, H, W), ``w`` (F, C // groups, KH, KW), ``b`` (F,) or None.
        Returns ``out`` (N, F, H', W') and ``meta``.
        """
        params = _conv_params(stride, padding, dilation, groups)
        r = self._post("/v1/conv2d/forward", {**self._tensors(x=x, w=w, b=b), **params})
        return _decode(r["out"], r["meta"]), r["meta"]

    def conv2d_backward(
        self,
        x: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None,
        dout: np.ndarray,
        *,
        stride: IntOrPair = 1,
        padding: Padding = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
        """Convolution backward: ``dx`` (x's shape), ``dw`` (w's shape), ``db`` ((F,), or
        None when ``b`` is None) and ``meta``, given ``dout`` (N, F, H', W')."""
        params = _conv_params(stride, padding, dilation, groups)
        r = self._post("/v1/conv2d/backward", {**self._tensors(x=x, w=w, b=b, dout=dout), **params})
        m = r["meta"]
        return _decode(r["dx"], m), _decode(r["dw"], m), _decode_optional(r["db"], m), m

    def pool2d_forward(
        self,
        x: np.ndarray,
        *,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        mode: Literal["max", "avg"] = "max",
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Max or average pooling forward; ``x`` (N, C, H, W). Returns ``out`` and ``meta``."""
        params = _pool_params(kernel_size, stride, padding, mode, ceil_mode, count_include_pad)
        r = self._post("/v1/pool2d/forward", {**self._tensors(x=x), **params})
        return _decode(r["out"], r["meta"]), r["meta"]

    def pool2d_backward(
        self,
        x: np.ndarray,
        dout: np.ndarray,
        *,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        mode: Literal["max", "avg"] = "max",
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Pooling backward: ``dx`` (x's shape) and ``meta``, given ``dout`` (N, C, H', W')."""
        params = _pool_params(kernel_size, stride, padding, mode, ceil_mode, count_include_pad)
        r = self._post("/v1/pool2d/backward", {**self._tensors(x=x, dout=dout), **params})
        return _decode(r["dx"], r["meta"]), r["meta"]

    def linear_forward(
        self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Fully connected forward: ``x`` (N, D1, ..., Dk), ``w`` (D, M), ``b`` (M,) or None.
        Returns ``out`` (N, M) and ``meta``."""
        r = self._post("/v1/linear/forward", self._tensors(x=x, w=w, b=b))
        return _decode(r["out"], r["meta"]), r["meta"]

    def linear_backward(
        self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, dout: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
        """Fully connected backward: ``dx`` (x's shape), ``dw`` (D, M), ``db`` ((M,) or
        None) and ``meta``, given ``dout`` (N, M)."""
        r = self._post("/v1/linear/backward", self._tensors(x=x, w=w, b=b, dout=dout))
        m = r["meta"]
        return _decode(r["dx"], m), _decode(r["dw"], m), _decode_optional(r["db"], m), m

    def shapes(
        self, input_shape: Sequence[int], layers: Sequence[dict[str, Any]]
    ) -> dict[str, Any]:
        """Per-layer output shapes, parameters and FLOPs of a stack of layers (no arrays)."""
        return self._post("/v1/shapes", {"input_shape": list(input_shape), "layers": list(layers)})

    def network_forward(
        self,
        x: np.ndarray,
        layers: Sequence[dict[str, Any]],
        loss: dict[str, Any] | None = None,
        *,
        return_activations: bool = False,
        return_probabilities: bool = False,
    ) -> dict[str, Any]:
        """Run a stack of layers forward (``POST /v1/network/forward``).

        ``layers`` are dicts as on the wire, with arrays for ``w`` and ``b``:
        ``{"type": "conv2d", "w": w, "b": b, "padding": 1}``, ``{"type": "relu"}``,
        ``{"type": "pool2d", "kernel_size": 2}``, ``{"type": "flatten"}``,
        ``{"type": "linear", "w": w, "b": b}``. ``loss`` is
        ``{"type": "softmax_cross_entropy", "y": labels}`` or ``{"type": "mse", "target": t}``.

        Returns the response with its tensors as arrays: ``out``, ``loss`` (float or
        None), ``meta``, and when present ``probabilities``, ``predictions`` and
        ``activations`` (a list of arrays).
        """
        r = self._post(
            "/v1/network/forward",
            {
                **self._network(x, layers, loss),
                "return_activations": return_activations,
                "return_probabilities": return_probabilities,
            },
        )
        return _decode_network(r)

    def network_backward(
        self,
        x: np.ndarray,
        layers: Sequence[dict[str, Any]],
        loss: dict[str, Any] | None = None,
        dout: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Gradients of a stack of layers (``POST /v1/network/backward``), from ``loss``
        or from ``dout`` (the gradient of the network output): exactly one of them.

        Returns ``loss`` (float or None), ``dx`` (x's shape), ``grads`` (one dict per
        layer: ``{"dw": array, "db": array or None}`` for conv2d and linear, ``{}``
        otherwise) and ``meta``.
        """
        payload = self._network(x, layers, loss)
        if dout is not None:
            payload["dout"] = self._tensor(np.asarray(dout))
        return _decode_network(self._post("/v1/network/backward", payload))

    def check(
        self,
        op: Literal["conv2d", "pool2d", "linear"],
        x: np.ndarray,
        claimed: dict[str, np.ndarray],
        *,
        w: np.ndarray | None = None,
        b: np.ndarray | None = None,
        dout: np.ndarray | None = None,
        params: dict[str, Any] | None = None,
        tolerance: float | None = None,
    ) -> dict[str, Any]:
        """Check claimed answers for one layer (``POST /v1/check``).

        ``claimed`` maps any of ``out``, ``dx``, ``dw``, ``db`` to arrays (gradients
        need ``dout``); ``params`` are the op's hyper-parameters. Returns
        ``{"passed", "tolerance", "tensors": {name: verdict}}``, each verdict with
        ``passed``, ``max_rel_error``, ``max_abs_error``, ``worst_index``, ``expected``,
        ``got``, ``expected_shape``, ``got_shape`` and ``message``.
        """
        return self._post(
            "/v1/check",
            {
                "op": op,
                "params": params or {},
                **self._tensors(x=x, w=w, b=b, dout=dout),
                "claimed": {k: self._tensor(np.asarray(v)) for k, v in claimed.items()},
                "tolerance": tolerance,
            },
        )

    def info(self) -> dict[str, Any]:
        """Versions, BLAS and the limits in force."""
        return self._get("/v1/info")

    def health(self, probe: Literal["live", "ready"] = "ready") -> dict[str, Any]:
        """``{"status": "ok"}``; a server that is shutting down raises a 503 ServiceError."""
        return self._get(f"/health/{probe}")

    # -- models (Open Inference Protocol, binary tensors on the wire) --------------------

    def infer(
        self,
        model: str,
        x: np.ndarray,
        *,
        labels: np.ndarray | Sequence[int] | None = None,
        target: np.ndarray | None = None,
        out_grad: np.ndarray | None = None,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run model ``model`` of the repository on ``x`` (``POST /v2/models/{model}/infer``).

        Parameters
        ----------
        model
            The model's name.
        x : ndarray, the model's input shape (any batch size where it says -1)
            float32 or float64, the model's datatype (other numbers are sent as float64).
        labels : int array, shape (N,), optional
            Class indices: the loss is the mean softmax cross-entropy.
        target : ndarray, the output's shape, optional
            The loss is the mean squared error.
        out_grad : ndarray, the output's shape, optional
            dL/d``out`` given directly. At most one of ``labels``, ``target``, ``out_grad``.
        outputs
            Names to answer: ``"out"``, ``"loss"``, ``"probabilities"``, ``"grad/x"``,
            ``"grad/<parameter>"`` (``"grad/0.w"``), ``"grad/*"``. Default: ``out``, plus
            ``loss`` and ``probabilities`` with a loss input.

        Returns
        -------
        dict
            Output name -> array (the model's dtype; ``loss`` has shape ``(1,)``).

        Raises
        ------
        ServiceError
            The server's error (``detail`` says which input or output is at fault).
        """
        x = np.asarray(x)
        dtype = x.dtype if x.dtype.name in ("float32", "float64") else np.dtype(np.float64)
        tensors: list[tuple[str, np.ndarray]] = [("x", x.astype(dtype, copy=False))]
        if labels is not None:
            tensors.append(("labels", np.asarray(labels, dtype=np.int64)))
        for name, arr in (("target", target), ("out_grad", out_grad)):
            if arr is not None:
                tensors.append((name, np.asarray(arr, dtype=dtype)))
        specs, chunks = [], []
        for name, arr in tensors:
            le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            specs.append(
                {
                    "name": name,
                    "shape": list(arr.shape),
                    "datatype": v2_name(arr.dtype),
                    "parameters": {"binary_data_size": le.nbytes},
                }
            )
            chunks.append(le.data)
        request: dict[str, Any] = {"inputs": specs, "parameters": {"binary_data_output": True}}
        if outputs is not None:
            request["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
        header = orjson.dumps(request)
        response = self._request(
            "POST",
            f"/v2/models/{quote(model, safe='')}/infer",
            b"".join([header, *chunks]),
            {
                "Content-Type": "application/octet-stream",
                _HEADER_LENGTH: str(len(header)),
            },
        )
        return _decode_v2(response)

    def model_metadata(self, model: str) -> dict[str, Any]:
        """``GET /v2/models/{model}``: name, versions, platform, inputs and outputs."""
        return self._get(f"/v2/models/{quote(model, safe='')}")

    def repository_index(self) -> list[dict[str, Any]]:
        """``POST /v2/repository/index``: every model with its state and reason."""
        index: list[dict[str, Any]] = orjson.loads(
            self._request("POST", "/v2/repository/index", b"{}", _JSON).content
        )
        return index

    # -- transport ---------------------------------------------------------------------

    def _tensor(self, arr: np.ndarray) -> dict[str, Any]:
        """Wire form of an array: ``{shape, dtype, b64}`` or ``{shape, dtype, data}``.

        float32 and float64 keep their dtype; other numeric arrays go as float64, the
        type the service would convert them to.
        """
        name = arr.dtype.name if arr.dtype.name in ("float32", "float64") else "float64"
        wire: dict[str, Any] = {"shape": list(arr.shape), "dtype": name}
        if self.encoding == "b64":
            le = np.ascontiguousarray(arr, dtype=np.dtype(name).newbyteorder("<"))
            wire["b64"] = pybase64.b64encode(le.data).decode("ascii")
        else:  # orjson writes the numbers straight from the array
            wire["data"] = np.ascontiguousarray(arr, dtype=name).ravel()
        return wire

    def _tensors(self, **arrays: np.ndarray | None) -> dict[str, Any]:
        """Request fields for ``arrays`` (``None`` stays ``None``), plus the ``encoding``
        the response tensors should use."""
        fields = {k: None if v is None else self._tensor(np.asarray(v)) for k, v in arrays.items()}
        return {**fields, "encoding": self.encoding}

    def _network(
        self, x: np.ndarray, layers: Sequence[dict[str, Any]], loss: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Request fields of a network: arrays inside layers and the loss as wire tensors."""

        def wire(fields: dict[str, Any]) -> dict[str, Any]:
            return {
                k: self._tensor(v) if isinstance(v, np.ndarray) and k != "y" else v
                for k, v in fields.items()
            }

        if loss is not None and isinstance(loss.get("y"), np.ndarray):
            loss = {**loss, "y": loss["y"].tolist()}
        return {
            **self._tensors(x=x),
            "layers": [wire(dict(layer)) for layer in layers],
            "loss": None if loss is None else wire(dict(loss)),
        }

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` (top-level ``None`` values left out, meaning "the default")
        and return the decoded JSON body; non-2xx responses raise :class:`ServiceError`."""
        body = {k: v for k, v in payload.items() if v is not None}
        return self._send("POST", path, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))

    def _get(self, path: str) -> dict[str, Any]:
        return self._send("GET", path, None)

    def _send(self, method: str, path: str, content: bytes | None) -> dict[str, Any]:
        headers = _JSON if content is not None else {}
        result: dict[str, Any] = loads(self._request(method, path, content, headers).content)
        return result

    def _request(
        self, method: str, path: str, content: bytes | None, headers: dict[str, str]
    ) -> httpx.Response:
        """Send a request; a failure to connect or a non-2xx answer raises ServiceError."""
        try:
            response = self._http.request(method, path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            problem = {"title": type(exc).__name__, "detail": str(exc) or repr(exc), "errors": []}
            raise ServiceError(None, problem) from exc
        if not response.is_success:
            raise ServiceError(response.status_code, _problem(response))
        return response


def loads(content: bytes) -> Any:
    """A JSON response body; each long ``b64`` value comes back as its decoded ``bytes``,
    taken straight from ``content`` (:func:`service.tensors.take_long_b64`: parsing 5.6 MB
    of base64 as a JSON string costs orjson more than the rest of the response)."""
    body, taken = take_long_b64(content)
    doc = orjson.loads(body)
    return _resolve(doc, taken) if taken else doc


def _resolve(node: Any, taken: dict[str, TakenB64]) -> Any:
    """Put the decoded bytes of ``taken`` in place of their placeholders in ``node``."""
    if isinstance(node, dict):
        if is_placeholder(node.get("b64")) and node["b64"] in taken:
            node["b64"] = taken[node["b64"]].raw
        else:
            for value in node.values():
                _resolve(value, taken)
    elif isinstance(node, list) and node and isinstance(node[0], dict | list):
        for value in node:
            _resolve(value, taken)
    return node


def _decode(wire: Any, meta: dict[str, Any]) -> np.ndarray:
    """A response tensor as an array of the computation's dtype (``meta["dtype"]``)."""
    if isinstance(wire, dict) and "b64" in wire:
        le = np.dtype(wire["dtype"]).newbyteorder("<")
        b64 = wire["b64"]
        raw = b64 if isinstance(b64, bytes) else pybase64.b64decode(b64)  # bytes: from loads
        flat = np.frombuffer(raw, dtype=le)
        return flat.reshape(wire["shape"]).astype(le.newbyteorder("="))  # a writable copy
    if isinstance(wire, dict):
        return np.asarray(wire["data"], dtype=wire["dtype"]).reshape(wire["shape"])
    return np.asarray(wire, dtype=meta["dtype"])


def _decode_v2(response: httpx.Response) -> dict[str, np.ndarray]:
    """The outputs of an inference response, binary or JSON, as writable arrays."""
    body = response.content
    length = response.headers.get(_HEADER_LENGTH)
    size = int(length) if length is not None else len(body)
    header = orjson.loads(body[:size])
    offset = size
    result: dict[str, np.ndarray] = {}
    for out in header["outputs"]:
        dtype = DATATYPES[out["datatype"]]
        nbytes = (out.get("parameters") or {}).get("binary_data_size")
        if nbytes is None:
            result[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
            continue
        flat = np.frombuffer(body, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
        result[out["name"]] = flat.reshape(out["shape"]).astype(dtype.newbyteorder("="))
        offset += nbytes
    return result


def _decode_optional(wire: Any, meta: dict[str, Any]) -> np.ndarray | None:
    return None if wire is None else _decode(wire, meta)


def _decode_network(r: dict[str, Any]) -> dict[str, Any]:
    """A network response with its tensors as arrays."""
    m = r["meta"]
    result = dict(r)
    for name in ("out", "dx", "probabilities"):
        if name in r:
            result[name] = _decode(r[name], m)
    if "activations" in r:
        result["activations"] = [_decode(a, m) for a in r["activations"]]
    if "grads" in r:
        result["grads"] = [{k: _decode_optional(v, m) for k, v in g.items()} for g in r["grads"]]
    return result


def _problem(response: httpx.Response) -> dict[str, Any]:
    """The problem document of an error response, or one made up from a non-JSON body."""
    try:
        problem = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        problem = None
    if isinstance(problem, dict):
        return problem
    return {
        "type": "about:blank",
        "title": response.reason_phrase or "Error",
        "status": response.status_code,
        "detail": response.text[:300],
        "errors": [],
    }


def _conv_params(
    stride: IntOrPair, padding: Padding, dilation: IntOrPair, groups: int
) -> dict[str, Any]:
    return {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}


def _pool_params(
    kernel_size: IntOrPair,
    stride: IntOrPair | None,
    padding: IntOrPair,
    mode: str,
    ceil_mode: bool,
    count_include_pad: bool,
) -> dict[str, Any]:
    return {
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": padding,
        "mode": mode,
        "ceil_mode": ceil_mode,
        "count_include_pad": count_include_pad,
    }
