"""The layer operations of :mod:`cnncore` as graph ops: conv2d, pool2d, linear, relu, identity.

Each op delegates to the layer function (:func:`cnncore.conv2d_forward` and its
kin), so a graph node computes exactly what the function computes; what is added
here is the attribute checking, the shape rule and the memory estimate the graph
engine needs (see :mod:`cnncore.op`).

``pool2d`` takes ONNX-style padding ``(top, bottom, left, right)``. Symmetric
padding of at most half the kernel goes straight to :func:`cnncore.pool2d_forward`;
any other padding (asymmetric, or up to the kernel size minus one) pads the input
explicitly (``-inf`` for max, zeros for average) and pools it without padding,
rescaling an average by the window's true divisor, so the result keeps PyTorch's
rules (a ``ceil_mode`` window starts inside the input or the leading padding;
``count_include_pad`` counts the cells inside the padded input). One difference
remains for max pooling: a window whose input cells are all ``-inf`` sends its
gradient to a padding cell (it is lost), where the symmetric path gives it to the
window's first input cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .activations import relu_backward, relu_forward, relu_into
from .checks import as_float_array, as_pair, check_int, check_output_size, check_shape
from .conv import conv2d_backward, conv2d_forward, conv2d_inference, conv2d_plan
from .errors import ParameterError, ShapeError
from .geometry import (
    Conv2dGeometry,
    conv2d_geometry,
    conv_out_size,
    linear_info,
    pool2d_geometry,
    resolve_conv_padding,
)
from .linear import linear_backward, linear_forward
from .op import Memory, Op, Shape, attr_bool, first_only, nbytes, no_attrs
from .pool import max_pool_bytes, pool2d_backward, pool2d_forward, pool2d_inference

# --------------------------------------------------------------------------- conv2d


def _conv_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    stride = as_pair(raw.get("stride", 1), "stride")
    dilation = as_pair(raw.get("dilation", 1), "dilation")
    groups = check_int(raw.get("groups", 1), "groups", minimum=1)
    padding = raw.get("padding", 0)
    if not isinstance(padding, str):  # "same" needs the kernel: resolved with the shapes
        padding = resolve_conv_padding(padding, (1, 1), stride, dilation)
    else:
        resolve_conv_padding(padding, (1, 1), stride, dilation)  # its own checks
    return {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}


def _conv_geometry(shapes: Sequence[Shape], attrs: dict[str, Any]) -> Conv2dGeometry:
    g = conv2d_geometry(shapes[0], shapes[1], bias=len(shapes) == 3, **attrs)
    if len(shapes) == 3 and tuple(shapes[2]) != (g.f,):
        raise ShapeError(f"b must have shape ({g.f},) (one per filter), got {shapes[2]}", arg="b")
    return g


def _conv_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    g = _conv_geometry(shapes, attrs)
    return g.output_shape, g.info.flops


def _conv_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    return conv2d_forward(*inputs, **attrs)


def _conv_infer(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return conv2d_inference(*inputs, **attrs)


def _conv_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    dx, dw, db = conv2d_backward(dout, cache)
    return (dx, dw, db)[: len(needs)]


def _conv_memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
    """The memory of the plan :func:`cnncore.conv.conv2d_plan` chooses for these shapes."""
    return conv2d_plan(_conv_geometry(shapes, attrs), isz).memory()


CONV2D = Op(
    name="conv2d",
    inputs=("x", "w", "b"),
    optional=1,
    attr_names=("stride", "padding", "dilation", "groups"),
    attrs=_conv_attrs,
    shape=_conv_shape,
    forward=_conv_forward,
    backward=_conv_backward,
    memory=_conv_memory,
    infer=_conv_infer,
    per_sample=first_only,
)


# --------------------------------------------------------------------------- pool2d


def _pool_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    if "kernel_size" not in raw:
        raise ParameterError("pool2d needs kernel_size", arg="kernel_size")
    kernel = as_pair(raw["kernel_size"], "kernel_size")
    stride = raw.get("stride")
    stride = kernel if stride is None else as_pair(stride, "stride")
    mode = raw.get("mode", "max")
    if mode not in ("max", "avg"):
        raise ParameterError(f"mode must be 'max' or 'avg', got {mode!r:.40}", arg="mode")
    padding = resolve_conv_padding(raw.get("padding", 0), kernel, stride, (1, 1))
    for (lo, hi), k, axis in zip(
        (padding[:2], padding[2:]), kernel, ("height", "width"), strict=True
    ):
        if max(lo, hi) >= k:
            raise ParameterError(
                f"pooling padding must be smaller than the kernel: {axis} padding "
                f"({lo}, {hi}) with kernel {axis} {k}",
                arg="padding",
            )
    return {
        "mode": mode,
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "ceil_mode": attr_bool(raw.get("ceil_mode", False), "ceil_mode"),
        "count_include_pad": attr_bool(raw.get("count_include_pad", True), "count_include_pad"),
    }


def _symmetric(attrs: dict[str, Any]) -> tuple[int, int] | None:
    """``(ph, pw)`` when the padding is what :func:`cnncore.pool2d_forward` takes, else None."""
    top, bottom, left, right = attrs["padding"]
    kh, kw = attrs["kernel_size"]
    if top == bottom and left == right and 2 * top <= kh and 2 * left <= kw:
        return top, left
    return None


def _pool_kwargs(attrs: dict[str, Any], padding: Any) -> dict[str, Any]:
    return {**attrs, "padding": padding}


def _pool_geometry(
    shape: Shape, attrs: dict[str, Any]
) -> tuple[int, int, int, int, int, int, int, int]:
    """``(n, c, h, w, out_h, out_w, extra_bottom, extra_right)`` of the explicit-padding path:
    the extra trailing padding makes every output window fit the padded input."""
    n, c, h, w = check_shape(shape, "x", 4)
    kh, kw = attrs["kernel_size"]
    sh, sw = attrs["stride"]
    top, bottom, left, right = attrs["padding"]
    ceil = attrs["ceil_mode"]
    out_h = conv_out_size(h, kh, sh, top, bottom, ceil_mode=ceil)
    out_w = conv_out_size(w, kw, sw, left, right, ceil_mode=ceil)
    check_output_size("height", out_h, h, kh, sh, top, bottom, 1)
    check_output_size("width", out_w, w, kw, sw, left, right, 1)
    eb = max(bottom, (out_h - 1) * sh + kh - h - top)
    er = max(right, (out_w - 1) * sw + kw - w - left)
    return n, c, h, w, out_h, out_w, eb, er


def _pool_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    n, c, _, _, out_h, out_w, _, _ = _pool_geometry(shapes[0], attrs)
    kh, kw = attrs["kernel_size"]
    return (n, c, out_h, out_w), n * c * out_h * out_w * kh * kw


def _window_divisor(
    out: int, s: int, k: int, lo: int, hi: int, size: int, include_pad: bool
) -> np.ndarray:
    """Counted cells of each window along one axis, PyTorch's rule with padding ``lo``/``hi``."""
    start = np.arange(out) * s - lo
    stop = np.minimum(start + k, size + hi)
    if include_pad:
        return stop - start
    return np.minimum(stop, size) - np.maximum(start, 0)


