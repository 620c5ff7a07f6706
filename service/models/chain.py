"""A native layer stack behind the graph interface (``infer``, ``forward``, ``backward``,
``params``, ``op_counts``) that :mod:`service.v2` runs every model through.

Temporary: it runs :func:`cnncore.network_forward` / :func:`cnncore.network_backward`
until ``cnncore.network.network_graph`` (the chain built on :mod:`cnncore.graph`) is
available, which :func:`chain_graph` then returns instead.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import cnncore
from cnncore.network import Layer, NetworkCache


@dataclass(frozen=True)
class ChainInfo:
    """What :meth:`ChainGraph.infer` tells from shapes alone."""

    output_shape: tuple[int, ...]
    total_flops: int
    total_params: int
    elements: int  # inputs, outputs, parameters and largest buffer of every layer

    def working_bytes(self, itemsize: int) -> int:
        """Bytes alive at once in a forward and backward pass: activations and caches
        of every layer, and as much again for the gradients."""
        return 2 * self.elements * itemsize


class ChainGraph:
    """A sequence of native layers with parameters named ``"<index>.w"`` / ``"<index>.b"``.

    Parameters
    ----------
    layers
        The layers, weights already in ``dtype``.
    dtype
        The computation's dtype.
    input_shape
        The declared input shape (``-1`` for a free batch).
    """

    input = "x"
    output = "out"

    def __init__(self, layers: Sequence[Layer], dtype: np.dtype, input_shape: Sequence[int]):
        self.layers = list(layers)
        self.dtype = dtype
        self.input_shape = tuple(input_shape)
        self.params: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, cnncore.Conv2d | cnncore.Linear):
                self.params[f"{i}.w"] = layer.w
                if layer.b is not None:
                    self.params[f"{i}.b"] = layer.b
        self.constants: dict[str, np.ndarray] = {}

    def op_counts(self) -> dict[str, int]:
        """Layers by type."""
        return dict(Counter(layer.type for layer in self.layers))

    def infer(self, x_shape: Sequence[int]) -> ChainInfo:
        """Shapes, FLOPs and memory of running an input of ``x_shape``.

        Raises
        ------
        cnncore.CnnError
            If ``x_shape`` does not fit the layers (the message names the layer).
        """
        infos = cnncore.network_info(x_shape, self.layers)
        elements = 0
        for info in infos:
            buffer = info.macs // info.output_shape[1] if info.macs else info.flops
            elements += math.prod(info.input_shape) + math.prod(info.output_shape)
            elements += info.param_count + buffer
        return ChainInfo(
            output_shape=tuple(infos[-1].output_shape),
            total_flops=sum(info.flops for info in infos),
            total_params=sum(info.param_count for info in infos),
            elements=elements,
        )

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, NetworkCache]:
        """``out`` and the cache for :meth:`backward`."""
        return cnncore.network_forward(x, self.layers)

    def backward(
        self, dout: np.ndarray, cache: NetworkCache, wrt: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Gradients of ``sum(out * dout)``: ``"x"`` and each parameter, limited to ``wrt``."""
        dx, layer_grads = cnncore.network_backward(dout, cache)
        grads: dict[str, Any] = {"x": dx}
        for i, g in enumerate(layer_grads):
            for key, value in g.items():
                if value is not None:
                    grads[f"{i}.{key[1:]}"] = value  # "dw" -> "0.w"
        wanted = set(grads) if wrt is None else set(wrt)
        return {k: v for k, v in grads.items() if k in wanted}


def chain_graph(layers: Sequence[Layer], dtype: np.dtype, input_shape: Sequence[int]) -> Any:
    """The graph of a native layer stack (``cnncore.network.network_graph`` once it exists)."""
    return ChainGraph(layers, dtype, input_shape)
