"""The one forward/backward engine: a DAG of named tensors, run in topological order.

A graph is a set of :class:`Node` s, each applying a registered op (:data:`OPS`) to
named tensors and naming its output tensor. Tensors are the graph's input, its
parameters (float arrays that get gradients), its constants (arrays that get
none, such as BatchNorm running statistics) and the nodes' outputs::

    g = Graph([Node("c", "conv2d", ("x", "w"), "h", {"padding": 1}),
               Node("r", "relu", ("h",), "r"),
               Node("s", "add", ("r", "x"), "out")],              # a residual join
              params={"w": w})
    info = g.infer((8, 3, 32, 32))     # shapes, FLOPs, params, memory: no arrays
    out, cache = g.forward(x)
    grads = g.backward(dout, cache)    # {"x": dL/dx, "w": dL/dw}

The forward pass runs the nodes in topological order and frees each tensor after
its last reader (the op caches keep what their backward needs). The backward pass
runs them in reverse, releasing each node's cache as it consumes it, and sums the
gradients of a tensor read by several nodes (a residual fan-out). ``wrt`` limits
the gradients to those asked for: nodes whose inputs lead to none of them are not
backpropagated at all.

:meth:`Graph.infer` computes every node's output shape, FLOPs and parameter count
from shapes alone, and :meth:`GraphInfo.working_bytes` bounds the memory a pass
allocates by replaying the engine's allocations and frees with each op's
estimate (:class:`cnncore.op.Memory`), so a service can budget a request before
computing it.

Large batches run on every core: when each node treats the samples of a batch
independently (each op says so, :attr:`cnncore.op.Op.per_sample`), :meth:`Graph.forward`
runs parts of the batch on threads of their own, one per core, with BLAS kept to one
thread meanwhile (:mod:`cnncore.threads`), and :meth:`Graph.backward` does the same,
adding the parts' parameter gradients in part order (:meth:`Graph._parts` says when);
why and what it gained: docs/decisions/2026-12-02-graph-batch-split.md.

An inference pass (``forward(x, backward=False)``) keeps no caches, and so may reuse
memory: a ReLU, Clip or Add writes into an input that is the engine's own and dead
after it (:attr:`cnncore.op.Op.overwrite`, :meth:`Graph._owned`).

The sequential network of :mod:`cnncore.network` is a chain of this graph.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import threads as _threads
from .batchnorm import BATCHNORM
from .checks import FLOAT_DTYPES, as_float_array, check_dout, check_shape, short_repr
from .elementwise import ADD, CLIP, GLOBAL_AVG_POOL, REDUCE_MEAN, SOFTMAX
from .errors import CnnError, GraphError, ParameterError, ShapeError
from .layer_ops import CONV2D, IDENTITY, LINEAR, POOL2D, RELU
from .layernorm import LAYER_NORM
from .matmul import GEMM, MATMUL
from .op import Memory, Op, Shape, nbytes
from .pointwise import OPS as POINTWISE_OPS
from .shape_ops import CONCAT, FLATTEN, PAD, RESHAPE, SLICE, TRANSPOSE

__all__ = [
    "OPS",
    "Graph",
    "GraphCache",
    "GraphError",
    "GraphInfo",
    "Memory",
    "Node",
    "NodeInfo",
    "Op",
]

OPS: dict[str, Op] = {
    op.name: op
    for op in (
        CONV2D,
        POOL2D,
        GLOBAL_AVG_POOL,
        REDUCE_MEAN,
        RELU,
        CLIP,
        IDENTITY,
        BATCHNORM,
        ADD,
        CONCAT,
        FLATTEN,
        RESHAPE,
        LINEAR,
        GEMM,
        MATMUL,
        SOFTMAX,
        PAD,
        TRANSPOSE,
        SLICE,
        LAYER_NORM,
        *POINTWISE_OPS,
    )
}
"""Every op a node may name, by name (see :mod:`cnncore.op` for what an op provides)."""


PYTHON_BYTES_PER_NODE = 1024
"""Allowance per node for the Python objects of a pass in :meth:`GraphInfo.working_bytes`.

tracemalloc on the 10-node residual block of the tests: a forward pass allocates
about 3.8 KB and a forward + backward pass up to 6.5 KB beyond the arrays.
"""


SPLIT_MIN_FLOPS = 200_000_000
"""Smallest forward work (FLOPs) per part for :meth:`Graph.forward` to split a batch.

