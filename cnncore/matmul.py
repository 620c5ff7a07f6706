"""Matrix products as graph ops: ``gemm`` (ONNX's Gemm) and ``matmul`` (numpy.matmul).

Each is an :class:`cnncore.op.Op` (see :mod:`cnncore.op`); the products go to BLAS
through ``numpy.matmul``, transposes as views (BLAS reads them transposed).

- ``gemm(a, b[, c])``: ``alpha * A @ B + beta * c`` with ``A = a.T`` when ``trans_a``
  and ``B = b.T`` when ``trans_b``; ``a`` and ``b`` 2-D, ``A`` ``(M, K)``, ``B``
  ``(K, N)``, ``c`` broadcastable to ``(M, N)``. Backward:
  ``dA = alpha * dout @ B.T``, ``dB = alpha * A.T @ dout`` (transposed back when the
  operand was), ``dc = beta * dout`` summed back to ``c``'s shape.
- ``matmul(a, b)``: numpy's rules: 1-D operands are promoted to a row (``a``) or a
  column (``b``) and the promoted axis dropped from the result; leading (batch)
  axes broadcast, and each operand's gradient is summed back over the batch axes
  it was broadcast along.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .checks import check_shape
from .errors import ShapeError
from .op import Memory, Op, Shape, attr_bool, attr_float, nbytes, no_attrs, sum_to_shape

# --------------------------------------------------------------------------- gemm


def _gemm_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "alpha": attr_float(raw.get("alpha", 1.0), "alpha"),
        "beta": attr_float(raw.get("beta", 1.0), "beta"),
        "trans_a": attr_bool(raw.get("trans_a", False), "trans_a"),
        "trans_b": attr_bool(raw.get("trans_b", False), "trans_b"),
    }


def _gemm_dims(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[int, int, int]:
    a = check_shape(shapes[0], "a", 2)
    b = check_shape(shapes[1], "b", 2)
    m, k = a[::-1] if attrs["trans_a"] else a
    kb, n = b[::-1] if attrs["trans_b"] else b
    if k != kb:
        ta = "a.T" if attrs["trans_a"] else "a"
        tb = "b.T" if attrs["trans_b"] else "b"
        raise ShapeError(
            f"{ta} is ({m}, {k}) but {tb} is ({kb}, {n}): the inner sizes {k} and {kb} differ",
            arg="b",
        )
    if len(shapes) == 3:
        c = tuple(shapes[2])
        try:
            fits = np.broadcast_shapes(c, (m, n)) == (m, n)
        except ValueError:
            fits = False
        if not fits:
            raise ShapeError(f"c has shape {c}, which does not broadcast to ({m}, {n})", arg="c")
    return m, k, n


def _gemm_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    m, k, n = _gemm_dims(shapes, attrs)
    return (m, n), 2 * m * k * n + (2 * m * n if len(shapes) == 3 else 0)


def _gemm_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) == 3 else None
    A = a.T if attrs["trans_a"] else a
    B = b.T if attrs["trans_b"] else b
    out = np.matmul(A, B)
    alpha, beta = attrs["alpha"], attrs["beta"]
    if alpha != 1:
        out *= out.dtype.type(alpha)
    if c is not None:
        out = out + (c if beta == 1 else c * c.dtype.type(beta))  # a new array either way
    c_meta = None if c is None else (c.shape, c.dtype)
    return out, (A, B, c_meta, attrs)


def _gemm_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    A, B, c_meta, attrs = cache
    alpha, beta = dout.dtype.type(attrs["alpha"]), dout.dtype.type(attrs["beta"])
    scaled = dout if alpha == 1 else dout * alpha
    da = db = dc = None
    if needs[0]:  # dA = dout @ B.T, and da = dA.T = B @ dout.T when a was transposed
        da = np.matmul(B, scaled.T) if attrs["trans_a"] else np.matmul(scaled, B.T)
        da = da.astype(A.dtype, copy=False)
    if needs[1]:  # dB = A.T @ dout, and db = dB.T = dout.T @ A when b was transposed
        db = np.matmul(scaled.T, A) if attrs["trans_b"] else np.matmul(A.T, scaled)
        db = db.astype(B.dtype, copy=False)
    if c_meta is not None and needs[2]:
        shape, dtype = c_meta
        dc = sum_to_shape(dout if beta == 1 else dout * beta, shape).astype(dtype, copy=False)
    return (da, db, dc)[: len(needs)]


def _gemm_memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
    return Memory(forward=nbytes(out, isz), backward=nbytes(out, isz))  # c * beta; dout * alpha


def _gemm_per_sample(shapes: Sequence[Shape], batched: tuple[bool, ...], attrs: Any) -> bool:
    # Rows of A are samples; a bias C of shape (M, N) with M > 1 is not the same for each.
    bias_ok = len(shapes) < 3 or len(shapes[2]) < 2 or shapes[2][0] == 1
    return batched[0] and not attrs["trans_a"] and not any(batched[1:]) and bias_ok


GEMM = Op(
    name="gemm",
    inputs=("a", "b", "c"),
    optional=1,
    attr_names=("alpha", "beta", "trans_a", "trans_b"),
    attrs=_gemm_attrs,
    shape=_gemm_shape,
    forward=_gemm_forward,
    backward=_gemm_backward,
    memory=_gemm_memory,
    per_sample=_gemm_per_sample,
)


# --------------------------------------------------------------------------- matmul


def _promoted(a: Shape, b: Shape) -> tuple[Shape, Shape, Shape, Shape]:
    """``(a2, b2, batch, out)``: the operands as ``(..., M, K)`` and ``(..., K, N)``,
    the broadcast batch shape and numpy.matmul's output shape.

    Raises
    ------
    ShapeError
        If the inner sizes differ or the batch axes do not broadcast.
    """
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ShapeError(
            f"a {a} and b {b} do not fit a matrix product: a's last size {a2[-1]} "
            f"differs from b's {'only' if len(b) == 1 else 'second-to-last'} size {b2[-2]}",
            arg="b",
        )
    try:
        batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    except ValueError:
        raise ShapeError(
            f"the batch axes of a {a} and b {b} ({a2[:-2]} and {b2[:-2]}) do not broadcast",
            arg="b",
        ) from None
    out = batch + (a2[-2],) * (len(a) > 1) + (b2[-1],) * (len(b) > 1)
    return a2, b2, batch, out


def _matmul_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    a = check_shape(shapes[0], "a")
    b = check_shape(shapes[1], "b")
    a2, b2, batch, out = _promoted(a, b)
    return out, 2 * math.prod(batch) * a2[-2] * a2[-1] * b2[-1]


def _matmul_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    a, b = inputs
    return np.matmul(a, b), (a, b)


def _matmul_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    a, b = cache
    a2s, b2s, batch, _ = _promoted(a.shape, b.shape)
    a2, b2 = a.reshape(a2s), b.reshape(b2s)
    d = dout.reshape((*batch, a2s[-2], b2s[-1]))
    da = db = None
    if needs[0]:
        da = sum_to_shape(np.matmul(d, np.swapaxes(b2, -1, -2)), a2s)
        da = da.reshape(a.shape).astype(a.dtype, copy=False)
    if needs[1]:
        db = sum_to_shape(np.matmul(np.swapaxes(a2, -1, -2), d), b2s)
        db = db.reshape(b.shape).astype(b.dtype, copy=False)
    return da, db


def _matmul_memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
    a2, b2, batch, _ = _promoted(tuple(shapes[0]), tuple(shapes[1]))
    n = math.prod(batch)
    # Before being summed back over broadcast batch axes, each gradient is batch-sized.
    return Memory(backward=n * (a2[-2] * a2[-1] + b2[-2] * b2[-1]) * isz)


def _matmul_per_sample(shapes: Sequence[Shape], batched: tuple[bool, ...], attrs: Any) -> bool:
    # A's leading axis (its rows when 2-D) is the batch; B a matrix or vector applied to each.
    return batched[0] and not batched[1] and len(shapes[0]) >= 2 and len(shapes[1]) <= 2


MATMUL = Op(
    name="matmul",
    inputs=("a", "b"),
    attrs=no_attrs,
    shape=_matmul_shape,
    forward=_matmul_forward,
    backward=_matmul_backward,
    memory=_matmul_memory,
    per_sample=_matmul_per_sample,
)
