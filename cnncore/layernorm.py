"""Layer normalization as a graph op (ONNX's ``LayerNormalization``; ConvNeXt's ``LayerNorm``
over the channels of an NHWC stretch, a transformer's over its features).

``layer_norm(x, scale[, bias])``, ``axis`` (non-negative, at least 1: the batch is never
normalized over), ``epsilon``: over the axes ``axis .. ndim-1`` of each sample,
``xhat = (x - mean) / sqrt(var + epsilon)`` (the population variance) and
``y = xhat * scale + bias``, ``scale`` and ``bias`` broadcast to ``x.shape[axis:]``.

Backward, with ``g = dout * scale`` and means over the normalized axes:
``dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + epsilon)``,
``dscale = sum(dout * xhat)`` and ``dbias = sum(dout)`` over the rest, reduced to their
own shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ParameterError, ShapeError
from .op import Memory, Op, Shape, attr_float, nbytes, sum_to_shape


def _attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    axis = raw.get("axis", -1)
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or axis < 1:
        raise ParameterError(f"axis must be an integer >= 1, got {axis!r:.40}", arg="axis")
    epsilon = attr_float(raw.get("epsilon", 1e-5), "epsilon")
    assert epsilon is not None
    if epsilon <= 0:
        raise ParameterError(f"epsilon must be positive, got {epsilon}", arg="epsilon")
    return {"axis": int(axis), "epsilon": epsilon}


def _shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    x = tuple(shapes[0])
    axis = attrs["axis"]
    if axis >= len(x):
        raise ShapeError(f"axis {axis} is out of range for a {len(x)}-D input {x}", arg="x")
    tail = x[axis:]
    for name, s in zip(("scale", "bias"), shapes[1:], strict=False):
        try:
            fits = np.broadcast_shapes(tuple(s), tail) == tail
        except ValueError:
            fits = False
        if not fits:
            raise ShapeError(f"{name} {tuple(s)} does not broadcast to {tail}", arg=name)
    return x, 8 * math.prod(x)


def _forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    x, scale = inputs[0], inputs[1]
    axes = tuple(range(attrs["axis"], x.ndim))
    xhat = x - x.mean(axis=axes, keepdims=True)
    var = np.mean(xhat * xhat, axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + attrs["epsilon"])
    xhat *= inv
    y = xhat * scale
    if len(inputs) > 2:
        y += inputs[2]
    bias_shape = inputs[2].shape if len(inputs) > 2 else None
    return y.astype(x.dtype, copy=False), (xhat, inv, scale, axes, bias_shape)


def _backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    xhat, inv, scale, axes, bias_shape = cache
    lead = tuple(range(min(axes)))
    grads: list[Any] = [None] * len(needs)
    if needs[0]:
        g = dout * scale
        dx = g - g.mean(axis=axes, keepdims=True)
        g *= xhat
        dx -= xhat * g.mean(axis=axes, keepdims=True)
        dx *= inv
        grads[0] = dx.astype(xhat.dtype, copy=False)
    if needs[1]:
        grads[1] = sum_to_shape((dout * xhat).sum(axis=lead), scale.shape).astype(scale.dtype)
    if bias_shape is not None and needs[2]:
        grads[2] = sum_to_shape(dout.sum(axis=lead), bias_shape).astype(scale.dtype)
    return tuple(grads)


def _memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
    size = nbytes(shapes[0], isz)
    # xhat is kept for backward; the forward squares it once; backward holds g, dx, a product.
    return Memory(cache=size, forward=2 * size, backward=3 * size)


def _per_sample(shapes: Sequence[Shape], batched: tuple[bool, ...], attrs: Any) -> bool:
    return batched[0] and not any(batched[1:])  # axis >= 1: each sample on its own


LAYER_NORM = Op(
    name="layer_norm",
    inputs=("x", "scale", "bias"),
    optional=1,
    attr_names=("axis", "epsilon"),
    attrs=_attrs,
    shape=_shape,
    forward=_forward,
    backward=_backward,
    memory=_memory,
    per_sample=_per_sample,
)
