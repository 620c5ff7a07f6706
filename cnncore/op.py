"""What a graph operation is: shape rule, forward, backward and memory, in one record.

Every node of a :class:`cnncore.graph.Graph` names an operation registered in
:data:`cnncore.graph.OPS`. An :class:`Op` bundles the stateless pieces the engine
calls, in the CS231n style of the layer functions (``forward -> (out, cache)``,
``backward(dout, cache) -> grads``):

- ``attrs(raw) -> dict``: attributes checked and completed with their defaults,
  once, when the graph is built (a bad attribute is an error naming it);
- ``shape(input_shapes, attrs) -> (out_shape, flops)``: shapes only, no arrays, so a
  request can be checked and budgeted before anything is computed;
- ``forward(inputs, attrs) -> (out, cache)`` and
  ``backward(dout, cache, needs) -> (grad per input or None, ...)``, where ``needs``
  says which inputs want a gradient (the others may be skipped and returned as None);
- ``memory(input_shapes, out_shape, attrs, itemsize) -> Memory``: bytes the pass
  allocates beyond the output and the input gradients, for the working-memory bound;
- ``per_sample(input_shapes, batched, attrs) -> bool``: whether the op treats the
  samples of a batch independently, given which inputs carry the batch on axis 0
  (``batched``; the others are parameters or computed from them), so that the graph
  may run parts of the batch apart (:meth:`cnncore.graph.Graph.infer`). None: never.

Ops never write into their inputs (parameters may be read-only arrays shared by
every request), except through ``overwrite``: an optional ``infer`` that writes its
output into its first input, which the engine calls only for an activation that no
other tensor shares memory with and no later node reads (a ReLU after a convolution).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import short_repr
from .errors import ParameterError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Memory:
    """Bytes one node allocates besides its output and its inputs' gradients.

    Attributes
    ----------
    cache
        Held from the forward pass until the node's backward pass (an im2col
        matrix, say); references to arrays that exist anyway count nothing.
    forward
        Temporaries of the forward pass, freed when it returns.
    backward
        Temporaries of the backward pass, freed when it returns.
    """

    cache: int = 0
    forward: int = 0
    backward: int = 0


def no_memory(input_shapes: Sequence[Shape], out_shape: Shape, attrs: Any, itemsize: int) -> Memory:
    """The :class:`Memory` of an op whose only allocations are its output and gradients."""
    return Memory()


def no_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The ``attrs`` of an op without attributes."""
    return {}


@dataclass(frozen=True)
class Op:
    """One graph operation (see the module docstring for each callable's contract).

    Attributes
    ----------
    name
        The op's name in :data:`cnncore.graph.OPS` and in ``Node.op``.
    inputs
        Names of the inputs, for messages (``("x", "w", "b")``); with ``variadic``
        the single name stands for every input.
    optional
        How many trailing inputs may be left out (``b`` of ``conv2d``: 1).
    attr_names
        The attributes the op accepts; any other is an error.
    variadic
        Any number (at least one) of inputs, all of the same kind (``concat``).
    infer
        Optional ``infer(inputs, attrs) -> out``: the forward output (the same bits)
        without what only the backward pass needs, for ``forward(x, backward=False)``.
    per_sample
        Optional ``per_sample(input_shapes, batched, attrs) -> bool`` (module docstring).
    overwrite
        Optional ``overwrite(inputs, attrs) -> out``: ``infer`` with the output written
        into ``inputs[0]`` when it fits there, returned (module docstring).
    """

    name: str
    inputs: tuple[str, ...]
    attrs: Callable[[Mapping[str, Any]], dict[str, Any]]
    shape: Callable[[Sequence[Shape], dict[str, Any]], tuple[Shape, int]]
    forward: Callable[[Sequence[np.ndarray], dict[str, Any]], tuple[np.ndarray, Any]]
    backward: Callable[[np.ndarray, Any, tuple[bool, ...]], tuple[np.ndarray | None, ...]]
    memory: Callable[[Sequence[Shape], Shape, dict[str, Any], int], Memory] = no_memory
    infer: Callable[[Sequence[np.ndarray], dict[str, Any]], np.ndarray] | None = None
    per_sample: Callable[[Sequence[Shape], tuple[bool, ...], dict[str, Any]], bool] | None = None
    overwrite: Callable[[Sequence[np.ndarray], dict[str, Any]], np.ndarray] | None = None
    attr_names: tuple[str, ...] = ()
    optional: int = 0
    variadic: bool = False

    def arity_error(self, count: int) -> str | None:
        """Why ``count`` inputs do not fit this op, or None when they do."""
        if self.variadic:
            return None if count >= 1 else f"{self.name} needs at least one input, got none"
        low, high = len(self.inputs) - self.optional, len(self.inputs)
        if low <= count <= high:
            return None
        names = ", ".join(self.inputs[:low]) + "".join(f"[, {n}]" for n in self.inputs[low:])
        return f"{self.name} takes inputs ({names}), got {count}"


