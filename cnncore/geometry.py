"""Shape arithmetic of every layer, computed from shapes alone (no arrays).

This is the one place where output sizes, padding, parameter counts and FLOP
counts are defined. The operations, the reference loops, the HTTP service and
the tests all go through it.

The tutorial's formulas, for a square input of width ``W1``, kernel ``F``,
stride ``S`` and zero padding ``P``::

    convolution:  W2 = (W1 - F + 2P) / S + 1,   D2 = K (the number of kernels)
                  parameters = (F*F*D1 + 1) * D2
    pooling:      W2 = (W1 - F) / S + 1,         D2 = D1

Generalised to dilation ``d``, asymmetric padding and floor division (as in
PyTorch), one helper serves both::

    out = floor((size + pad_lo + pad_hi - d*(k - 1) - 1) / s) + 1

When the division is not exact, the last ``unused`` rows or columns of the input
are not covered by any window; :class:`LayerInfo` reports it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from .checks import Pair, as_pair, check_int, check_output_size, check_shape, short_repr
from .errors import ParameterError, ShapeError

Padding4 = tuple[int, int, int, int]
"""Resolved convolution padding: ``(top, bottom, left, right)``."""

PoolMode = Literal["max", "avg"]


# --------------------------------------------------------------------------- sizes


def conv_out_size(
    size: int, k: int, s: int, pad_lo: int, pad_hi: int, d: int = 1, *, ceil_mode: bool = False
) -> int:
    """Output length of a sliding window along one axis (may be <= 0: callers check).

    ``floor((size + pad_lo + pad_hi - d*(k-1) - 1) / s) + 1``, or with ``ceil_mode``
    the ceiling, keeping PyTorch's rule that the last window must start inside the
    input or the leading padding.
    """
    span = size + pad_lo + pad_hi - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if out > 0 and (out - 1) * s >= size + pad_lo:
        out -= 1
    return max(out, span // s + 1)  # never fewer windows than floor mode


def divides_exactly(size: int, k: int, s: int, pad_lo: int, pad_hi: int, d: int = 1) -> bool:
    """Whether the division in :func:`conv_out_size` is exact (the windows tile the span)."""
    return (size + pad_lo + pad_hi - d * (k - 1) - 1) % s == 0


def unused_size(size: int, k: int, s: int, pad_lo: int, out: int, d: int = 1) -> int:
    """How many trailing input rows (or columns) no window covers."""
    last_covered = (out - 1) * s + d * (k - 1)  # in padded coordinates
    return max(0, pad_lo + size - 1 - last_covered)


# --------------------------------------------------------------------------- padding


def resolve_conv_padding(padding: Any, kernel: Pair, stride: Pair, dilation: Pair) -> Padding4:
    """Resolve a convolution ``padding`` argument to ``(top, bottom, left, right)``.

    Accepted forms: an int, ``(ph, pw)``, ``(top, bottom, left, right)``,
    ``"valid"`` (no padding) and ``"same"`` (output size equals input size; stride 1
    only; when the total padding is odd the extra pixel goes to the bottom/right).

    Raises
    ------
    ParameterError
        For any other value, negative padding, or ``"same"`` with a stride above 1.
    """
    if (
        type(padding) is tuple
        and len(padding) == 4
        and all(type(p) is int and p >= 0 for p in padding)
    ):
        return padding  # already resolved (graph ops pass it so)
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            if stride != (1, 1):
                raise ParameterError(
                    f"padding='same' needs stride 1, got stride {stride}", arg="padding"
                )
            th = dilation[0] * (kernel[0] - 1)
            tw = dilation[1] * (kernel[1] - 1)
            return th // 2, th - th // 2, tw // 2, tw - tw // 2
        raise ParameterError(
            "padding must be an integer, a pair, a 4-tuple, 'same' or 'valid'; "
            f"got {short_repr(padding)}",
            arg="padding",
        )
    if isinstance(padding, Sequence):
        if len(padding) == 4:
            top, bottom, left, right = (
                check_int(p, f"padding[{i}]", minimum=0, arg="padding")
                for i, p in enumerate(padding)
            )
            return top, bottom, left, right
        if len(padding) != 2:
            raise ParameterError(
                "padding must be an integer, (ph, pw) or (top, bottom, left, right); "
                f"got {len(padding)} values",
                arg="padding",
            )
    ph, pw = as_pair(padding, "padding", minimum=0)
    return ph, ph, pw, pw


def resolve_pool_padding(padding: Any, kernel: Pair) -> Pair:
    """Resolve pooling ``padding`` (int or pair) and check it is at most half the kernel.

    Raises
    ------
    ParameterError
        If the padding is negative, malformed, or more than half the kernel size.
    """
    ph, pw = as_pair(padding, "padding", minimum=0)
    for axis, p, k in (("height", ph, kernel[0]), ("width", pw, kernel[1])):
        if 2 * p > k:
            raise ParameterError(
                f"pooling padding must be at most half the kernel size: {axis} padding {p} "
                f"with kernel {axis} {k} (max {k // 2})",
                arg="padding",
            )
    return ph, pw


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LayerInfo:
    """What one layer does to a shape, and what it costs.

    Attributes
    ----------
    input_shape, output_shape
        Shapes in and out.
    param_count
        Trainable parameters (weights plus biases).
    macs
        Multiply-accumulates of the forward pass.
    flops
        Floating point operations of the forward pass: ``2 * macs`` for conv and
        linear layers, one per window element for pooling, one per element for ReLU.
    exact
        Whether the output-size division was exact on every spatial axis.
    unused
        Trailing input ``(rows, cols)`` that no window covers (``(0, 0)`` when exact
        or for layers without windows).
    """

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    param_count: int
    macs: int
    flops: int
    exact: bool = True
    unused: Pair = (0, 0)

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python view (lists and ints), as the service sends it."""
        return {
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "param_count": self.param_count,
            "macs": self.macs,
            "flops": self.flops,
            "exact": self.exact,
            "unused": list(self.unused),
        }


