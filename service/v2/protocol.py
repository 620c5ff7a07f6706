"""The Open Inference Protocol mapped onto a model: which inputs, which outputs, what to
compute, and the metadata that says so.

Inputs: ``x`` (the model's input) and at most one upstream signal for gradients:
``labels`` (INT64 or INT32, shape ``[N]``: mean softmax cross-entropy), ``target``
(the output's shape: mean squared error) or ``out_grad`` (dL/d``out``). Outputs:
``out``, ``loss`` (with labels or target), ``probabilities`` (with labels),
``grad/x``, ``grad/<parameter>`` and ``grad/*`` (every gradient; only with a signal).

Everything is checked from shapes before anything is computed: datatypes, shapes
against the model, label ranges, the requested outputs, and the FLOP and memory
budgets (``graph.infer``). Gradients are computed only for what was asked
(``graph.backward(..., wrt=...)``). This module never does maths itself: it calls the
model's graph and :mod:`cnncore.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import cnncore

from ..compute import check_budget
from ..models import Model
from ..problems import ApiError
from ..settings import Settings
from .binary import InputReader, OutputTensor, WireTensor, bad_request

SIGNALS = ("labels", "target", "out_grad")
LOSS_SIGNALS = ("labels", "target")
LABEL_DATATYPES = ("INT64", "INT32")
GRAD = "grad/"
ALL_GRADS = "grad/*"
MAX_INPUTS = 8
MAX_OUTPUTS = 4096
#: Request parameters of Triton's that this service cannot honour: refused, not ignored.
UNSUPPORTED_PARAMETERS = ("classification", "shared_memory_region")


def model_metadata(model: Model) -> dict[str, Any]:
    """``GET /v2/models/{model}``: every input the model accepts and output it can answer."""
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


@dataclass
class Plan:
    """A request checked against its model and the budgets: ready to compute."""

    model: Model
    x: np.ndarray
    signal: str | None
    signal_value: np.ndarray | None
    outputs: list[tuple[str, bool]]  # (name, as binary), in the order asked
    wrt: list[str]  # gradients to compute: "x" and parameter names
    request_id: str | None


def plan_request(
    model: Model,
    header: dict[str, Any],
    binary: memoryview,
    settings: Settings,
    may_hold_bools: bool = True,
) -> Plan:
    """Check an inference request against ``model`` and the budgets.

    Raises
    ------
    ApiError
        400 naming the input or output at fault, 413 over a limit (the message says how
        many samples of this shape would fit).
    """
    request_id = header.get("id")
    if "id" in header and not isinstance(request_id, str):
        raise bad_request("id must be a string", ["id"])
    params = _object(header.get("parameters", {}), "parameters")
    _refuse_unsupported(params, ["parameters"])
    tensors = _read_inputs(header.get("inputs"), binary, settings.max_elements, may_hold_bools)
    x = _x(model, tensors)
    try:
        info = model.graph.infer(x.shape)
    except cnncore.CnnError as exc:
        raise bad_request(f"input 'x': {exc}", ["inputs", "x"]) from None
    out_shape = tuple(info.output_shape)
    signal, value = _signal(model, tensors, out_shape, x.shape[0])
    outputs = _outputs(model, header.get("outputs", ALL_DEFAULT), params, signal)
    wrt = [name[len(GRAD) :] for name, _ in outputs if name.startswith(GRAD)]
    passes = 3 if wrt else 1  # a backward pass costs about two forward passes more
    flops = passes * info.total_flops
    work = info.working_bytes(x.itemsize, backward=bool(wrt))
    try:
        check_budget(settings, flops, work, ["inputs", "x"])
    except ApiError as exc:
        raise _batch_hint(exc, x.shape[0], flops, work, settings) from None
    return Plan(model, x, signal, value, outputs, wrt, request_id)


def compute(plan: Plan) -> list[OutputTensor]:
    """Run the plan's forward (and backward) pass; the outputs asked for, in order."""
    model = plan.model
    if plan.signal is None and not plan.wrt:  # plain inference: the model's fastest engine
        out = model.predict(plan.x)  # without a signal "out" is the only output there is
        return [OutputTensor(name, out, binary) for name, binary in plan.outputs]
    out, cache = model.graph.forward(plan.x, backward=bool(plan.wrt))
    results: dict[str, np.ndarray] = {"out": out}
    dout = plan.signal_value
    if plan.signal == "labels":
        loss, dout = cnncore.softmax_cross_entropy(out, plan.signal_value)
        results["probabilities"] = np.exp(cnncore.log_softmax(out))
        results["loss"] = np.array([loss + 0.0], dtype=model.dtype)  # -0.0 reads as 0.0
    elif plan.signal == "target":
        loss, dout = cnncore.mse_loss(out, plan.signal_value)
        results["loss"] = np.array([loss], dtype=model.dtype)
    if plan.wrt:
        grads = model.graph.backward(dout, cache, wrt=plan.wrt)
        results.update({GRAD + name: grads[name] for name in plan.wrt})
    return [OutputTensor(name, results[name], binary) for name, binary in plan.outputs]


