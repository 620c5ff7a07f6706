"""Point-wise graph ops of the mobile CNNs: activations and broadcasting arithmetic.

Each is an :class:`cnncore.op.Op`; see :mod:`cnncore.op`. They keep their operands'
dtype (numpy's promotion when two differ) and never write into their inputs.

Activations (``x`` in, same shape out; ``d`` is the derivative used by backward):

- ``sigmoid``: ``1 / (1 + exp(-x))``, from ``exp(-|x|)`` so that neither tail overflows
  or cancels; ``d = y (1 - y)``. SiLU/Swish is ``x * sigmoid(x)`` (a ``mul`` node).
- ``hard_sigmoid(alpha, beta)``: ``clip(alpha x + beta, 0, 1)``; ``d = alpha`` strictly
  inside ``(0, 1)``, 0 elsewhere (ONNX's defaults alpha 0.2, beta 0.5; PyTorch exports
  1/6 and 0.5).
- ``hard_swish``: ``x * clip(x / 6 + 1/2, 0, 1)``; ``d`` is 0 below -3, ``x / 3 + 1/2``
  from -3 to 3 and 1 above, PyTorch's ``hardswish_backward`` (which takes the middle
  branch at exactly 3).
- ``tanh``: ``d = 1 - y^2``. ``sqrt``: ``d = 1 / (2 y)``. ``neg``: ``d = -1``.
- ``pow(exponent)``: ``x ** p`` for a constant ``p``; ``d = p x ** (p - 1)``.
- ``erf``: libm's ``erf`` element by element (in float64; numpy has no vectorised one),
  ``d = 2 / sqrt(pi) exp(-x^2)``; ``gelu(approximate)``: ``x Phi(x)`` with the normal
  CDF from ``erf`` (``"none"``) or the ``tanh`` approximation, as ONNX's ``Gelu``.

Arithmetic with numpy broadcasting (``a``, ``b`` in), each operand's gradient summed back
to its own shape (:func:`cnncore.op.sum_to_shape`): ``mul`` (``da = dout b``,
``db = dout a``), ``sub`` (``da = dout``, ``db = -dout``), ``div`` (``da = dout / b``,
``db = -dout a / b^2``). Squeeze-and-excitation's ``(N, C, 1, 1) * (N, C, H, W)`` is a
``mul``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .elementwise import broadcast_shape
from .errors import ParameterError
from .op import (
    Memory,
    Op,
    Shape,
    attr_float,
    broadcast_per_sample,
    first_only,
    nbytes,
    no_attrs,
    sum_to_shape,
)

# --------------------------------------------------------------------------- activations


def _same_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    shape = tuple(shapes[0])
    return shape, 4 * math.prod(shape)  # a few operations per element


def _temporaries(
    forward: int, backward: int
) -> Callable[[Sequence[Shape], Shape, dict[str, Any], int], Memory]:
    """``memory`` of an op whose forward and backward hold at most ``forward`` and
    ``backward`` temporaries of the input's size at once, besides their results (what the
    numpy expressions below allocate, boolean masks counted as whole arrays)."""

    def memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
        size = nbytes(shapes[0], isz)
        return Memory(forward=forward * size, backward=backward * size)

    return memory


def _activation(
    name: str,
    value: Callable[[np.ndarray, dict[str, Any]], np.ndarray],
    slope: Callable[[np.ndarray, np.ndarray, dict[str, Any]], np.ndarray],
    *,
    attrs: Callable[[Mapping[str, Any]], dict[str, Any]] = no_attrs,
    attr_names: tuple[str, ...] = (),
    temporaries: tuple[int, int] = (2, 2),
) -> Op:
    """An activation ``y = value(x)`` with backward ``dout * slope(x, y)``."""

    def forward(inputs: Sequence[np.ndarray], a: dict[str, Any]) -> tuple[np.ndarray, Any]:
        (x,) = inputs
        y = value(x, a).astype(x.dtype, copy=False)
        return y, (x, y, a)

    def infer(inputs: Sequence[np.ndarray], a: dict[str, Any]) -> np.ndarray:
        (x,) = inputs
        return value(x, a).astype(x.dtype, copy=False)

    def backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        x, y, a = cache
        return ((dout * slope(x, y, a)).astype(x.dtype, copy=False),)

    return Op(
        name=name,
        inputs=("x",),
        attrs=attrs,
        attr_names=attr_names,
        shape=_same_shape,
        forward=forward,
        infer=infer,
        backward=backward,
        memory=_temporaries(*temporaries),
        per_sample=first_only,
    )


def _sigmoid(x: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    """``1 / (1 + e)`` for ``x >= 0`` and ``e / (1 + e)`` below, ``e = exp(-|x|)`` in
    ``(0, 1]``, so that neither side overflows. The numerator is ``max(x >= 0, e)``: 1 or
    ``e`` exactly (NaN stays NaN), on SIMD loops, where ``np.where`` with a scalar has
    none (2.8x faster on 1.2M float32 values)."""
    e = np.abs(x)
    np.negative(e, out=e)
    np.exp(e, out=e)
    y = (x >= 0).astype(e.dtype)
    np.maximum(y, e, out=y)
    e += 1
    y /= e
    return y


SIGMOID = _activation("sigmoid", _sigmoid, lambda x, y, a: y * (1 - y), temporaries=(2, 2))


def _hard_sigmoid_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "alpha": attr_float(raw.get("alpha", 0.2), "alpha"),
        "beta": attr_float(raw.get("beta", 0.5), "beta"),
    }


def _hard_sigmoid_slope(x: np.ndarray, y: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    z = a["alpha"] * x + a["beta"]
    return np.where((z > 0) & (z < 1), a["alpha"], 0).astype(x.dtype)


HARD_SIGMOID = _activation(
    "hard_sigmoid",
    lambda x, a: np.clip(a["alpha"] * x + a["beta"], 0, 1),
    _hard_sigmoid_slope,
    attrs=_hard_sigmoid_attrs,
    attr_names=("alpha", "beta"),
    temporaries=(2, 4),
)


def _hard_swish_slope(x: np.ndarray, y: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    return np.where(x < -3, 0, np.where(x <= 3, x / 3 + 0.5, 1)).astype(x.dtype)


HARD_SWISH = _activation(
    "hard_swish",
    lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1),
    _hard_swish_slope,
    temporaries=(3, 6),
)
TANH = _activation("tanh", lambda x, a: np.tanh(x), lambda x, y, a: 1 - y * y)
SQRT = _activation("sqrt", lambda x, a: np.sqrt(x), lambda x, y, a: 0.5 / y)
NEG = _activation("neg", lambda x, a: -x, lambda x, y, a: np.full_like(x, -1), temporaries=(0, 1))


_erf = np.frompyfunc(math.erf, 1, 1)
"""libm's erf, element by element (numpy has none; cnncore needs nothing but numpy)."""
_SQRT1_2 = math.sqrt(0.5)
_SQRT2_PI = math.sqrt(2 / math.pi)


