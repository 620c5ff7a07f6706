"""Element-wise and per-axis graph ops: add, clip, softmax, reduce_mean, global_avg_pool.

Each is an :class:`cnncore.op.Op` (shape rule, forward, backward, memory); see
:mod:`cnncore.op`. They keep the dtype of their operands (numpy's promotion when
two operands differ) and never write into their inputs.

- ``add(a, b)``: numpy broadcasting; each operand's gradient is the upstream
  gradient summed back to that operand's shape (a bias of shape ``(C, 1, 1)`` gets
  the sum over the batch and the plane).
- ``clip(x)``: ``min(max(x, min), max)``, either bound optional. The gradient passes
  where ``min < x < max`` and is 0 outside and *at* the bounds, as PyTorch's
  ``hardtanh``/``relu6`` backward (the ReLU6 that exporters write as ``Clip(0, 6)``)
  and as :func:`cnncore.relu_backward` at 0 (``torch.clamp``'s backward instead
  passes it at the bounds; the two differ only on inputs exactly at a bound).
- ``softmax(x)``: along ``axis`` (default -1), the maximum subtracted first;
  backward ``y * (dout - sum(dout * y))`` along the axis.
- ``reduce_mean(x)``: the mean over ``axes`` (all when None), ``keepdims`` as ONNX
  (default true); ``global_avg_pool(x)``: the mean over every axis after the
  channels, kept as size 1 (``(N, C, H, W) -> (N, C, 1, 1)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .activations import masked_gradient
from .checks import check_shape
from .errors import ParameterError, ShapeError
from .op import (
    Memory,
    Op,
    Shape,
    attr_axis,
    attr_bool,
    attr_float,
    attr_ints,
    broadcast_per_sample,
    first_only,
    nbytes,
    no_attrs,
    sum_to_shape,
)

# --------------------------------------------------------------------------- add


def broadcast_shape(shapes: Sequence[Shape], names: Sequence[str]) -> Shape:
    """numpy's broadcast of ``shapes``, or a ShapeError naming the operands.

    Raises
    ------
    ShapeError
        If the shapes do not broadcast (``arg`` is the last operand's name).
    """
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        given = " and ".join(f"{n} {tuple(s)}" for n, s in zip(names, shapes, strict=True))
        raise ShapeError(f"{given} do not broadcast together", arg=names[-1]) from None


def _add_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    out = broadcast_shape(shapes, ("a", "b"))
    return out, math.prod(out)


def _add_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    a, b = inputs
    return a + b, ((a.shape, a.dtype), (b.shape, b.dtype))


def _add_overwrite(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    a, b = inputs
    if a.shape != np.broadcast_shapes(a.shape, b.shape) or a.dtype != np.result_type(a, b):
        return a + b  # the sum does not fit in a
    return np.add(a, b, out=a)


def _add_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    return tuple(
        sum_to_shape(dout, shape).astype(dtype, copy=False) if need else None
        for (shape, dtype), need in zip(cache, needs, strict=True)
    )


ADD = Op(
    name="add",
    inputs=("a", "b"),
    attrs=no_attrs,
    shape=_add_shape,
    forward=_add_forward,
    backward=_add_backward,
    overwrite=_add_overwrite,
    per_sample=broadcast_per_sample,
)


# --------------------------------------------------------------------------- clip


def _clip_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    low = attr_float(raw.get("min"), "min", allow_none=True)
    high = attr_float(raw.get("max"), "max", allow_none=True)
    if low is not None and high is not None and low > high:
        raise ParameterError(f"min {low} is larger than max {high}", arg="min")
    return {"min": low, "max": high}


def _elementwise_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    shape = check_shape(shapes[0], "x")
    return shape, math.prod(shape)


def _clip_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    (x,) = inputs
    low, high = attrs["min"], attrs["max"]
    out = x.copy() if low is None and high is None else np.clip(x, low, high)
    return out, (x, low, high)


def _clip_overwrite(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    (x,) = inputs
    low, high = attrs["min"], attrs["max"]
    return x if low is None and high is None else np.clip(x, low, high, out=x)


def _clip_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    x, low, high = cache
    inside = np.ones(x.shape, dtype=bool)
    if low is not None:
        inside &= x > low
    if high is not None:
        inside &= x < high
    return (masked_gradient(dout, inside),)


def _mask_memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
    return Memory(backward=3 * math.prod(shapes[0]))  # boolean masks, a byte each


CLIP = Op(
    name="clip",
    inputs=("x",),
    attr_names=("min", "max"),
    attrs=_clip_attrs,
    shape=_elementwise_shape,
    forward=_clip_forward,
    backward=_clip_backward,
    overwrite=_clip_overwrite,
    memory=_mask_memory,
    per_sample=first_only,
)


# --------------------------------------------------------------------------- softmax


def _softmax_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    axis = raw.get("axis", -1)
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise ParameterError(f"axis must be an integer, got {axis!r:.40}", arg="axis")
    return {"axis": int(axis)}


def _softmax_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    shape = check_shape(shapes[0], "x")
    attr_axis(attrs["axis"], len(shape))
    return shape, 4 * math.prod(shape)  # subtract, exp, sum, divide


def _softmax_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    (x,) = inputs
    axis = attr_axis(attrs["axis"], x.ndim)
    y = x - x.max(axis=axis, keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y, (y, axis)


def _softmax_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    y, axis = cache
    dx = dout * y
    dx -= y * dx.sum(axis=axis, keepdims=True)
    return (dx,)


def _softmax_memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
    return Memory(backward=nbytes(shapes[0], isz))  # y times the row sums


def _softmax_per_sample(shapes: Sequence[Shape], batched: tuple[bool, ...], attrs: Any) -> bool:
    return batched[0] and attr_axis(attrs["axis"], len(shapes[0])) != 0


SOFTMAX = Op(
    name="softmax",
    inputs=("x",),
    attr_names=("axis",),
    attrs=_softmax_attrs,
    shape=_softmax_shape,
    forward=_softmax_forward,
    backward=_softmax_backward,
    memory=_softmax_memory,
    per_sample=_softmax_per_sample,
)


# --------------------------------------------------------------------------- means


def _reduce_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    axes = raw.get("axes")
    return {
        "axes": None if axes is None else attr_ints(axes, "axes"),
        "keepdims": attr_bool(raw.get("keepdims", True), "keepdims"),
    }


def _resolve_axes(axes: tuple[int, ...] | None, ndim: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(ndim))
    resolved = tuple(attr_axis(a, ndim, "axes") for a in axes)
    if len(set(resolved)) != len(resolved):
        raise ParameterError(f"axes {axes} name an axis twice", arg="axes")
    return tuple(sorted(resolved))


def _reduce_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    shape = check_shape(shapes[0], "x")
    axes = _resolve_axes(attrs["axes"], len(shape))
    if attrs["keepdims"]:
        out = tuple(1 if i in axes else n for i, n in enumerate(shape))
    else:
        out = tuple(n for i, n in enumerate(shape) if i not in axes)
    return out, math.prod(shape)


def _reduce_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    (x,) = inputs
    axes = _resolve_axes(attrs["axes"], x.ndim)
    out = x.mean(axis=axes, keepdims=attrs["keepdims"])
    out = np.asarray(out, dtype=x.dtype)  # a 0-D mean is a scalar otherwise
    return out, (x.shape, axes)


def _reduce_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    shape, axes = cache
    kept = tuple(1 if i in axes else n for i, n in enumerate(shape))
    count = math.prod(shape[i] for i in axes)
    dx = np.empty(shape, dtype=dout.dtype)
    dx[...] = dout.reshape(kept) * dout.dtype.type(1 / count)
    return (dx,)


def _reduce_per_sample(shapes: Sequence[Shape], batched: tuple[bool, ...], attrs: Any) -> bool:
    return batched[0] and 0 not in _resolve_axes(attrs["axes"], len(shapes[0]))


REDUCE_MEAN = Op(
    name="reduce_mean",
    inputs=("x",),
    attr_names=("axes", "keepdims"),
    attrs=_reduce_attrs,
    shape=_reduce_shape,
    forward=_reduce_forward,
    backward=_reduce_backward,
    per_sample=_reduce_per_sample,
)


def _spatial(ndim: int) -> dict[str, Any]:
    return {"axes": tuple(range(2, ndim)), "keepdims": True}


def _gap_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    shape = check_shape(shapes[0], "x")
    if len(shape) < 3:
        raise ShapeError(
            f"global_avg_pool needs an input (N, C, D1, ...) of at least 3 dimensions, "
            f"got shape {shape}",
            arg="x",
        )
    return _reduce_shape(shapes, _spatial(len(shape)))


def _gap_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    return _reduce_forward(inputs, _spatial(inputs[0].ndim))


GLOBAL_AVG_POOL = Op(
    name="global_avg_pool",
    inputs=("x",),
    attrs=no_attrs,
    shape=_gap_shape,
    forward=_gap_forward,
    backward=_reduce_backward,
    per_sample=first_only,
)
