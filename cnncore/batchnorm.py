"""Batch normalisation in its inference form, as a graph op (``batchnorm``).

With the running statistics ``mean`` and ``var`` of each channel ``c``::

    out = scale[c] * (x - mean[c]) / sqrt(var[c] + epsilon) + bias[c]

which is an affine map per channel, ``out = a[c] * x + (bias[c] - a[c] * mean[c])``
with ``a = scale / sqrt(var + epsilon)``: the forward pass is one multiply and
one add per element. Backward, with ``x_hat = (x - mean) / sqrt(var + epsilon)``
and sums over every axis but the channels::

    dx = a * dout,   dscale = sum(dout * x_hat),   dbias = sum(dout),
    dmean = -a * sum(dout),   dvar = -scale / (2 (var + epsilon)) * sum(dout * x_hat)

The statistics are usually constants (no gradient asked for); when they are
parameters their gradients come for the price of two reductions already done.
``x`` is ``(N, C, D1, ...)`` of at least 2 dimensions; the four vectors are ``(C,)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .checks import check_shape
from .errors import ParameterError, ShapeError
from .op import Memory, Op, Shape, attr_float, first_only, nbytes

_VECTORS = ("scale", "bias", "mean", "var")


def _attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    eps = attr_float(raw.get("epsilon", 1e-5), "epsilon")
    assert eps is not None
    if eps < 0:
        raise ParameterError(f"epsilon must be >= 0, got {eps}", arg="epsilon")
    return {"epsilon": eps}


def _shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    x = check_shape(shapes[0], "x", min_ndim=2)
    for name, shape in zip(_VECTORS, shapes[1:], strict=True):
        if tuple(shape) != (x[1],):
            raise ShapeError(
                f"{name} must have shape ({x[1]},) (one per channel of x {x}), got {tuple(shape)}",
                arg=name,
            )
    return x, 2 * math.prod(x)


def _forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    x, scale, bias, mean, var = inputs
    dtype = np.result_type(*inputs)
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    denom = var.astype(dtype) + dtype.type(attrs["epsilon"])
    if (denom <= 0).any():
        c = int(np.argmax(denom <= 0))
        raise ParameterError(
            f"var[{c}] + epsilon is {float(denom[c])}, not positive: the channel cannot be "
            "normalised",
            arg="var",
        )
    inv = (1 / np.sqrt(denom)).astype(dtype, copy=False)
    a = (scale * inv).astype(dtype, copy=False)
    shift = (bias - mean * a).astype(dtype, copy=False)
    out = x * a.reshape(per_channel)
    out += shift.reshape(per_channel)
    return out.astype(dtype, copy=False), (x, scale, mean, inv, a, dtype)


def _backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    x, scale, mean, inv, a, dtype = cache
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    axes = (0, *range(2, x.ndim))
    dx = dout * a.reshape(per_channel) if needs[0] else None
    dsum = dout.sum(axis=axes) if any(needs[1:]) else None
    dscale = None
    if needs[1] or needs[4]:
        # x_hat times dout, in one temporary, summed per channel.
        xd = x - mean.reshape(per_channel)
        xd *= inv.reshape(per_channel)
        xd *= dout
        dscale = xd.sum(axis=axes)
        del xd
    dmean = -a * dsum if needs[3] else None
    dvar = (-0.5 * scale * inv * inv * dscale).astype(dtype, copy=False) if needs[4] else None
    return (
        dx,
        dscale if needs[1] else None,
        dsum if needs[2] else None,
        dmean,
        dvar,
    )


def _memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
    return Memory(forward=0, backward=nbytes(shapes[0], isz))  # x_hat * dout


BATCHNORM = Op(
    name="batchnorm",
    inputs=("x", *_VECTORS),
    attr_names=("epsilon",),
    attrs=_attrs,
    shape=_shape,
    forward=_forward,
    backward=_backward,
    memory=_memory,
    per_sample=first_only,
)