@dataclass(frozen=True)
class Conv2dGeometry:
    """Resolved geometry of one convolution.

    Shapes: input ``(n, c, h, w)``, weight ``(f, c // groups, kh, kw)``, output
    ``(n, f, out_h, out_w)``. Padding is ``(pt, pb, pl, pr)``.
    """

    n: int
    c: int
    h: int
    w: int
    f: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pb: int
    pl: int
    pr: int
    groups: int
    bias: bool
    out_h: int
    out_w: int

    @property
    def padded_hw(self) -> tuple[int, int]:
        """Height and width of the zero-padded input."""
        return self.h + self.pt + self.pb, self.w + self.pl + self.pr

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.n, self.f, self.out_h, self.out_w

    @property
    def info(self) -> LayerInfo:
        cg = self.c // self.groups
        macs = self.n * self.f * self.out_h * self.out_w * cg * self.kh * self.kw
        unused = (
            unused_size(self.h, self.kh, self.sh, self.pt, self.out_h, self.dh),
            unused_size(self.w, self.kw, self.sw, self.pl, self.out_w, self.dw),
        )
        exact = divides_exactly(
            self.h, self.kh, self.sh, self.pt, self.pb, self.dh
        ) and divides_exactly(self.w, self.kw, self.sw, self.pl, self.pr, self.dw)
        return LayerInfo(
            input_shape=(self.n, self.c, self.h, self.w),
            output_shape=self.output_shape,
            param_count=self.f * cg * self.kh * self.kw + (self.f if self.bias else 0),
            macs=macs,
            flops=2 * macs,
            exact=exact,
            unused=unused,
        )