_ERF_CHUNK = 4096
"""Elements per call of :data:`_erf`, whose Python floats take about 32 bytes each."""
_ERF_CHUNK_BYTES = 64 * _ERF_CHUNK


def _erf_value(x: np.ndarray) -> np.ndarray:
    """erf(x) in float64, a chunk at a time (the Python objects stay a few hundred KB)."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    out = np.empty_like(flat)
    for i in range(0, flat.size, _ERF_CHUNK):
        out[i : i + _ERF_CHUNK] = _erf(flat[i : i + _ERF_CHUNK])
    return out.reshape(np.shape(x))


def _with_float64(
    f64: tuple[int, int], same: tuple[int, int]
) -> Callable[[Sequence[Shape], Shape, dict[str, Any], int], Memory]:
    """``memory`` of an op computing through erf: ``f64`` float64 temporaries and ``same``
    temporaries of the input's dtype (forward, backward), plus erf's chunk of objects."""

    def memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
        n = math.prod(shapes[0])
        forward, backward = (
            k64 * 8 * n + k * isz * n + _ERF_CHUNK_BYTES for k64, k in zip(f64, same, strict=True)
        )
        return Memory(forward=forward, backward=backward)

    return memory


ERF = replace(
    _activation(
        "erf",
        lambda x, a: _erf_value(x),
        lambda x, y, a: (2 / math.sqrt(math.pi)) * np.exp(-x * x),
    ),
    memory=_with_float64((2, 0), (0, 3)),
)


def _gelu_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    approximate = raw.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ParameterError(
            f"approximate must be 'none' or 'tanh', got {approximate!r:.40}", arg="approximate"
        )
    return {"approximate": approximate}


def _gelu(x: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    if a["approximate"] == "tanh":
        return 0.5 * x * (1 + np.tanh(_SQRT2_PI * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf_value(x * _SQRT1_2))


def _gelu_slope(x: np.ndarray, y: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    if a["approximate"] == "tanh":
        t = np.tanh(_SQRT2_PI * (x + 0.044715 * x**3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT2_PI * (1 + 3 * 0.044715 * x * x)
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return 0.5 * (1 + _erf_value(x * _SQRT1_2)) + x * pdf


GELU = replace(
    _activation("gelu", _gelu, _gelu_slope, attrs=_gelu_attrs, attr_names=("approximate",)),
    memory=_with_float64((3, 3), (3, 5)),
)


def _pow_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"exponent": attr_float(raw.get("exponent"), "exponent")}


POW = _activation(
    "pow",
    lambda x, a: x ** a["exponent"],
    lambda x, y, a: a["exponent"] * x ** (a["exponent"] - 1),
    attrs=_pow_attrs,
    attr_names=("exponent",),
)


# --------------------------------------------------------------------------- arithmetic


def _binary_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    out = broadcast_shape(shapes, ("a", "b"))
    return out, math.prod(out)


def _binary_memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
    return Memory(backward=2 * nbytes(out, isz))  # each operand's product before its sum


def _arithmetic(
    name: str,
    value: Callable[[np.ndarray, np.ndarray], np.ndarray],
    grads: Callable[[np.ndarray, np.ndarray, np.ndarray, tuple[bool, ...]], tuple[Any, Any]],
) -> Op:
    """A broadcasting ``out = value(a, b)``; ``grads(dout, a, b, needs)`` gives the
    broadcast gradients, summed back to each operand's shape here."""

    def forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
        a, b = inputs
        return value(a, b), (a, b)

    def backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        a, b = cache
        da, db = grads(dout, a, b, needs)
        return tuple(
            None if g is None else sum_to_shape(g, op.shape).astype(op.dtype, copy=False)
            for g, op in ((da, a), (db, b))
        )

    return Op(
        name=name,
        inputs=("a", "b"),
        attrs=no_attrs,
        shape=_binary_shape,
        forward=forward,
        backward=backward,
        memory=_binary_memory,
        per_sample=broadcast_per_sample,
    )


MUL = _arithmetic(
    "mul",
    np.multiply,
    lambda d, a, b, needs: (d * b if needs[0] else None, d * a if needs[1] else None),
)
SUB = _arithmetic(
    "sub",
    np.subtract,
    lambda d, a, b, needs: (d if needs[0] else None, -d if needs[1] else None),
)
DIV = _arithmetic(
    "div",
    np.divide,
    lambda d, a, b, needs: (d / b if needs[0] else None, -d * a / (b * b) if needs[1] else None),
)

OPS = (SIGMOID, HARD_SIGMOID, HARD_SWISH, TANH, SQRT, NEG, POW, ERF, GELU, MUL, SUB, DIV)
"""Every op of this module, for :data:`cnncore.graph.OPS`."""