# --------------------------------------------------------------------------- per-sample rules


def first_only(shapes: Sequence[Shape], batched: tuple[bool, ...], attrs: Any) -> bool:
    """``per_sample`` of an op that maps each sample of its first input on its own, with
    parameters for the other inputs (a convolution, a pooling, an activation)."""
    return batched[0] and not any(batched[1:])


def broadcast_per_sample(shapes: Sequence[Shape], batched: tuple[bool, ...], attrs: Any) -> bool:
    """``per_sample`` of a broadcasting elementwise op: every batched input lines up
    with the output's axis 0, and no parameter spreads its own axis 0 over the batch."""
    rank = max(len(s) for s in shapes)
    return all(
        len(s) == rank if b else (len(s) < rank or s[0] == 1)
        for s, b in zip(shapes, batched, strict=True)
    )


# --------------------------------------------------------------------------- attribute helpers


def attr_float(value: Any, name: str, *, allow_none: bool = False) -> float | None:
    """A finite real attribute (``epsilon``, ``alpha``); booleans and strings are refused.

    Raises
    ------
    ParameterError
        If ``value`` is not a finite real number (or None when ``allow_none``).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        kind = "a finite number or None" if allow_none else "a finite number"
        raise ParameterError(f"{name} must be {kind}, got {short_repr(value)}", arg=name)
    return float(value)


def attr_bool(value: Any, name: str) -> bool:
    """A flag given as a bool or as ONNX's integer 0/1.

    Raises
    ------
    ParameterError
        For anything else (2, "yes", None...).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise ParameterError(f"{name} must be true/false (or 0/1), got {short_repr(value)}", arg=name)


def attr_ints(value: Any, name: str) -> tuple[int, ...]:
    """A sequence of integers (``shape``, ``pads``, ``axes``); booleans are refused.

    Raises
    ------
    ParameterError
        If ``value`` is not a sequence of integers.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise ParameterError(
            f"{name} must be a sequence of integers, got {short_repr(value)}", arg=name
        )
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Integral):
            raise ParameterError(
                f"{name}[{i}] must be an integer, got {short_repr(v)} ({type(v).__name__})",
                arg=name,
            )
        out.append(int(v))
    return tuple(out)


def attr_axis(axis: Any, ndim: int, name: str = "axis", *, end_ok: bool = False) -> int:
    """Resolve a possibly negative axis of an ``ndim``-D tensor (``end_ok``: ``ndim`` too).

    Raises
    ------
    ParameterError
        If ``axis`` is not an integer in ``[-ndim, ndim)`` (``[-ndim, ndim]`` with ``end_ok``).
    """
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ParameterError(f"{name} must be an integer, got {short_repr(axis)}", arg=name)
    axis = int(axis)
    high = ndim + 1 if end_ok else ndim
    if not -ndim <= axis < high:
        raise ParameterError(
            f"{name} {axis} is out of range for a {ndim}-D input "
            f"(expected {-ndim} <= {name} < {high})",
            arg=name,
        )
    return axis + ndim if axis < 0 else axis


def nbytes(shape: Shape, itemsize: int) -> int:
    """Bytes of an array of ``shape`` with elements of ``itemsize`` bytes."""
    return math.prod(shape) * itemsize


def sum_to_shape(grad: np.ndarray, shape: Shape) -> np.ndarray:
    """Sum a broadcast gradient back to the shape of the operand that was broadcast.

    The leading axes ``grad`` has beyond ``shape``, and the axes where ``shape``
    has 1 and ``grad`` more, are summed over. Returns ``grad`` itself (no copy)
    when the shapes already agree.
    """
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    return grad.sum(axis=axes, keepdims=True).reshape(shape)