@dataclass(frozen=True)
class Pool2dGeometry:
    """Resolved geometry of one pooling layer over ``(n, c, h, w)`` with symmetric padding."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    mode: PoolMode
    ceil_mode: bool
    count_include_pad: bool
    out_h: int
    out_w: int

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.n, self.c, self.out_h, self.out_w

    @property
    def info(self) -> LayerInfo:
        exact = divides_exactly(self.h, self.kh, self.sh, self.ph, self.ph) and divides_exactly(
            self.w, self.kw, self.sw, self.pw, self.pw
        )
        return LayerInfo(
            input_shape=(self.n, self.c, self.h, self.w),
            output_shape=self.output_shape,
            param_count=0,
            macs=0,
            flops=self.n * self.c * self.out_h * self.out_w * self.kh * self.kw,
            exact=exact,
            unused=(
                unused_size(self.h, self.kh, self.sh, self.ph, self.out_h),
                unused_size(self.w, self.kw, self.sw, self.pw, self.out_w),
            ),
        )


# --------------------------------------------------------------------------- layers


def conv2d_geometry(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: Any = 1,
    bias: bool = True,
) -> Conv2dGeometry:
    """Check a convolution's shapes and hyper-parameters and resolve its geometry.

    Parameters
    ----------
    x_shape
        Input shape ``(N, C, H, W)``.
    w_shape
        Weight shape ``(F, C // groups, KH, KW)``.
    stride, padding, dilation, groups
        As for :func:`cnncore.conv2d_forward`.
    bias
        Whether the layer has a bias (for the parameter count).

    Raises
    ------
    ShapeError
        If the shapes do not fit together or the output would be empty.
    ParameterError
        If a hyper-parameter is malformed or out of range.
    """
    return _conv2d_geometry(x_shape, w_shape, stride, padding, dilation, groups, bias)


def _typed_key(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with the type of each (and of a tuple's items): ``True`` is not ``1``
    and ``(1, True)`` is not ``(1, 1)`` here, though they compare equal."""
    return tuple((type(a), a, tuple(map(type, a)) if type(a) is tuple else None) for a in args)


R = TypeVar("R")


def _remembered(check: Callable[..., R]) -> Callable[..., R]:
    """``check(*args)``, computed once per distinct argument list (:func:`_typed_key`;
    unhashable arguments, such as lists, are checked in full every time). A graph or a
    route asks again with the same shapes on every call, and a tiny layer's checks cost
    more than its arithmetic. Only results are remembered (they are frozen), never
    errors."""
    cached = functools.lru_cache(maxsize=1024)(lambda key: check(*(a for _, a, _ in key)))

    def remembered(*args: Any) -> R:
        key = _typed_key(args)
        try:
            hash(key)
        except TypeError:
            return check(*args)
        return cached(key)

    return remembered


@_remembered
def _conv2d_geometry(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    bias: Any,
) -> Conv2dGeometry:
    n, c, h, w = check_shape(x_shape, "x", 4)
    f, cg, kh, kw = check_shape(w_shape, "w", 4)
    sh, sw = as_pair(stride, "stride")
    dh, dw = as_pair(dilation, "dilation")
    groups = check_int(groups, "groups", minimum=1)
    if c % groups:
        raise ShapeError(f"x has {c} channels, which groups={groups} does not divide", arg="x")
    if f % groups:
        raise ShapeError(f"w has {f} filters, which groups={groups} does not divide", arg="w")
    if cg * groups != c:
        raise ShapeError(
            f"w has {cg} input channels but x has {c} (groups={groups}, so w needs {c // groups})",
            arg="w",
        )
    pt, pb, pl, pr = resolve_conv_padding(padding, (kh, kw), (sh, sw), (dh, dw))
    out_h = conv_out_size(h, kh, sh, pt, pb, dh)
    out_w = conv_out_size(w, kw, sw, pl, pr, dw)
    check_output_size("height", out_h, h, kh, sh, pt, pb, dh)
    check_output_size("width", out_w, w, kw, sw, pl, pr, dw)
    return Conv2dGeometry(
        n, c, h, w, f, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr, groups, bool(bias), out_h, out_w
    )


def pool2d_geometry(
    x_shape: Sequence[int],
    *,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    mode: Any = "max",
    ceil_mode: Any = False,
    count_include_pad: Any = True,
) -> Pool2dGeometry:
    """Check a pooling layer's shape and hyper-parameters and resolve its geometry.

    The tutorial's ``W2 = (W1 - F) / S + 1``, with symmetric padding ``P`` on each
    side and PyTorch's ``ceil_mode``. ``stride=None`` means the kernel size.

    Raises
    ------
    ShapeError
        If ``x_shape`` is not 4-D or the output would be empty.
    ParameterError
        If a hyper-parameter is malformed, or the padding exceeds half the kernel.
    """
    return _pool2d_geometry(
        x_shape, kernel_size, stride, padding, mode, ceil_mode, count_include_pad
    )


@_remembered
def _pool2d_geometry(
    x_shape: Sequence[int],
    kernel_size: Any,
    stride: Any,
    padding: Any,
    mode: Any,
    ceil_mode: Any,
    count_include_pad: Any,
) -> Pool2dGeometry:
    n, c, h, w = check_shape(x_shape, "x", 4)
    kh, kw = as_pair(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None else as_pair(stride, "stride")
    ph, pw = resolve_pool_padding(padding, (kh, kw))
    if mode not in ("max", "avg"):
        raise ParameterError(f"mode must be 'max' or 'avg', got {short_repr(mode)}", arg="mode")
    for name, flag in (("ceil_mode", ceil_mode), ("count_include_pad", count_include_pad)):
        if not isinstance(flag, bool):
            raise ParameterError(f"{name} must be true or false, got {short_repr(flag)}", arg=name)
    out_h = conv_out_size(h, kh, sh, ph, ph, ceil_mode=ceil_mode)
    out_w = conv_out_size(w, kw, sw, pw, pw, ceil_mode=ceil_mode)
    check_output_size("height", out_h, h, kh, sh, ph, ph, 1)
    check_output_size("width", out_w, w, kw, sw, pw, pw, 1)
    return Pool2dGeometry(
        n, c, h, w, kh, kw, sh, sw, ph, pw, mode, ceil_mode, count_include_pad, out_h, out_w
    )


def linear_info(x_shape: Sequence[int], w_shape: Sequence[int], *, bias: bool = True) -> LayerInfo:
    """Check a fully connected layer: ``x (N, D1..Dk)`` used as ``(N, D)``, ``w (D, M)``.

    Raises
    ------
    ShapeError
        If ``x`` has fewer than 2 dimensions or ``D`` differs from ``w``'s rows.
    """
    return _linear_info(x_shape, w_shape, bias)


@_remembered
def _linear_info(x_shape: Sequence[int], w_shape: Sequence[int], bias: Any) -> LayerInfo:
    xs = check_shape(x_shape, "x", min_ndim=2)
    d_in, m = check_shape(w_shape, "w", 2)
    d = math.prod(xs[1:])
    if d != d_in:
        feat = f" ({'×'.join(map(str, xs[1:]))} = {d})" if len(xs) > 2 else ""
        raise ShapeError(
            f"w has {d_in} rows but x has {d} features per sample{feat}; w must be ({d}, {m})",
            arg="w",
        )
    macs = xs[0] * d * m
    return LayerInfo(
        input_shape=xs,
        output_shape=(xs[0], m),
        param_count=d * m + (m if bias else 0),
        macs=macs,
        flops=2 * macs,
    )


def elementwise_info(x_shape: Sequence[int]) -> LayerInfo:
    """Shape info of an element-wise layer such as ReLU (one FLOP per element)."""
    xs = check_shape(x_shape, "x")
    return LayerInfo(xs, xs, 0, 0, math.prod(xs))


def flatten_info(x_shape: Sequence[int]) -> LayerInfo:
    """Shape info of flattening ``(N, D1..Dk)`` to ``(N, D1*...*Dk)``; no arithmetic."""
    xs = check_shape(x_shape, "x", min_ndim=1)
    return LayerInfo(xs, (xs[0], math.prod(xs[1:])), 0, 0, 0)


# The older private names, for callers outside cnncore written against them.
_check_shape = check_shape
_short = short_repr