About 3 ms of one core: the threads' hand-offs, the parts' joins and the per-node
Python overhead paid once per part are then a few percent at most.
"""


@dataclass(frozen=True)
class Node:
    """One operation of a graph.

    Attributes
    ----------
    name
        Unique among the graph's nodes; errors name it.
    op
        A key of :data:`OPS` (``"conv2d"``, ``"add"``...).
    inputs
        Names of the tensors it reads, in the op's order (``("x", "w", "b")``).
    output
        Name of the tensor it writes; no other node, parameter or constant may have it.
    attrs
        The op's attributes (``{"stride": 2, "padding": (1, 1, 1, 1)}``).
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    output: str
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))


@dataclass(frozen=True)
class NodeInfo:
    """What one node does to shapes, and what it costs.

    Attributes
    ----------
    name, op
        The node's name and op.
    output_shape
        Shape of its output tensor.
    flops
        Floating point operations of its forward pass.
    param_count
        Elements of the parameters it reads.
    input_shapes
        Shapes of its inputs, in order.
    """

    name: str
    op: str
    output_shape: Shape
    flops: int
    param_count: int
    input_shapes: tuple[Shape, ...] = ()


@dataclass(frozen=True)
class GraphInfo:
    """Shapes and costs of a graph for one input shape (:meth:`Graph.infer`).

    Attributes
    ----------
    nodes
        One :class:`NodeInfo` per node, in topological order.
    output_shape
        Shape of the graph output.
    total_flops
        FLOPs of the forward pass (a backward pass costs about twice more).
    total_params
        Elements of every parameter the graph reads, each counted once.
    shapes
        Shape of every tensor (input, parameters, constants, node outputs) by name.
    parts
        Sizes of the parts of the batch that :meth:`Graph.forward` runs on threads of
        their own (``(4, 4)`` for a batch of 8 on two cores), or None when it runs the
        batch whole (see :meth:`Graph.infer`).
    """

    nodes: tuple[NodeInfo, ...]
    output_shape: Shape
    total_flops: int
    total_params: int
    shapes: Mapping[str, Shape]
    _graph: _Plan = field(repr=False, compare=False)
    parts: tuple[int, ...] | None = None
    _part_infos: Mapping[int, GraphInfo] = field(default_factory=dict, repr=False, compare=False)
    _batched: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def working_bytes(self, itemsize: int, *, backward: bool = True) -> int:
        """An upper bound on the bytes a forward (and backward) pass allocates at its peak.

        The engine's allocations are replayed in order: the input; each node's output,
        cache and forward temporaries; then, backward, the output gradient, each node's
        input gradients (twice for a tensor read by several nodes: the sum is a new
        array) and backward temporaries, freeing a node's cache, output and output
        gradient once its backward has run. Every activation is assumed to live until
        its node's backward (the engine frees some earlier). Parameters and constants
        are not counted (the model holds them whatever the request); the parameter
        gradients are, and stay to the end (they are returned). Each node adds
        :data:`PYTHON_BYTES_PER_NODE` for the Python objects of a pass (array headers,
        cache tuples, dicts), which dominate only for tiny tensors.

        Parameters
        ----------
        itemsize
            Bytes per element: 4 for float32, 8 for float64.
        backward
            False for a forward pass with ``forward(x, backward=False)``: no caches,
            and each activation freed after its last reader.

        With :attr:`parts`, the parts run at the same time: the bound is the sum of
        theirs, plus the joined output (and, backward, the joined input gradient; the
        parameter gradients are summed into the first part's).
        """
        if self.parts is not None:
            joined = nbytes(self.output_shape, itemsize)
            if backward:
                joined += nbytes(self.shapes[self._graph.input], itemsize)
            return joined + sum(
                self._part_infos[p].working_bytes(itemsize, backward=backward) for p in self.parts
            )
        g = self._graph
        size = {t: nbytes(s, itemsize) for t, s in self.shapes.items()}
        mems = [
            g._ops[i].memory(info.input_shapes, info.output_shape, g._attrs[i], itemsize)
            for i, info in enumerate(self.nodes)
        ]
        live = size[g.input]
        peak = live
        if not backward:
            readers = Counter(t for node in g.nodes for t in set(node.inputs))
            for node, mem in zip(g.nodes, mems, strict=True):
                out = size[node.output]
                # The op makes its cache even when the engine drops it right away.
                peak = max(peak, live + out + mem.cache + mem.forward)
                live += out
                for t in set(node.inputs):
                    readers[t] -= 1
                    if readers[t] == 0 and t in g._produced and t != g.output:
                        live -= size[t]
            return peak + PYTHON_BYTES_PER_NODE * len(g.nodes)
        for node, mem in zip(g.nodes, mems, strict=True):
            out = size[node.output]
            peak = max(peak, live + out + mem.cache + mem.forward)
            live += out + mem.cache
        fan_out = Counter(t for node in g.nodes for t in node.inputs)
        live += size[g.output]  # dout
        for node, mem in zip(reversed(g.nodes), reversed(mems), strict=True):
            grads = sum(
                size[t] * (2 if fan_out[t] > 1 else 1) for t in node.inputs if t not in g.constants
            )
            peak = max(peak, live + grads + mem.backward)
            live += grads - mem.cache
            if node.output != g.output:  # the caller holds out and dout
                live -= 2 * size[node.output]  # the activation and its gradient
        return peak + PYTHON_BYTES_PER_NODE * len(g.nodes)


