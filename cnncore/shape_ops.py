"""Graph ops that move elements without arithmetic: flatten, reshape, concat, pad,
transpose, slice.

Each is an :class:`cnncore.op.Op` (see :mod:`cnncore.op`), with ONNX's meaning:

- ``flatten(x)``, ``axis`` in ``[-ndim, ndim]`` (default 1): shape
  ``(prod(shape[:axis]), prod(shape[axis:]))``, so ``axis=0`` gives ``(1, size)``.
- ``reshape(x)``, ``shape``: a 0 copies the input's dimension at that position,
  one -1 is inferred from the others (ONNX's ``allowzero=0``).
- ``concat(x0, x1, ...)``, ``axis``: the inputs joined along ``axis`` (any axis,
  negative allowed); the gradient is the upstream gradient cut back into pieces.
- ``pad(x)``, ``pads`` in ONNX order (the beginnings of every axis, then the
  ends), ``value``: constant padding; a negative pad crops, as in ONNX.

- ``transpose(x)``, ``perm``: ``np.transpose`` as a contiguous copy (the NHWC stretches of
  ConvNeXt, the channel shuffle of ShuffleNet); the gradient is transposed back.
- ``slice(x)``, ``starts``, ``ends``: one ``[start:end]`` for every axis after the batch
  (step 1); the gradient is zero outside the window (ONNX's ``Slice`` and ``Split``).

The gradients of flatten, reshape and concat are views of the upstream gradient
(no copy), which the engine never writes into.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .checks import check_shape
from .errors import ParameterError, ShapeError
from .op import Op, Shape, attr_axis, attr_float, attr_ints, first_only

# --------------------------------------------------------------------------- flatten


def _flatten_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    axis = raw.get("axis", 1)
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise ParameterError(f"axis must be an integer, got {axis!r:.40}", arg="axis")
    return {"axis": int(axis)}


def _flatten_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    shape = check_shape(shapes[0], "x")
    axis = attr_axis(attrs["axis"], len(shape), end_ok=True)
    return (math.prod(shape[:axis]), math.prod(shape[axis:])), 0


def _flatten_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    (x,) = inputs
    return x.reshape(_flatten_shape([x.shape], attrs)[0]), x.shape


def _reshape_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    return (dout.reshape(cache),)


def _flatten_per_sample(shapes: Sequence[Shape], batched: tuple[bool, ...], attrs: Any) -> bool:
    return batched[0] and attr_axis(attrs["axis"], len(shapes[0]), end_ok=True) >= 1


FLATTEN = Op(
    name="flatten",
    inputs=("x",),
    attr_names=("axis",),
    attrs=_flatten_attrs,
    shape=_flatten_shape,
    forward=_flatten_forward,
    backward=_reshape_backward,
    per_sample=_flatten_per_sample,
)


# --------------------------------------------------------------------------- reshape


def _reshape_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    if "shape" not in raw:
        raise ParameterError("reshape needs shape", arg="shape")
    shape = attr_ints(raw["shape"], "shape")
    if any(d < -1 for d in shape):
        raise ParameterError(f"shape {shape} has a dimension below -1", arg="shape")
    if shape.count(-1) > 1:
        raise ParameterError(f"shape {shape} has more than one -1", arg="shape")
    return {"shape": shape}


def _resolve_reshape(x_shape: Shape, target: tuple[int, ...]) -> Shape:
    """The output shape of reshaping ``x_shape`` to ``target`` (0: copy, -1: inferred).

    Raises
    ------
    ShapeError
        If a 0 has no input dimension to copy or the sizes cannot agree.
    """
    dims = []
    for i, d in enumerate(target):
        if d == 0:
            if i >= len(x_shape):
                raise ShapeError(
                    f"shape {target} has 0 at position {i}, but x {x_shape} has only "
                    f"{len(x_shape)} dimensions to copy",
                    arg="shape",
                )
            d = x_shape[i]
        dims.append(d)
    size = math.prod(x_shape)
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if size % known:
            raise ShapeError(
                f"cannot reshape x {x_shape} ({size} elements) to {target}: "
                f"{size} is not a multiple of {known}",
                arg="shape",
            )
        dims[dims.index(-1)] = size // known
    elif known != size:
        raise ShapeError(
            f"cannot reshape x {x_shape} ({size} elements) to {target} ({known} elements)",
            arg="shape",
        )
    return tuple(dims)


def _reshape_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    (x,) = inputs
    return x.reshape(_resolve_reshape(x.shape, attrs["shape"])), x.shape


def _reshape_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    x = check_shape(shapes[0], "x")
    return _resolve_reshape(x, attrs["shape"]), 0


RESHAPE = Op(
    name="reshape",
    inputs=("x",),
    attr_names=("shape",),
    attrs=_reshape_attrs,
    shape=_reshape_shape,
    forward=_reshape_forward,
    backward=_reshape_backward,
    per_sample=first_only,
)


# --------------------------------------------------------------------------- concat


def _concat_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    if "axis" not in raw:
        raise ParameterError("concat needs axis", arg="axis")
    axis = raw["axis"]
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise ParameterError(f"axis must be an integer, got {axis!r:.40}", arg="axis")
    return {"axis": int(axis)}


def _concat_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    first = check_shape(shapes[0], "x0")
    axis = attr_axis(attrs["axis"], len(first))
    for i, shape in enumerate(shapes[1:], start=1):
        if len(shape) != len(first) or any(
            a != b for j, (a, b) in enumerate(zip(shape, first, strict=True)) if j != axis
        ):
            raise ShapeError(
                f"x{i} has shape {tuple(shape)}, which does not match x0 {first} "
                f"on every axis but {axis}",
                arg=f"x{i}",
            )
    out = list(first)
    out[axis] = sum(s[axis] for s in shapes)
    return tuple(out), 0


def _concat_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    axis = attr_axis(attrs["axis"], inputs[0].ndim)
    sizes = [a.shape[axis] for a in inputs]
    return np.concatenate(inputs, axis=axis), (axis, sizes, [a.dtype for a in inputs])


def _concat_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    axis, sizes, dtypes = cache
    pieces = np.split(dout, np.cumsum(sizes)[:-1], axis=axis)
    return tuple(
        p.astype(dt, copy=False) if need else None
        for p, dt, need in zip(pieces, dtypes, needs, strict=True)
    )


def _concat_per_sample(shapes: Sequence[Shape], batched: tuple[bool, ...], attrs: Any) -> bool:
    return all(batched) and attr_axis(attrs["axis"], len(shapes[0])) != 0


CONCAT = Op(
    name="concat",
    inputs=("x",),
    variadic=True,
    attr_names=("axis",),
    attrs=_concat_attrs,
    shape=_concat_shape,
    forward=_concat_forward,
    backward=_concat_backward,
    per_sample=_concat_per_sample,
)


# --------------------------------------------------------------------------- pad


def _pad_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    if "pads" not in raw:
        raise ParameterError("pad needs pads", arg="pads")
    value = attr_float(raw.get("value", 0.0), "value")
    return {"pads": attr_ints(raw["pads"], "pads"), "value": value}


def _pad_slices(
    x_shape: Shape, pads: tuple[int, ...]
) -> tuple[Shape, tuple[slice, ...], tuple[slice, ...]]:
    """Output shape, and where the kept input (``src``) lands in the output (``dst``).

    Raises
    ------
    ShapeError
        If ``pads`` is not ``2 * ndim`` long or an output dimension would be < 1.
    """
    ndim = len(x_shape)
    if len(pads) != 2 * ndim:
        raise ShapeError(
            f"pads has {len(pads)} values but x {x_shape} needs {2 * ndim} "
            "(the beginnings of every axis, then the ends)",
            arg="pads",
        )
    out, src, dst = [], [], []
    for i, n in enumerate(x_shape):
        begin, end = pads[i], pads[i + ndim]
        size = n + begin + end
        if size < 1:
            raise ShapeError(
                f"pads crop axis {i} of x {x_shape} to {size} (begin {begin}, end {end})",
                arg="pads",
            )
        lo, hi = max(-begin, 0), n - max(-end, 0)
        out.append(size)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(max(begin, 0), max(begin, 0) + max(hi - lo, 0)))
    return tuple(out), tuple(src), tuple(dst)


def _pad_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    x = check_shape(shapes[0], "x")
    return _pad_slices(x, attrs["pads"])[0], 0


def _pad_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    (x,) = inputs
    shape, src, dst = _pad_slices(x.shape, attrs["pads"])
    out = np.full(shape, attrs["value"], dtype=x.dtype)
    out[dst] = x[src]
    return out, (x.shape, src, dst)


def _pad_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    shape, src, dst = cache
    dx = np.zeros(shape, dtype=dout.dtype)
    dx[src] = dout[dst]
    return (dx,)


def _pad_per_sample(shapes: Sequence[Shape], batched: tuple[bool, ...], attrs: Any) -> bool:
    pads = attrs["pads"]
    return batched[0] and pads[0] == 0 and pads[len(pads) // 2] == 0


PAD = Op(
    name="pad",
    inputs=("x",),
    attr_names=("pads", "value"),
    attrs=_pad_attrs,
    shape=_pad_shape,
    forward=_pad_forward,
    backward=_pad_backward,
    per_sample=_pad_per_sample,
)


# --------------------------------------------------------------------------- transpose


def _transpose_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    perm = attr_ints(raw.get("perm"), "perm")
    if sorted(perm) != list(range(len(perm))):
        raise ParameterError(
            f"perm must order the axes 0..{len(perm) - 1}, got {list(perm)}", arg="perm"
        )
    return {"perm": perm}


def _transpose_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    shape = check_shape(shapes[0], "x")
    perm = attrs["perm"]
    if len(perm) != len(shape):
        raise ShapeError(f"perm {list(perm)} does not fit a {len(shape)}-D input {shape}", arg="x")
    return tuple(shape[p] for p in perm), 0


def _transpose_forward(
    inputs: Sequence[np.ndarray], attrs: dict[str, Any]
) -> tuple[np.ndarray, Any]:
    # A contiguous copy: the next op (a LayerNorm over channels-last, a MatMul) reads it whole.
    return np.ascontiguousarray(np.transpose(inputs[0], attrs["perm"])), attrs["perm"]


def _transpose_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    return (np.ascontiguousarray(np.transpose(dout, np.argsort(cache))),)


def _transpose_per_sample(shapes: Sequence[Shape], batched: tuple[bool, ...], attrs: Any) -> bool:
    return batched[0] and attrs["perm"][0] == 0  # the batch stays on axis 0


TRANSPOSE = Op(
    name="transpose",
    inputs=("x",),
    attr_names=("perm",),
    attrs=_transpose_attrs,
    shape=_transpose_shape,
    forward=_transpose_forward,
    backward=_transpose_backward,
    per_sample=_transpose_per_sample,
)


# --------------------------------------------------------------------------- slice


def _slice_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    starts = attr_ints(raw.get("starts"), "starts")
    ends = attr_ints(raw.get("ends"), "ends")
    if len(starts) != len(ends) or any(s < 0 or e < s for s, e in zip(starts, ends, strict=True)):
        raise ParameterError(
            f"starts {list(starts)} and ends {list(ends)} must pair up, 0 <= start <= end",
            arg="starts",
        )
    return {"starts": starts, "ends": ends}


def _slice_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    shape = check_shape(shapes[0], "x")
    starts, ends = attrs["starts"], attrs["ends"]
    if len(starts) != len(shape) - 1 or any(e > n for e, n in zip(ends, shape[1:], strict=True)):
        raise ShapeError(
            f"slice [{', '.join(f'{s}:{e}' for s, e in zip(starts, ends, strict=True))}] "
            f"does not fit the axes after the batch of {shape}",
            arg="x",
        )
    return (shape[0], *(e - s for s, e in zip(starts, ends, strict=True))), 0


def _window(attrs: dict[str, Any]) -> tuple[slice, ...]:
    return (
        slice(None),
        *(slice(s, e) for s, e in zip(attrs["starts"], attrs["ends"], strict=True)),
    )


def _slice_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    (x,) = inputs
    return x[_window(attrs)].copy(), (x.shape, x.dtype, _window(attrs))


def _slice_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    shape, dtype, window = cache
    dx = np.zeros(shape, dtype=dtype)
    dx[window] = dout
    return (dx,)


SLICE = Op(
    name="slice",
    inputs=("x",),
    attr_names=("starts", "ends"),
    attrs=_slice_attrs,
    shape=_slice_shape,
    forward=_slice_forward,
    backward=_slice_backward,
    per_sample=first_only,
)
