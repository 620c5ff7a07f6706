"""A stack of layers walked shape by shape: output shapes, parameters and FLOPs, no arrays.

Layers are described by small frozen dataclasses (:class:`Conv2dSpec`,
:class:`Pool2dSpec`, :class:`ReluSpec`, :class:`FlattenSpec`, :class:`LinearSpec`)
whose fields and defaults are those of the matching :mod:`cnncore` operation; a
convolution's input channels and a linear layer's input features come from the
shape arriving at the layer. :func:`walk_shapes` applies them in order through
:mod:`cnncore.geometry`, so every number agrees with what the operations do.

A linear layer after a 4-D activation flattens it implicitly, as
:func:`cnncore.linear_forward` does: ``(N, C, H, W)`` is used as ``(N, C*H*W)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .checks import as_pair, check_shape
from .errors import CnnError, LayerError, ShapeError
from .geometry import (
    LayerInfo,
    PoolMode,
    conv2d_geometry,
    elementwise_info,
    flatten_info,
    linear_info,
    pool2d_geometry,
)


@dataclass(frozen=True)
class Conv2dSpec:
    """A convolution with ``out_channels`` filters; input channels come from the input."""

    out_channels: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True
    type: Literal["conv2d"] = "conv2d"

    def param_shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Shapes of ``w`` ``(F, C // groups, KH, KW)`` and ``b`` ``(F,)`` (if any)."""
        kh, kw = as_pair(self.kernel_size, "kernel_size")
        shapes: dict[str, tuple[int, ...]] = {
            "w": (self.out_channels, input_shape[1] // self.groups, kh, kw)
        }
        if self.bias:
            shapes["b"] = (self.out_channels,)
        return shapes

    def info(self, input_shape: Sequence[int]) -> LayerInfo:
        c = input_shape[1]
        # Checked here, in the layer's own terms, before a weight shape is derived from them.
        for arg, what, n in (
            ("groups", "the input has", c),
            ("out_channels", "out_channels asks for", self.out_channels),
        ):
            if n % self.groups:
                raise ShapeError(
                    f"{what} {n} channels, which groups={self.groups} does not divide", arg=arg
                )
        return conv2d_geometry(
            input_shape,
            self.param_shapes(input_shape)["w"],
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias,
        ).info


@dataclass(frozen=True)
class Pool2dSpec:
    """Max or average pooling; ``stride=None`` means the kernel size."""

    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    mode: PoolMode = "max"
    ceil_mode: bool = False
    count_include_pad: bool = True
    type: Literal["pool2d"] = "pool2d"

    def param_shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Pooling has no parameters."""
        return {}

    def info(self, input_shape: Sequence[int]) -> LayerInfo:
        return pool2d_geometry(
            input_shape,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            mode=self.mode,
            ceil_mode=self.ceil_mode,
            count_include_pad=self.count_include_pad,
        ).info


@dataclass(frozen=True)
class ReluSpec:
    """Element-wise ``max(0, x)``."""

    type: Literal["relu"] = "relu"

    def param_shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """ReLU has no parameters."""
        return {}

    def info(self, input_shape: Sequence[int]) -> LayerInfo:
        return elementwise_info(input_shape)


@dataclass(frozen=True)
class FlattenSpec:
    """``(N, D1..Dk)`` to ``(N, D1*...*Dk)``."""

    type: Literal["flatten"] = "flatten"

    def param_shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Flatten has no parameters."""
        return {}

    def info(self, input_shape: Sequence[int]) -> LayerInfo:
        return flatten_info(input_shape)


@dataclass(frozen=True)
class LinearSpec:
    """A fully connected layer to ``out_features``; flattens a >2-D input implicitly."""

    out_features: int
    bias: bool = True
    type: Literal["linear"] = "linear"

    def param_shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Shapes of ``w`` ``(D, M)`` and ``b`` ``(M,)`` (if any), ``D`` the input features."""
        shapes: dict[str, tuple[int, ...]] = {"w": (math.prod(input_shape[1:]), self.out_features)}
        if self.bias:
            shapes["b"] = (self.out_features,)
        return shapes

    def info(self, input_shape: Sequence[int]) -> LayerInfo:
        return linear_info(input_shape, self.param_shapes(input_shape)["w"], bias=self.bias)


LayerSpec = Conv2dSpec | Pool2dSpec | ReluSpec | FlattenSpec | LinearSpec

#: Layers that need an ``(N, C, H, W)`` input.
_NEEDS_4D = ("conv2d", "pool2d")


def walk_shapes(input_shape: Sequence[int], layers: Sequence[LayerSpec]) -> list[LayerInfo]:
    """Apply ``layers`` in order to ``input_shape``; one :class:`LayerInfo` per layer.

    Parameters
    ----------
    input_shape
        Shape of the network's input: ``(N, C, H, W)`` before conv/pool layers,
        ``(N, D1, ..., Dk)`` for a stack that starts with linear, relu or flatten.
    layers
        Layer descriptions; their own fields are expected to be well-typed (the
        HTTP layer validates them), the fit between layers is checked here.

    Returns
    -------
    list of LayerInfo
        ``infos[i].output_shape`` is ``infos[i + 1].input_shape``.

    Raises
    ------
    ShapeError
        If ``input_shape`` is not a shape of positive integers (``arg="input_shape"``).
    LayerError
        If layer ``i`` does not fit the shape arriving at it (a convolution or pooling
        after a flatten, a channel count its ``groups`` does not divide, an output
        size that would be non-positive...). ``index`` is ``i``; the message starts
        with ``layer i (type)`` and, for sizes, gives the formula with its numbers.
    """
    shape = check_shape(input_shape, "input_shape", min_ndim=2)
    infos: list[LayerInfo] = []
    for i, layer in enumerate(layers):
        where = f"layer {i} ({layer.type})"
        if layer.type in _NEEDS_4D and len(shape) != 4:
            raise LayerError(f"{where} needs a 4-D input (N, C, H, W), got shape {shape}", index=i)
        try:
            info = layer.info(shape)
        except CnnError as exc:
            # "x" is the activation arriving at the layer: the layer as a whole is at fault.
            arg = None if exc.arg in ("x", "w") else exc.arg
            raise LayerError(f"{where}: {exc.message}", index=i, arg=arg) from None
        infos.append(info)
        shape = info.output_shape
    return infos