@dataclass(frozen=True)
class _Plan:
    """What :meth:`GraphInfo.working_bytes` replays (not the graph: no reference cycle)."""

    nodes: tuple[Node, ...]
    _ops: list[Op]
    _attrs: list[dict[str, Any]]
    input: str
    output: str
    constants: set[str]
    _produced: set[str]


@dataclass
class GraphCache:
    """What :meth:`Graph.backward` needs from :meth:`Graph.forward`.

    Attributes
    ----------
    values
        The tensors asked for with ``forward(..., keep=...)``, by name.
    out_shape, out_dtype
        Shape and dtype of the graph output (``dout`` must match the shape).
    x_shape, x_dtype
        Shape and dtype of the input as computed (after conversion).
    parts
        When the batch ran in parts (:attr:`GraphInfo.parts`): each part's samples and
        its own cache; ``caches`` is then empty.
    """

    graph: Graph
    caches: list[Any] | None
    values: dict[str, np.ndarray]
    out_shape: Shape
    out_dtype: np.dtype
    x_shape: Shape
    x_dtype: np.dtype
    consumed: bool = False
    parts: list[tuple[slice, GraphCache]] | None = None


class Graph:
    """A DAG of ops over named tensors, with one forward and one backward pass.

    Parameters
    ----------
    nodes
        The nodes, in any order that is a DAG; stored in topological order (ties
        keep the given order). Nodes the output does not depend on are dropped.
    params
        Float tensors that get gradients, by name. Held as given (read-only arrays
        are fine: nothing writes into them); integer or bool arrays become float64,
        and with ``dtype`` each is cast to it (no copy when it already has it).
    constants
        Tensors that get no gradient (BatchNorm running statistics), treated as params.
    input
        Name of the input tensor.
    output
        Name of the output tensor; None for the one tensor no node reads.
    input_shape
        The input's declared shape, -1 (or None) for a free dimension such as the
        batch; None for any shape. When given, the graph's shapes are checked now
        (with every free dimension 1), so a graph that cannot run fails to build.
    dtype
        np.float32 or np.float64: the input is cast to it. None keeps the input's
        dtype and lets each op promote (float64 if any operand is float64).

    Attributes
    ----------
    nodes : tuple of Node
        In topological order.
    params, constants : dict of str to ndarray
    input, output : str
    input_shape : tuple of int, or None
    dtype : numpy.dtype or None

    Raises
    ------
    GraphError
        For an unknown op, a wrong number of inputs, an unknown or bad attribute,
        an input tensor nobody provides, a tensor written twice, a cycle, or
        (with ``input_shape``) shapes that do not fit; the message names the node.
    DtypeError
        If a parameter or constant is not a real numeric array (``arg`` is its name).
    ParameterError
        For a bad ``dtype`` or ``input_shape``.
    """

    def __init__(
        self,
        nodes: Iterable[Node],
        params: Mapping[str, Any] | None = None,
        constants: Mapping[str, Any] | None = None,
        input: str = "x",
        output: str | None = None,
        input_shape: Sequence[int | None] | None = None,
        dtype: Any = None,
    ) -> None:
        self.dtype = _check_dtype(dtype)
        self.input = input
        self.params = {k: self._tensor(v, k) for k, v in (params or {}).items()}
        self.constants = {k: self._tensor(v, k) for k, v in (constants or {}).items()}
        self.input_shape = _check_input_shape(input_shape)
        for name in self.params.keys() & self.constants.keys():
            raise GraphError(f'"{name}" is both a parameter and a constant')
        if input in self.params or input in self.constants:
            raise GraphError(f'the input "{input}" is also a parameter or a constant')

        given = list(nodes)
        names = Counter(node.name for node in given)
        for node in given:
            if names[node.name] > 1:
                raise GraphError("two nodes have this name", node=node.name, op=node.op)
        self._produced: dict[str, Node] = {}
        sources = {input, *self.params, *self.constants}
        for node in given:
            if node.op not in OPS:
                raise GraphError(f"unknown op {node.op!r}", node=node.name, op=node.op)
            if node.output in sources or node.output in self._produced:
                other = self._produced.get(node.output)
                owner = f'node "{other.name}"' if other is not None else "the graph"
                raise GraphError(
                    f'output "{node.output}" is already a tensor of {owner}',
                    node=node.name,
                    op=node.op,
                )
            self._produced[node.output] = node
        for node in given:
            for t in node.inputs:
                if t not in sources and t not in self._produced:
                    raise GraphError(
                        f'input "{t}" is not the graph input, a parameter, a constant or '
                        "any node's output",
                        node=node.name,
                        op=node.op,
                    )
        self.output = output if output is not None else self._sink(given)
        if self.output not in self._produced and self.output not in sources:
            raise GraphError(f'the output "{self.output}" is no tensor of the graph')
        self.nodes = _topological(given, self._produced, self.output)
        self._produced = {node.output: node for node in self.nodes}
        self._ops = [OPS[node.op] for node in self.nodes]
        self._attrs = [
            self._node_attrs(node, op) for node, op in zip(self.nodes, self._ops, strict=True)
        ]
        self._infos: dict[tuple[Shape, bool], GraphInfo] = {}
        self._sources = {**self.params, **self.constants}
        self._source_ids = {id(v) for v in self._sources.values()}  # for Graph._owned
        last: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for t in node.inputs:
                last[t] = i
        self._last_read: list[list[str]] = [[] for _ in self.nodes]
        for t, i in last.items():
            if t in self._produced and t != self.output:
                self._last_read[i].append(t)
        self._reaches: dict[tuple[str, ...], dict[str, bool]] = {}
        if self.input_shape is not None:
            self.infer(tuple(1 if d == -1 else d for d in self.input_shape))

    # ------------------------------------------------------------------ building

    def _tensor(self, value: Any, name: str) -> np.ndarray:
        a = as_float_array(value, name)
        return a if self.dtype is None else a.astype(self.dtype, copy=False)

    def _sink(self, nodes: list[Node]) -> str:
        read = {t for node in nodes for t in node.inputs}
        sinks = [node.output for node in nodes if node.output not in read]
        if len(sinks) != 1:
            raise GraphError(
                f"give output=: {len(sinks)} tensors are read by no node "
                f"({', '.join(map(repr, sinks[:5]))})"
            )
        return sinks[0]

    @staticmethod
    def _node_attrs(node: Node, op: Op) -> dict[str, Any]:
        arity = op.arity_error(len(node.inputs))
        if arity is not None:
            raise GraphError(arity, node=node.name, op=node.op)
        unknown = sorted(set(node.attrs) - set(op.attr_names))
        if unknown:
            takes = ", ".join(op.attr_names) if op.attr_names else "no attributes"
            raise GraphError(
                f"unknown attribute {unknown[0]!r} ({node.op} takes {takes})",
                node=node.name,
                op=node.op,
                arg=unknown[0],
            )
        try:
            return op.attrs(node.attrs)
        except CnnError as exc:
            raise GraphError(exc.message, node=node.name, op=node.op, arg=exc.arg) from None

    # ------------------------------------------------------------------ shapes

    def infer(self, x_shape: Sequence[int]) -> GraphInfo:
        """Every node's output shape, FLOPs and parameter count for an input of ``x_shape``.

        Computed from shapes only (no arrays); the result is remembered per shape.

        Parameters
        ----------
        x_shape
            The input's shape, every dimension a positive integer.

        Returns
        -------
        GraphInfo

        Raises
        ------
        ShapeError
            If ``x_shape`` is not a shape, or disagrees with the declared
            ``input_shape`` (``arg="x"``).
        GraphError
            If a node does not fit the shapes arriving at it (naming the node, and
            in ``arg`` its input or attribute at fault).
        """
        return self._infer(check_shape(x_shape, "x"), split=True)

    def _infer(self, x_shape: Shape, *, split: bool) -> GraphInfo:
        """:meth:`infer`; ``split=False`` for a part of a batch (which is not split again)."""
        cached = self._infos.get((x_shape, split))
        if cached is not None:
            return cached
        if self.input_shape is not None:
            _fits_declared(x_shape, self.input_shape)
        shapes: dict[str, Shape] = {self.input: x_shape}
        shapes.update({k: v.shape for k, v in self.params.items()})
        shapes.update({k: v.shape for k, v in self.constants.items()})
        infos = []
        for node, op, attrs in zip(self.nodes, self._ops, self._attrs, strict=True):
            ins = tuple(shapes[t] for t in node.inputs)
            try:
                out, flops = op.shape(ins, attrs)
            except CnnError as exc:
                raise GraphError(
                    _with_inputs(exc, node, op, ins), node=node.name, op=node.op, arg=exc.arg
                ) from None
            shapes[node.output] = tuple(out)
            params = sum(self.params[t].size for t in set(node.inputs) if t in self.params)
            infos.append(NodeInfo(node.name, node.op, tuple(out), int(flops), params, ins))
        used = {t for node in self.nodes for t in node.inputs if t in self.params}
        info = GraphInfo(
            nodes=tuple(infos),
            output_shape=shapes[self.output],
            total_flops=sum(i.flops for i in infos),
            total_params=sum(self.params[t].size for t in used),
            shapes=shapes,
            _graph=_Plan(
                self.nodes,
                self._ops,
                self._attrs,
                self.input,
                self.output,
                set(self.constants),
                set(self._produced),
            ),
        )
        if split:
            split_plan = self._parts(info)
            if split_plan is not None:
                parts, batched = split_plan
                part_infos = {
                    p: self._infer((p, *x_shape[1:]), split=False) for p in sorted(set(parts))
                }
                info = replace(info, parts=parts, _part_infos=part_infos, _batched=batched)
        if len(self._infos) >= 16:  # a service sees a few batch sizes; do not grow forever
            self._infos.pop(next(iter(self._infos)))
        self._infos[(x_shape, split)] = info
        return info

    def _parts(self, info: GraphInfo) -> tuple[tuple[int, ...], frozenset[str]] | None:
        """Sizes of the parts of the batch to run on threads of their own, and the
        tensors that carry the batch; None to run the batch whole.

        A batch is split, one part per thread of :data:`cnncore.threads.WORKERS`, when

        - there are at least two threads and two samples, and each part has at least
          :data:`SPLIT_MIN_FLOPS` of work (below that the hand-offs cost more than
          they gain);
        - BLAS can be kept to one thread meanwhile (:func:`cnncore.threads.can_limit_blas`);
        - every node that reads the batch treats its samples independently (its op's
          ``per_sample``, given which inputs carry the batch on axis 0), so that each
          part computes exactly its samples' rows of every tensor;
        - every tensor that carries the batch has it on axis 0, and a part's shapes
          are the batch's with that axis shortened (so a reshape to a fixed batch size,
          which would fail or mix samples, keeps the batch whole).

        The parts are as equal as can be, larger first; the same shapes always give
        the same parts on a given number of threads.
        """
        x_shape = info.shapes[self.input]
        n = x_shape[0] if x_shape else 0
        workers = min(_threads.WORKERS, n)
        if workers < 2 or info.total_flops < workers * SPLIT_MIN_FLOPS:
            return None
        batched = {self.input}
        for node, op, attrs, node_info in zip(
            self.nodes, self._ops, self._attrs, info.nodes, strict=True
        ):
            flags = tuple(t in batched for t in node.inputs)
            if not any(flags):
                continue
            if op.per_sample is None or not op.per_sample(node_info.input_shapes, flags, attrs):
                return None
            batched.add(node.output)
        if self.output not in batched:
            return None
        if any(len(info.shapes[t]) == 0 or info.shapes[t][0] != n for t in batched):
            return None
        if not _threads.can_limit_blas():
            return None
        parts = tuple(n // workers + (i < n % workers) for i in range(workers))
        for p in set(parts):
            try:
                part = self._infer((p, *x_shape[1:]), split=False)
            except CnnError:
                return None
            if any(part.shapes[t] != (p, *info.shapes[t][1:]) for t in batched):
                return None
        return parts, frozenset(batched)

    def op_counts(self) -> dict[str, int]:
        """How many nodes use each op, e.g. ``{"conv2d": 3, "relu": 3, "add": 1}``."""
        return dict(Counter(node.op for node in self.nodes))

    # ------------------------------------------------------------------ passes

    def forward(
        self, x: Any, *, backward: bool = True, keep: Collection[str] = ()
    ) -> tuple[np.ndarray, GraphCache]:
        """Run the graph on ``x``; shapes are checked first (:meth:`infer`).

        Parameters
        ----------
        x : array_like
            The input; float32/float64 kept (or cast to the graph's ``dtype``),
            integer and bool become float64.
        backward
            False to keep no caches (inference only): less memory, and the
            returned cache cannot be used by :meth:`backward`.
        keep
            Names of tensors whose values to keep in ``cache.values``.

        Returns
        -------
        out : ndarray
            The output tensor (``infer(x.shape).output_shape``). It may be the
            input or a parameter itself when the graph does nothing to them.
        cache : GraphCache

        Raises
        ------
        DtypeError
            If ``x`` is not real numeric.
        ShapeError, GraphError
            As :meth:`infer`.
        """
        x = as_float_array(x, "x")
        if self.dtype is not None:
            x = x.astype(self.dtype, copy=False)
        info = self.infer(x.shape)
        if info.parts is not None:
            return self._run_parts(x, info, backward, keep)
        return self._run(x, backward, keep)

    def _run_parts(
        self, x: np.ndarray, info: GraphInfo, backward: bool, keep: Collection[str]
    ) -> tuple[np.ndarray, GraphCache]:
        """:meth:`forward` of each part of the batch (:attr:`GraphInfo.parts`) on its own
        thread, BLAS on one thread meanwhile; the outputs (and kept tensors that carry
        the batch) are joined in part order."""
        assert info.parts is not None
        stops = np.cumsum(info.parts).tolist()
        slices = [slice(stop - p, stop) for p, stop in zip(info.parts, stops, strict=True)]
        with _threads.blas_single_threaded():
            runs = _threads.map_threads(
                lambda part: self._run(x[part], backward, keep), slices, len(slices)
            )
        out = np.concatenate([run[0] for run in runs])
        values = {
            t: x
            if t == self.input
            else np.concatenate([run[1].values[t] for run in runs])
            if t in info._batched
            else runs[0][1].values[t]
            for t in keep
        }
        return out, GraphCache(
            graph=self,
            caches=[] if backward else None,
            values=values,
            out_shape=out.shape,
            out_dtype=out.dtype,
            x_shape=x.shape,
            x_dtype=x.dtype,
            parts=[(part, run[1]) for part, run in zip(slices, runs, strict=True)],
        )

    def _run(
        self, x: np.ndarray, backward: bool, keep: Collection[str]
    ) -> tuple[np.ndarray, GraphCache]:
        """:meth:`forward` on an input already converted and checked by :meth:`infer`."""
        kept = set(keep)
        for name in kept:
            if name not in self._produced and name != self.input:
                raise ParameterError(f'keep names "{name}", which is no node output', arg="keep")
        values: dict[str, np.ndarray] = {**self._sources, self.input: x}
        caches: list[Any] | None = [None] * len(self.nodes) if backward else None
        for i, (node, op, attrs) in enumerate(zip(self.nodes, self._ops, self._attrs, strict=True)):
            try:
                if caches is None and op.overwrite is not None and self._owned(i, values, kept):
                    out, cache = op.overwrite([values[t] for t in node.inputs], attrs), None
                elif caches is None and op.infer is not None:
                    out, cache = op.infer([values[t] for t in node.inputs], attrs), None
                else:
                    out, cache = op.forward([values[t] for t in node.inputs], attrs)
            except CnnError as exc:
                raise GraphError(exc.message, node=node.name, op=node.op, arg=exc.arg) from None
            values[node.output] = out
            if caches is not None:
                caches[i] = cache
            del out, cache
            for t in self._last_read[i]:  # activations no later node reads
                if t not in kept:
                    del values[t]
        out = values[self.output]
        return out, GraphCache(
            graph=self,
            caches=caches,
            values={t: values[t] for t in keep},
            out_shape=out.shape,
            out_dtype=out.dtype,
            x_shape=x.shape,
            x_dtype=x.dtype,
        )

    def _owned(self, i: int, values: Mapping[str, np.ndarray], kept: set[str]) -> bool:
        """Whether node ``i`` may write its output into its first input (``Op.overwrite``).

        Yes for an activation that no later node reads and nobody keeps, read once by
        this node, whose array owns its memory (not the graph input, a parameter or a
        view) and shares it with no other live activation (a reshape's view of it).
        """
        t = self.nodes[i].inputs[0]
        if t not in self._produced or t in kept or self.nodes[i].inputs.count(t) > 1:
            return False
        if t not in self._last_read[i]:
            return False
        a = values[t]
        if not (a.flags.owndata and a.flags.writeable) or a is values[self.input]:
            return False
        if id(a) in self._source_ids:
            return False
        return not any(
            np.may_share_memory(a, v)
            for name, v in values.items()
            if name != t and name in self._produced
        )

    def backward(
        self,
        dout: Any,
        cache: GraphCache,
        wrt: Iterable[str] | None = None,
        *,
        release: bool = True,
    ) -> dict[str, np.ndarray]:
        """Gradients of ``sum(out * dout)`` with respect to the input and the parameters.

        Nodes run in reverse topological order; a tensor read by several nodes gets
        the sum of their gradients. Each node's cache is released once used (unless
        ``release`` is false), so a cache serves one backward pass.

        Parameters
        ----------
        dout : array_like, shape of the output
            Upstream gradient; cast to the output's dtype.
        cache : GraphCache
            From :meth:`forward` of this graph (with ``backward=True``).
        wrt
            Names to differentiate with respect to (the input's name and parameter
            names); None for the input and every parameter. Nodes that lead to none
            of them are skipped.
        release
            Drop each node's cache as soon as its backward has run, which lowers the
            peak memory (the default); False keeps the cache usable for another
            backward pass.

        Returns
        -------
        dict of str to ndarray
            One gradient per name in ``wrt``, each of its tensor's shape (zeros for a
            tensor the output does not depend on). A gradient may share memory with
            ``dout`` (an identity or a reshape passes it on).

        Raises
        ------
        ShapeError
            If ``dout``'s shape differs from the output's (``arg="dout"``).
        ParameterError
            If ``wrt`` names something that gets no gradient, or the cache is spent,
            from another graph, or was made with ``backward=False`` (``arg="cache"``).
        """
        if cache.graph is not self:
            raise ParameterError("cache comes from another graph's forward pass", arg="cache")
        if cache.caches is None:
            raise ParameterError(
                "cache comes from forward(..., backward=False), which keeps no caches",
                arg="cache",
            )
        if cache.consumed:
            raise ParameterError(
                "cache was already used by a backward pass (its node caches are released); "
                "run forward again",
                arg="cache",
            )
        dout = check_dout(dout, cache.out_shape, cache.out_dtype)
        names = self._wrt(wrt)
        if cache.parts is not None:
            cache.consumed = release
            return self._backward_parts(dout, cache.parts, names, release)
        reach = self._reach(names)
        caches = cache.caches if release else list(cache.caches)
        cache.consumed = release
        grads: dict[str, np.ndarray] = {self.output: dout}
        owned: set[str] = set()  # gradients this pass allocated, so may add into in place
        for i in reversed(range(len(self.nodes))):
            node = self.nodes[i]
            node_cache, caches[i] = caches[i], None
            grad = grads.pop(node.output, None)
            if grad is None or not reach[node.output]:
                continue
            needs = tuple(reach[t] for t in node.inputs)
            try:
                gins = self._ops[i].backward(grad, node_cache, needs)
            except CnnError as exc:
                raise GraphError(exc.message, node=node.name, op=node.op, arg=exc.arg) from None
            del grad, node_cache
            for t, g, need in zip(node.inputs, gins, needs, strict=True):
                if not need or g is None:
                    continue
                if t not in grads:
                    grads[t] = g
                elif t in owned:
                    grads[t] += g
                else:  # the first gradient may be dout or a view: never write into it
                    grads[t] = grads[t] + g
                    owned.add(t)
        result = {}
        for name in names:
            g = grads.get(name)
            if g is None:
                shape, dtype = (
                    (cache.x_shape, cache.x_dtype)
                    if name == self.input
                    else (self.params[name].shape, self.params[name].dtype)
                )
                g = np.zeros(shape, dtype=dtype)
            result[name] = g
        return result

    def _backward_parts(
        self,
        dout: np.ndarray,
        parts: list[tuple[slice, GraphCache]],
        names: list[str],
        release: bool,
    ) -> dict[str, np.ndarray]:
        """:meth:`backward` of each part on its own thread; the input's gradient is joined
        in part order and each parameter's is the sum of the parts', added in part order."""
        with _threads.blas_single_threaded():
            runs = _threads.map_threads(
                lambda item: self.backward(dout[item[0]], item[1], names, release=release),
                parts,
                len(parts),
            )
        result = {}
        for name in names:
            if name == self.input:
                result[name] = np.concatenate([run[name] for run in runs])
                continue
            total = runs[0][name]
            if not total.flags.writeable or total.base is not None:
                total = total.copy()
            for run in runs[1:]:
                total += run[name]
            result[name] = total
        return result

    def _wrt(self, wrt: Iterable[str] | None) -> list[str]:
        if wrt is None:
            return [self.input, *self.params]
        if isinstance(wrt, str):
            raise ParameterError(
                f"wrt must be a list of names, not the string {short_repr(wrt)}", arg="wrt"
            )
        names = list(dict.fromkeys(wrt))
        for name in names:
            if name != self.input and name not in self.params:
                raise ParameterError(
                    f'wrt names "{str(name)[:40]}", which gets no gradient; gradients exist for '
                    f'the input "{self.input}" and the parameters',
                    arg="wrt",
                )
        return names

    def _reach(self, names: list[str]) -> dict[str, bool]:
        """Whether each tensor depends on one of ``names`` (so needs a gradient)."""
        key = tuple(sorted(names))
        reach = self._reaches.get(key)
        if reach is None:
            reach = {t: False for t in (self.input, *self.params, *self.constants)}
            for name in names:
                reach[name] = True
            for node in self.nodes:
                reach[node.output] = any(reach[t] for t in node.inputs)
            if len(self._reaches) < 16:  # a few wrt sets in practice: x, all, one param
                self._reaches[key] = reach
        return reach

    def __repr__(self) -> str:
        counts = ", ".join(f"{op}: {n}" for op, n in self.op_counts().items())
        return (
            f"Graph({len(self.nodes)} nodes ({counts}), {len(self.params)} params, "
            f"input {self.input!r}, output {self.output!r})"
        )


# --------------------------------------------------------------------------- helpers


def _check_dtype(dtype: Any) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in FLOAT_DTYPES:
        raise ParameterError(
            f"dtype must be float32, float64 or None, got {short_repr(dtype)}", arg="dtype"
        )
    return dt


def _check_input_shape(shape: Sequence[int | None] | None) -> Shape | None:
    if shape is None:
        return None
    dims = tuple(-1 if d is None else d for d in shape)
    for i, d in enumerate(dims):
        if isinstance(d, bool) or not isinstance(d, int | np.integer) or (d < 1 and d != -1):
            raise ParameterError(
                f"input_shape dimension {i} must be a positive integer or -1 (free), "
                f"got {short_repr(d)}",
                arg="input_shape",
            )
    return tuple(int(d) for d in dims)


def _fits_declared(x_shape: Shape, declared: Shape) -> None:
    if len(x_shape) != len(declared) or any(
        d != -1 and d != s for s, d in zip(x_shape, declared, strict=False)
    ):
        want = "(" + ", ".join("N" if d == -1 else str(d) for d in declared) + ")"
        raise ShapeError(f"x has shape {x_shape} but the graph takes {want}", arg="x")


def _with_inputs(exc: CnnError, node: Node, op: Op, shapes: tuple[Shape, ...]) -> str:
    """The op's message, with the input tensors' names and shapes when it names an input."""
    names = (
        op.inputs if not op.variadic else tuple(f"{op.inputs[0]}{i}" for i in range(len(shapes)))
    )
    given = ", ".join(f'{n}="{t}" {s}' for n, t, s in zip(names, node.inputs, shapes, strict=False))
    return f"{exc.message} (inputs: {given})"


def _topological(nodes: list[Node], producer: Mapping[str, Node], output: str) -> tuple[Node, ...]:
    """The nodes ``output`` depends on, in topological order, ties in the given order.

    Raises
    ------
    GraphError
        If some nodes form a cycle (naming a node on it).
    """
    index = {id(node): i for i, node in enumerate(nodes)}
    if _in_order(nodes, producer):
        return _needed(nodes, producer, output, index)
    waiting = [len({t for t in node.inputs if t in producer}) for node in nodes]
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for t in set(node.inputs):
            readers.setdefault(t, []).append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for j in readers.get(node.output, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(nodes):
        # Walk back through inputs still waiting until a node repeats: it is on a cycle.
        node = nodes[next(i for i, n in enumerate(waiting) if n > 0)]
        seen: set[int] = set()
        while index[id(node)] not in seen:
            seen.add(index[id(node)])
            node = next(
                producer[t]
                for t in node.inputs
                if t in producer and waiting[index[id(producer[t])]] > 0
            )
        raise GraphError(
            "is on a cycle: its inputs depend on its own output", node=node.name, op=node.op
        )
    return _needed(order, producer, output, index)


def _in_order(nodes: list[Node], producer: Mapping[str, Node]) -> bool:
    """Whether every node reads only sources and earlier nodes' outputs (a chain, say)."""
    done: set[str] = set()
    for node in nodes:
        if any(t in producer and t not in done for t in node.inputs):
            return False
        done.add(node.output)
    return True


def _needed(
    order: list[Node], producer: Mapping[str, Node], output: str, index: Mapping[int, int]
) -> tuple[Node, ...]:
    """The nodes of ``order`` that ``output`` depends on, in that order."""
    needed: set[str] = set()  # their outputs
    stack = [output]
    while stack:
        t = stack.pop()
        if t in producer and t not in needed:
            needed.add(t)
            stack.extend(producer[t].inputs)
    return tuple(node for node in order if node.output in needed)
