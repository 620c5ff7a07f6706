"""A whole network: conv, pooling, ReLU, flatten and fully connected layers in sequence.

The tutorial's CNN is ``INPUT -> [[CONV -> RELU]*N -> POOL?]*M -> [FC -> RELU]*K -> FC``.
Here such a stack runs forward and backward in one call, with the layer
operations of :mod:`cnncore` chained through their caches::

    out, cache = network_forward(x, layers)
    loss, dout = network_loss(out, SoftmaxCrossEntropy(y))  # or MeanSquaredError(target)
    dx, grads = network_backward(dout, cache)               # or any dout of out's shape

Layers with parameters carry their arrays (:class:`Conv2d`, :class:`Linear`);
layers without are the shape specs of :mod:`cnncore.network_shapes`
(:class:`~cnncore.network_shapes.Pool2dSpec`, :class:`~cnncore.network_shapes.ReluSpec`,
:class:`~cnncore.network_shapes.FlattenSpec`). Everything is validated from shapes
before anything is computed (:func:`network_info`), and every error names the layer:
a :class:`~cnncore.network_shapes.LayerError` with the layer's ``index`` and the
field at fault in ``arg`` (``"w"``, ``"b"``, ``"kernel_size"``...).

The passes run on the one graph engine: :func:`network_graph` turns the stack into
a chain of :class:`cnncore.graph.Graph` nodes (node ``"i"`` for layer ``i``,
parameters ``"i.w"`` and ``"i.b"``, input ``"x"``, output ``"out"``), and
:func:`network_forward` / :func:`network_backward` run that graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .checks import as_float_array, check_int, check_shape
from .errors import CnnError, ShapeError
from .geometry import LayerInfo
from .graph import Graph, GraphCache, GraphError, Node
from .losses import check_labels, mse_loss, softmax_cross_entropy
from .network_shapes import (
    Conv2dSpec,
    FlattenSpec,
    LayerError,
    LayerSpec,
    LinearSpec,
    Pool2dSpec,
    ReluSpec,
    walk_shapes,
)


@dataclass(frozen=True)
class Conv2d:
    """A convolution layer with its parameters, as for :func:`cnncore.conv2d_forward`.

    Attributes
    ----------
    w : array_like, shape (F, C // groups, KH, KW)
    b : array_like, shape (F,), or None
    stride, padding, dilation, groups
        Hyper-parameters with :func:`cnncore.conv2d_forward`'s meaning and defaults.
    """

    w: Any
    b: Any = None
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: Any = 1
    type: Literal["conv2d"] = "conv2d"

    def spec(self) -> Conv2dSpec:
        """The shape description of this layer (``w`` must be 4-D)."""
        f, _, kh, kw = np.shape(self.w)
        return Conv2dSpec(
            out_channels=f,
            kernel_size=(kh, kw),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.b is not None,
        )


@dataclass(frozen=True)
class Linear:
    """A fully connected layer with its parameters, as for :func:`cnncore.linear_forward`.

    Attributes
    ----------
    w : array_like, shape (D, M)
        ``D`` is the number of features per sample arriving at the layer (a 4-D
        input is flattened implicitly).
    b : array_like, shape (M,), or None
    """

    w: Any
    b: Any = None
    type: Literal["linear"] = "linear"

    def spec(self) -> LinearSpec:
        """The shape description of this layer (``w`` must be 2-D)."""
        return LinearSpec(out_features=np.shape(self.w)[1], bias=self.b is not None)


Layer = Conv2d | Pool2dSpec | ReluSpec | FlattenSpec | Linear
"""One layer of a network."""


@dataclass(frozen=True)
class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy over the batch (:func:`cnncore.softmax_cross_entropy`).

    Attributes
    ----------
    y : array_like of int, shape (N,)
        Class labels, ``0 <= y[i] < C`` for an output of shape ``(N, C)``.
    """

    y: Any
    type: Literal["softmax_cross_entropy"] = "softmax_cross_entropy"


@dataclass(frozen=True)
class MeanSquaredError:
    """``mean((out - target) ** 2)`` over all elements (:func:`cnncore.mse_loss`).

    Attributes
    ----------
    target : array_like, shape of the network output
    """

    target: Any
    type: Literal["mse"] = "mse"


Loss = SoftmaxCrossEntropy | MeanSquaredError
"""A loss on the network output."""


@dataclass
class NetworkCache:
    """What :func:`network_backward` needs: the layers, their graph and its cache."""

    layers: Sequence[Layer]
    graph: Graph
    graph_cache: GraphCache
    activations: list[np.ndarray]
    """The output of each layer, in order (the last one is the network output)."""


# --------------------------------------------------------------------------- shapes


def network_info(x_shape: Sequence[int], layers: Sequence[Layer]) -> list[LayerInfo]:
    """Check that ``layers`` fit an input of shape ``x_shape``; describe each layer.

    Uses :func:`cnncore.network_shapes.walk_shapes` for the shapes, then checks
    each weight and bias against the shape its layer expects.

    Parameters
    ----------
    x_shape
        Shape of the network input: ``(N, C, H, W)`` before conv/pool layers,
        ``(N, D1, ..., Dk)`` for a stack that starts with linear, relu or flatten.
    layers
        The layers, input first.

    Returns
    -------
    list of LayerInfo
        One per layer: input and output shapes, parameter count, FLOPs.

    Raises
    ------
    LayerError
        If layer ``i`` does not fit: ``index`` is ``i``, ``arg`` the field at fault
        (``"w"`` or ``"b"`` for parameters of the wrong shape, a hyper-parameter's
        name, or ``None`` when the layer as a whole does not fit the shape arriving
        at it). The message starts with ``layer i (type)`` and gives the shapes.
    ShapeError
        If ``x_shape`` is not a shape of at least 2 positive integers (``arg="x"``).
    """
    x_shape = check_shape(x_shape, "x", min_ndim=2)
    for i, layer in enumerate(layers):
        _check_weights(i, layer)
    infos = walk_shapes(x_shape, [_spec(layer) for layer in layers])
    for i, (layer, info) in enumerate(zip(layers, infos, strict=True)):
        _check_params(i, layer, info.input_shape, layers)
    return infos


def _spec(layer: Layer) -> LayerSpec:
    return layer.spec() if isinstance(layer, Conv2d | Linear) else layer


def _check_weights(i: int, layer: Layer) -> None:
    """What a spec is read off: ``w`` of the right rank, ``F`` divisible by ``groups``."""
    if not isinstance(layer, Conv2d | Linear):
        return
    ndim, layout = (4, "(F, C // groups, KH, KW)") if layer.type == "conv2d" else (2, "(D, M)")
    w_shape = np.shape(layer.w)
    if len(w_shape) != ndim or 0 in w_shape:
        raise LayerError(
            f"layer {i} ({layer.type}): w must be a non-empty {ndim}-D array {layout}, "
            f"got shape {w_shape}",
            index=i,
            arg="w",
        )
    if isinstance(layer, Conv2d):
        try:
            groups = check_int(layer.groups, "groups", minimum=1)
        except CnnError as exc:
            raise LayerError(f"layer {i} (conv2d): {exc.message}", index=i, arg=exc.arg) from None
        if w_shape[0] % groups:  # the spec would call it out_channels
            raise LayerError(
                f"layer {i} (conv2d): w has {w_shape[0]} filters, "
                f"which groups={groups} does not divide",
                index=i,
                arg="w",
            )


def _check_params(i: int, layer: Layer, x_shape: tuple[int, ...], layers: Sequence[Layer]) -> None:
    """``w`` and ``b`` against the shapes the layer's input asks for."""
    if not isinstance(layer, Conv2d | Linear):
        return
    expected = layer.spec().param_shapes(x_shape)
    w_shape = tuple(np.shape(layer.w))
    source = "the input x" if i == 0 else f"layer {i - 1} ({layers[i - 1].type})"
    if w_shape != expected["w"]:
        if isinstance(layer, Conv2d):
            detail = (
                f"{x_shape[1]} channels / groups={layer.groups} = {expected['w'][1]} input "
                f"channels per filter, but w has {w_shape[1]}"
            )
        else:
            d = math.prod(x_shape[1:])
            feat = f"{'×'.join(map(str, x_shape[1:]))} = {d}" if len(x_shape) > 2 else str(d)
            detail = f"{feat} features per sample, but w has {w_shape[0]} rows"
        raise LayerError(
            f"layer {i} ({layer.type}) expects w of shape {expected['w']}, got {w_shape}: "
            f"{source} gives shape {x_shape}, {detail}",
            index=i,
            arg="w",
        )
    if layer.b is not None and tuple(np.shape(layer.b)) != expected["b"]:
        unit = "filter" if isinstance(layer, Conv2d) else "output"
        raise LayerError(
            f"layer {i} ({layer.type}) expects b of shape {expected['b']} (one per {unit}), "
            f"got {tuple(np.shape(layer.b))}",
            index=i,
            arg="b",
        )


def check_loss(loss: Loss, out_shape: Sequence[int]) -> None:
    """Check a loss against the network output's shape, before anything is computed.

    Raises
    ------
    ShapeError
        Softmax cross-entropy on an output that is not ``(N, C)`` (``arg`` None),
        labels ``y`` that are not ``(N,)`` (``"y"``), or an MSE ``target`` of
        another shape (``"target"``).
    DtypeError
        Labels that are not integers.
    ParameterError
        A label outside ``[0, C)``.
    """
    out_shape = tuple(out_shape)
    if isinstance(loss, SoftmaxCrossEntropy):
        if len(out_shape) != 2:
            raise ShapeError(
                "softmax cross-entropy needs a 2-D output (N, classes); the network "
                f"output has shape {out_shape} (end with flatten and linear layers)",
            )
        check_labels(loss.y, *out_shape)
    elif tuple(np.shape(loss.target)) != out_shape:
        raise ShapeError(
            f"target has shape {tuple(np.shape(loss.target))} but the network output has "
            f"shape {out_shape}",
            arg="target",
        )


# --------------------------------------------------------------------------- passes


def network_graph(layers: Sequence[Layer], dtype: Any = None) -> Graph:
    """The stack as a chain of graph nodes, one per layer.

    Node ``"i"`` runs layer ``i`` (op ``conv2d``, ``pool2d``, ``relu``, ``flatten`` or
    ``linear``, with the layer's hyper-parameters); its output is the tensor
    ``"i.out"`` (``"out"`` for the last layer). The parameters are ``"i.w"`` and
    ``"i.b"`` (the contract's native names: ``"0.w"``), the input is ``"x"``.

    Parameters
    ----------
    layers
        The layers, input first. Shapes are not checked here (see :func:`network_info`).
    dtype
        As :class:`cnncore.graph.Graph`: None lets each layer promote its operands
        (float64 if any is float64), as :func:`network_forward` always has.

    Returns
    -------
    Graph

    Raises
    ------
    LayerError
        If a layer's weights are not real numeric arrays or a hyper-parameter is
        malformed (``"layer i (type): ..."``, ``arg`` the field).
    """
    nodes, params = [], {}
    tensor = "x"
    for i, layer in enumerate(layers):
        inputs: tuple[str, ...] = (tensor,)
        attrs: dict[str, Any] = {}
        if isinstance(layer, (Conv2d, Linear)):
            for name in ("w", "b"):
                value = getattr(layer, name)
                if value is None:
                    continue
                try:
                    params[f"{i}.{name}"] = as_float_array(value, name)
                except CnnError as exc:
                    raise LayerError(
                        f"layer {i} ({layer.type}): {exc.message}", index=i, arg=exc.arg
                    ) from None
                inputs += (f"{i}.{name}",)
        if isinstance(layer, Conv2d):
            attrs = {
                "stride": layer.stride,
                "padding": layer.padding,
                "dilation": layer.dilation,
                "groups": layer.groups,
            }
        elif isinstance(layer, Pool2dSpec):
            attrs = {
                "mode": layer.mode,
                "kernel_size": layer.kernel_size,
                "stride": layer.stride,
                "padding": layer.padding,
                "ceil_mode": layer.ceil_mode,
                "count_include_pad": layer.count_include_pad,
            }
        tensor = "out" if i == len(layers) - 1 else f"{i}.out"
        nodes.append(Node(str(i), layer.type, inputs, tensor, attrs))
    try:
        return Graph(nodes, params=params, dtype=dtype)
    except GraphError as exc:
        raise _layer_error(exc, layers) from None


def _layer_error(exc: GraphError, layers: Sequence[Layer]) -> LayerError:
    """A graph error about node ``"i"``, told as the network's error about layer ``i``."""
    i = int(exc.node or 0)
    return LayerError(f"layer {i} ({layers[i].type}): {exc.detail}", index=i, arg=exc.arg)


def network_forward(x: Any, layers: Sequence[Layer]) -> tuple[np.ndarray, NetworkCache]:
    """Run ``layers`` in order on ``x``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) (or (N, D1, ..., Dk) for a stack without conv/pool)
        float32 or float64 (kept); integer or bool (converted to float64).
    layers
        The layers, input first; checked by :func:`network_info` before computing,
        then run as :func:`network_graph` by :meth:`Graph.forward` (which may split a
        large batch onto threads, as for any graph).

    Returns
    -------
    out : ndarray
        The last layer's output; its shape is ``network_info(...)[-1].output_shape``.
    cache : NetworkCache
        For :func:`network_backward`; ``cache.activations`` holds every layer's output.

    Raises
    ------
    LayerError, ShapeError
        As :func:`network_info`.
    DtypeError
        If ``x`` or a parameter is not real numeric.
    """
    x = as_float_array(x, "x")
    network_info(x.shape, layers)
    graph = network_graph(layers)
    outputs = [node.output for node in graph.nodes]
    try:
        out, cache = graph.forward(x, keep=outputs)
    except GraphError as exc:
        raise _layer_error(exc, layers) from None
    activations = [cache.values[t] for t in outputs]
    return out, NetworkCache(layers, graph, cache, activations)


def network_backward(
    dout: Any, cache: NetworkCache
) -> tuple[np.ndarray, list[dict[str, np.ndarray | None]]]:
    """Backpropagate ``dout`` through the layers of :func:`network_forward`.

    Parameters
    ----------
    dout : array_like, shape of the network output
        Gradient of the loss with respect to the output (from :func:`network_loss`
        or given).
    cache : NetworkCache
        From :func:`network_forward`; it may serve several backward passes.

    Returns
    -------
    dx : ndarray, shape of ``x``
    grads : list of dict
        One per layer, in order: ``{"dw": ndarray, "db": ndarray or None}`` (``w``'s
        and ``b``'s shapes; ``db`` is None without a bias) for conv2d and linear,
        ``{}`` for the others.

    Raises
    ------
    ShapeError
        If ``dout``'s shape differs from the network output's.
    """
    g = cache.graph.backward(dout, cache.graph_cache, release=False)
    grads: list[dict[str, np.ndarray | None]] = [
        {"dw": g[f"{i}.w"], "db": g.get(f"{i}.b")} if isinstance(layer, Conv2d | Linear) else {}
        for i, layer in enumerate(cache.layers)
    ]
    return g[cache.graph.input], grads


def network_loss(out: np.ndarray, loss: Loss) -> tuple[float, np.ndarray]:
    """The loss on the network output and its gradient ``dout``.

    Parameters
    ----------
    out : ndarray
        The network output: ``(N, C)`` class scores for softmax cross-entropy, any
        shape for MSE.
    loss
        :class:`SoftmaxCrossEntropy` (mean over the batch) or
        :class:`MeanSquaredError` (mean over all elements).

    Returns
    -------
    loss : float
    dout : ndarray, shape of ``out``

    Raises
    ------
    CnnError
        As :func:`check_loss`.
    """
    check_loss(loss, out.shape)
    if isinstance(loss, SoftmaxCrossEntropy):
        return softmax_cross_entropy(out, loss.y)
    return mse_loss(out, loss.target)