def response_head(plan: Plan) -> dict[str, Any]:
    """The response's members other than ``outputs``."""
    head: dict[str, Any] = {"model_name": plan.model.name, "model_version": plan.model.version}
    if plan.request_id is not None:
        head["id"] = plan.request_id
    return head


# --------------------------------------------------------------------------- inputs


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{where} must be an object", [where])
    return value


def _refuse_unsupported(params: dict[str, Any], loc: list[str | int]) -> None:
    for key in UNSUPPORTED_PARAMETERS:
        if key in params:
            raise bad_request(f"parameter {key!r} is not supported by this server", [*loc, key])


def _read_inputs(
    specs: Any, binary: memoryview, max_elements: int, may_hold_bools: bool
) -> dict[str, WireTensor]:
    if not isinstance(specs, list) or not specs:
        raise bad_request("inputs must be a non-empty list", ["inputs"])
    if len(specs) > MAX_INPUTS:
        raise bad_request(f"inputs has {len(specs)} entries; a model takes at most 2", ["inputs"])
    reader = InputReader(binary, max_elements, may_hold_bools)
    tensors: dict[str, WireTensor] = {}
    for i, spec in enumerate(specs):
        tensor = reader.read(spec, i)
        if tensor.name in tensors:
            raise bad_request(f"input {tensor.name!r} is given twice", ["inputs", i, "name"])
        tensors[tensor.name] = tensor
    reader.finish()
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


def _shape_text(shape: Any) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _float_input(t: WireTensor, model: Model) -> np.ndarray:
    if t.datatype != model.datatype:
        raise bad_request(
            f"input {t.name!r} has datatype {t.datatype}; model {model.name!r} computes in "
            f"{model.datatype}",
            ["inputs", t.name, "datatype"],
        )
    if not np.isfinite(t.array).all():
        raise bad_request(f"input {t.name!r} holds NaN or infinity", ["inputs", t.name])
    return t.array


def _x(model: Model, tensors: dict[str, WireTensor]) -> np.ndarray:
    if "x" not in tensors:
        raise bad_request("input 'x' is missing", ["inputs"])
    t = tensors["x"]
    want = model.input_shape
    fits = len(t.shape) == len(want) and all(
        w in (-1, s) for w, s in zip(want, t.shape, strict=True)
    )
    if not fits or 0 in t.shape:
        raise bad_request(
            f"input 'x' has shape {_shape_text(t.shape)}; model {model.name!r} takes "
            f"{_shape_text(want)} (-1: any size from 1)",
            ["inputs", "x", "shape"],
        )
    return _float_input(t, model)