def _pool_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    (x,) = inputs
    sym = _symmetric(attrs)
    if sym is not None:
        out, cache = pool2d_forward(x, **_pool_kwargs(attrs, sym))
        return out, (cache, None, None)
    x = as_float_array(x, "x")
    _, _, h, w, out_h, out_w, eb, er = _pool_geometry(x.shape, attrs)
    top, bottom, left, right = attrs["padding"]
    fill = -np.inf if attrs["mode"] == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (top, eb), (left, er)), constant_values=fill)
    kwargs = {**_pool_kwargs(attrs, 0), "ceil_mode": False, "count_include_pad": True}
    out, cache = pool2d_forward(xp, **kwargs)
    scale = None
    if attrs["mode"] == "avg":
        (kh, kw), (sh, sw) = attrs["kernel_size"], attrs["stride"]
        include = attrs["count_include_pad"]
        rows = _window_divisor(out_h, sh, kh, top, bottom, h, include)
        cols = _window_divisor(out_w, sw, kw, left, right, w, include)
        scale = (kh * kw / np.multiply.outer(rows, cols)).astype(x.dtype)
        out *= scale  # the op divided by the whole window: use the true divisor instead
    return out, (cache, scale, (top, left, h, w))


def _pool_infer(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    """:func:`_pool_forward`'s output for ``forward(x, backward=False)``: symmetric max
    pooling skips the first-maximum bookkeeping (see :func:`cnncore.pool.pool2d_inference`)."""
    sym = _symmetric(attrs)
    if attrs["mode"] != "max" or sym is None:
        return _pool_forward(inputs, attrs)[0]
    return pool2d_inference(inputs[0], **_pool_kwargs(attrs, sym))


def _pool_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    inner, scale, crop = cache
    if crop is None:
        return (pool2d_backward(dout, inner),)
    if scale is not None:
        dout = dout * scale
    top, left, h, w = crop
    dxp = pool2d_backward(dout, inner)
    return (np.ascontiguousarray(dxp[:, :, top : top + h, left : left + w]),)


def _pool_memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
    """Max: the buffers :func:`cnncore.pool.max_pool_bytes` counts, and the index of each
    window's first maximum (cached). Average (generous): the padded input and window sums
    per input row (forward), a padded dX and the shares (backward). With padding the
    pooling functions do not take, the explicitly padded copy (and its cache)."""
    n, c, h, w, out_h, out_w, eb, er = _pool_geometry(shapes[0], attrs)
    top, _, left, _ = attrs["padding"]
    padded = n * c * (h + top + eb) * (w + left + er)
    o = n * c * out_h * out_w
    sym = _symmetric(attrs)
    extra = padded * isz if sym is None else 0  # the explicitly padded copy (forward and dx)
    if attrs["mode"] == "max":
        if sym is None:
            kwargs = {**_pool_kwargs(attrs, 0), "ceil_mode": False, "count_include_pad": True}
            geom = pool2d_geometry((n, c, h + top + eb, w + left + er), **kwargs)
        else:
            geom = pool2d_geometry(tuple(shapes[0]), **_pool_kwargs(attrs, sym))
        forward, backward = max_pool_bytes(geom, isz)
        cache = o * np.min_scalar_type(geom.kh * geom.kw - 1).itemsize
    else:
        rows = n * c * (h + top + eb) * out_w
        cache = 0
        forward = padded * isz + rows * isz + o * 8
        backward = padded * isz + 2 * o * 8
    return Memory(
        cache=cache + (8 * o if sym is None else 0),
        forward=forward + extra,
        backward=backward + extra,
    )


POOL2D = Op(
    name="pool2d",
    inputs=("x",),
    attr_names=("mode", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    attrs=_pool_attrs,
    shape=_pool_shape,
    forward=_pool_forward,
    backward=_pool_backward,
    infer=_pool_infer,
    memory=_pool_memory,
    per_sample=first_only,
)


# --------------------------------------------------------------------------- linear


def _linear_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    info = linear_info(shapes[0], shapes[1], bias=len(shapes) == 3)
    m = shapes[1][1]
    if len(shapes) == 3 and tuple(shapes[2]) != (m,):
        raise ShapeError(f"b must have shape ({m},) (one per output), got {shapes[2]}", arg="b")
    return info.output_shape, info.flops


def _linear_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    return linear_forward(*inputs)


def _linear_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    dx, dw, db = linear_backward(dout, cache)
    return (dx, dw, db)[: len(needs)]


def _linear_memory(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any], isz: int) -> Memory:
    # A non-contiguous x would be copied by its reshape to (N, D): count it.
    return Memory(cache=nbytes(shapes[0], isz))


LINEAR = Op(
    name="linear",
    inputs=("x", "w", "b"),
    optional=1,
    attrs=no_attrs,
    shape=_linear_shape,
    forward=_linear_forward,
    backward=_linear_backward,
    memory=_linear_memory,
    per_sample=first_only,
)


# --------------------------------------------------------------------------- relu, identity


def _same_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    shape = check_shape(shapes[0], "x")
    return shape, math.prod(shape)


def _relu_forward(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, Any]:
    return relu_forward(inputs[0])


def _relu_overwrite(inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return relu_into(inputs[0], inputs[0])


def _relu_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    return (relu_backward(dout, cache),)


RELU = Op(
    name="relu",
    inputs=("x",),
    attrs=no_attrs,
    shape=_same_shape,
    forward=_relu_forward,
    backward=_relu_backward,
    per_sample=first_only,
    overwrite=_relu_overwrite,
)


def _identity_shape(shapes: Sequence[Shape], attrs: dict[str, Any]) -> tuple[Shape, int]:
    return tuple(shapes[0]), 0


def _identity_forward(
    inputs: Sequence[np.ndarray], attrs: dict[str, Any]
) -> tuple[np.ndarray, Any]:
    return inputs[0], None


def _identity_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    return (dout,)


IDENTITY = Op(
    name="identity",
    inputs=("x",),
    attrs=no_attrs,
    shape=_identity_shape,
    forward=_identity_forward,
    backward=_identity_backward,
    per_sample=first_only,
)