def _signal(
    model: Model, tensors: dict[str, WireTensor], out_shape: tuple[int, ...], batch: int
) -> tuple[str | None, np.ndarray | None]:
    name = next((n for n in SIGNALS if n in tensors), None)
    if name is None:
        return None, None
    t = tensors[name]
    loc: list[str | int] = ["inputs", name]
    if name != "labels":
        if t.shape != out_shape:
            raise bad_request(
                f"input {name!r} has shape {_shape_text(t.shape)}; the output for this x has "
                f"shape {_shape_text(out_shape)}",
                [*loc, "shape"],
            )
        return name, _float_input(t, model)
    classes = model.classes
    if classes is None:
        raise bad_request(
            f"input 'labels' needs an output (N, classes); model {model.name!r} answers "
            f"{_shape_text(model.output_shape)} (send target or out_grad)",
            loc,
        )
    if t.datatype not in LABEL_DATATYPES:
        raise bad_request(
            f"input 'labels' has datatype {t.datatype}; send INT64 or INT32", [*loc, "datatype"]
        )
    if t.shape != (batch,):
        raise bad_request(
            f"input 'labels' has shape {_shape_text(t.shape)}; x has {batch} samples, so "
            f"labels has shape [{batch}]",
            [*loc, "shape"],
        )
    labels = t.array.astype(np.int64, copy=False)
    if labels.min() < 0 or labels.max() >= classes:
        bad = int(labels[(labels < 0) | (labels >= classes)][0])
        raise bad_request(
            f"input 'labels' holds {bad}; labels are class indices in [0, {classes})", loc
        )
    return name, labels


# --------------------------------------------------------------------------- outputs


ALL_DEFAULT: Any = object()
"""``outputs`` left out of the request (an explicit ``null`` is refused, as the schema says)."""


def _outputs(
    model: Model, specs: Any, params: dict[str, Any], signal: str | None
) -> list[tuple[str, bool]]:
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise bad_request(
            "parameters.binary_data_output must be true or false",
            ["parameters", "binary_data_output"],
        )
    if specs is ALL_DEFAULT:
        names = ["out"]
        if signal in LOSS_SIGNALS:
            names.append("loss")
        if signal == "labels":
            names.append("probabilities")
        return [(n, binary_default) for n in names]
    if not isinstance(specs, list) or len(specs) > MAX_OUTPUTS:
        raise bad_request(f"outputs must be a list of at most {MAX_OUTPUTS} entries", ["outputs"])
    asked: set[str] = set()
    chosen: dict[str, bool] = {}  # an output grad/* also names keeps its own binary_data
    for i, spec in enumerate(specs):
        name, binary = _output_spec(spec, i, binary_default)
        if name in asked:
            raise bad_request(f"output {name[:60]!r} is asked for twice", ["outputs", i, "name"])
        asked.add(name)
        for n in _expand(model, name, signal, i):
            if name != ALL_GRADS or n not in chosen:
                chosen[n] = binary
    return list(chosen.items())


def _output_spec(spec: Any, i: int, binary_default: bool) -> tuple[str, bool]:
    loc: list[str | int] = ["outputs", i]
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise bad_request(f"outputs[{i}] must be an object with a 'name'", loc)
    params = spec.get("parameters", {})
    if not isinstance(params, dict):
        raise bad_request(f"outputs[{i}].parameters must be an object", [*loc, "parameters"])
    _refuse_unsupported(params, [*loc, "parameters"])
    binary = params.get("binary_data", binary_default)
    if not isinstance(binary, bool):
        raise bad_request(
            f"outputs[{i}].parameters.binary_data must be true or false",
            [*loc, "parameters", "binary_data"],
        )
    return spec["name"], binary


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


def _batch_hint(exc: ApiError, batch: int, flops: int, work: int, settings: Settings) -> ApiError:
    """The budget's 413, saying how many samples of this shape would fit (both budgets
    grow about linearly with the batch)."""
    fit = min(
        int(batch * settings.max_flops // max(flops, 1)),
        batch * settings.max_request_bytes // max(work, 1),
    )
    if fit >= 1:
        hint = f"the batch of {batch} is too large for the model: send at most about {fit}"
    else:
        hint = "even one sample of this shape is over the limit for the model"
    return ApiError(413, f"{exc.detail}; {hint}", exc.errors, exc.headers)
