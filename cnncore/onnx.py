"""Import an ONNX model as a :class:`cnncore.graph.Graph`: ``load_onnx(path)``.

The ``onnx`` package parses and checks the file (``onnx.checker`` first); every
computation afterwards is cnncore's own. Each ONNX node becomes one node of the
graph (see the table in the README, "ONNX models"), with every attribute read,
checked and converted to the graph op's spelling, or the import stops with an
:class:`OnnxImportError` that names the node, the operator and the attribute.
Nothing is approximated: an attribute value the graph op cannot honour exactly
(``auto_pad`` ``SAME_LOWER``, ``storage_order`` 1, a non-constant ``Clip`` bound,
training-mode ``BatchNormalization`` ...) is refused, not ignored.

Exporters compute some attributes with small integer sub-graphs (the legacy
PyTorch exporter's ``x.view(x.size(0), -1)`` is ``Shape -> Gather -> Unsqueeze ->
Concat -> Reshape``). Those are folded once, here: ``Constant`` nodes, and
``ConstantOfShape``, ``Shape``, ``Gather``, ``Unsqueeze``, ``Concat``, ``Slice``,
``Transpose``, ``Cast``, ``Reshape`` and ``Identity`` whose inputs are all constant.
``Shape`` of a computed tensor is constant because every shape is known at load
time from the declared input shape, except the batch: a folded value remembers
which of its entries *are* the batch (:class:`_Const` ``batch``), and a ``Reshape``
whose target copies the batch there gets ``0`` ("copy this dimension") instead.
Shapes are inferred twice, at two batch sizes, so that "is the batch" is observed,
not guessed. A model declaring a fixed batch whose graph only works at that batch
(a ``Reshape`` to a constant ``[1, 400]``) is imported with that batch fixed.

The graph's input is always called ``"x"`` and its output ``"out"``; parameters
(the float initializers the gradient reaches: weights, biases, BatchNormalization
scale and bias) keep their initializer names; BatchNormalization running
statistics and folded values are constants. Float initializers are cast to the
computation's dtype, float32 unless the input is declared double.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import CnnError, OnnxImportError

if TYPE_CHECKING:  # the graph module is imported lazily too: `import cnncore` stays light
    from .graph import Graph, Node

__all__ = ["SUPPORTED_OPSETS", "OnnxImportError", "load_onnx"]

#: Versions of the default ONNX operator set the importer is tested with
#: (tests/cnncore/test_onnx.py builds graphs at 10, 13, 17, 18, 20 and 21; PyTorch's
#: legacy exporter writes 17 and its dynamo exporter 18 to 20). Outside this range
#: the semantics of an operator may have changed, so the model is refused.
SUPPORTED_OPSETS = range(10, 22)

#: The two batch sizes at which shapes are inferred (see the module docstring).
#: Neither is 1, a common non-batch dimension.
_BATCHES = (2, 3)

#: Entry kinds of :attr:`_Const.batch`: a plain number, the batch itself, or a
#: number that depends on the batch in another way (unusable as an attribute).
_STATIC, _IS_BATCH, _FROM_BATCH = 0, 1, 2


def load_onnx(path: str | PathLike[str]) -> Graph:
    """Read an ONNX model file and return the equivalent cnncore graph.

    Parameters
    ----------
    path
        The ``.onnx`` file. Weights saved as external data (the dynamo exporter's
        default) are read from the file's folder; a location outside it is refused.

    Returns
    -------
    cnncore.graph.Graph
        Input ``"x"`` of shape ``input_shape`` (``-1`` for a free batch), output
        ``"out"``, ``params`` keyed by initializer name, ``dtype`` float32 or float64.

    Raises
    ------
    OnnxImportError
        The file is not a valid ONNX model, its opset is outside
        :data:`SUPPORTED_OPSETS`, it has other than one float input and one
        output, or a node uses an operator or attribute value that cannot be
        imported exactly; the message names the node, operator and attribute.
    """
    import onnx  # lazily: cnncore needs only numpy unless ONNX files are read

    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise OnnxImportError(f"{path}: no such file") from None
    except Exception as exc:  # protobuf's DecodeError, external data outside the folder ...
        raise OnnxImportError(
            f"{path}: cannot be read as an ONNX model ({type(exc).__name__}: {exc})"
        ) from None
    return import_model(model)


def import_model(model: Any) -> Graph:
    """Convert a parsed ``onnx.ModelProto`` (see :func:`load_onnx`, which reads the file)."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxImportError(f"onnx.checker: {first}") from None
    opset = _default_opset(model)
    declared = _input_decl(model.graph)
    # First with the batch free; a graph that only works at its declared batch
    # (constant shapes baked in by the exporter) is imported again with it fixed.
    try:
        return _Importer(model, opset, declared, _BATCHES).run()
    except _BatchBoundError:
        fixed = declared.shape[0]
        assert fixed > 0  # _BatchBoundError is only raised when the batch was declared
        return _Importer(model, opset, declared, (fixed, fixed)).run()


# --------------------------------------------------------------------------- model level


@dataclass(frozen=True)
class _InputDecl:
    name: str
    shape: tuple[int, ...]  # -1: not fixed by the file
    dtype: np.dtype


def _default_opset(model: Any) -> int:
    versions = {imp.domain: imp.version for imp in model.opset_import}
    opset = versions.get("", versions.get("ai.onnx"))
    if opset is None:
        raise OnnxImportError("the model imports no version of the default ONNX operator set")
    if opset not in SUPPORTED_OPSETS:
        lo, hi = SUPPORTED_OPSETS[0], SUPPORTED_OPSETS[-1]
        raise OnnxImportError(
            f"opset {opset} is not supported: the importer is tested with opsets {lo} to {hi} "
            f"(re-export with opset_version between {lo} and {hi})",
            attr="opset_import",
        )
    return opset


def _input_decl(graph: Any) -> _InputDecl:
    import onnx

    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(f'"{i.name}"' for i in inputs) or "none"
        raise OnnxImportError(
            f"the model must have exactly one input, it has {len(inputs)} ({names})", attr="input"
        )
    if len(graph.output) != 1:
        names = ", ".join(f'"{o.name}"' for o in graph.output)
        raise OnnxImportError(
            f"the model must have exactly one output, it has {len(graph.output)} ({names})",
            attr="output",
        )
    if len(graph.sparse_initializer):
        raise OnnxImportError("sparse initializers are not supported", attr="sparse_initializer")
    inp = inputs[0]
    kind = inp.type.WhichOneof("value")
    elem = inp.type.tensor_type.elem_type if kind == "tensor_type" else None
    dtypes: dict[int, np.dtype] = {
        onnx.TensorProto.FLOAT: np.dtype(np.float32),
        onnx.TensorProto.DOUBLE: np.dtype(np.float64),
    }
    if elem not in dtypes:
        what = onnx.TensorProto.DataType.Name(elem) if elem is not None else kind
        raise OnnxImportError(
            f'input "{inp.name}" is {what}; only FLOAT and DOUBLE tensors are supported',
            attr="input",
        )
    if not inp.type.tensor_type.HasField("shape"):
        raise OnnxImportError(f'input "{inp.name}" has no declared shape', attr="input")
    dims = []
    for axis, d in enumerate(inp.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        elif axis == 0:
            dims.append(-1)
        else:
            raise OnnxImportError(
                f'input "{inp.name}": dimension {axis} is not fixed ({d.dim_param or "unknown"}); '
                "only the batch (dimension 0) may be free",
                attr="input",
            )
    if not dims:
        raise OnnxImportError(
            f'input "{inp.name}" is a scalar; the first dimension must be the batch', attr="input"
        )
    return _InputDecl(inp.name, tuple(dims), dtypes[elem])


class _BatchBoundError(Exception):
    """The graph does not keep the batch free (raised only when the file declares a batch)."""


# --------------------------------------------------------------------------- folded values


@dataclass
class _Const:
    """A value known at load time: an initializer, a ``Constant`` or a folded result.

    ``batch`` (int8, the value's shape, or ``None`` when all entries are plain
    numbers) marks the entries that are the free batch size (``_IS_BATCH``) or
    depend on it otherwise (``_FROM_BATCH``); ``value`` holds them at the first of
    :data:`_BATCHES`. ``init`` is the initializer name when the value is a float
    initializer as stored in the file (a would-be parameter).
    """

    value: np.ndarray
    batch: np.ndarray | None = None
    init: str | None = None

    def plain(self) -> np.ndarray | None:
        """The value when it does not depend on the batch, else ``None``."""
        return self.value if self.batch is None or not self.batch.any() else None


@dataclass
class _Tensor:
    """A tensor computed by the graph: its graph name and shape at each of the two batches."""

    name: str
    shapes: tuple[tuple[int, ...], tuple[int, ...]]

    @property
    def rank(self) -> int:
        return len(self.shapes[0])

    def dims(self) -> np.ndarray:
        """Shape at the first batch, with its :attr:`_Const.batch` marks (for ``Shape``)."""
        a, b = (np.array(s, dtype=np.int64) for s in self.shapes)
        marks = np.where(a == b, _STATIC, _FROM_BATCH).astype(np.int8)
        marks[(a == _BATCHES[0]) & (b == _BATCHES[1]) & (a != b)] = _IS_BATCH
        return marks

    def static_dims(self) -> tuple[int, ...]:
        return self.shapes[0]


# --------------------------------------------------------------------------- the importer


@dataclass
class _Ctx:
    """The ONNX node being converted: what error messages name."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    index: int

    def error(self, message: str, attr: str | None = None) -> OnnxImportError:
        return OnnxImportError(message, node=self.name, op=self.op, attr=attr)


@dataclass
class _Importer:
    model: Any
    opset: int
    decl: _InputDecl
    batches: tuple[int, int]
    consts: dict[str, _Const] = field(default_factory=dict)
    tensors: dict[str, _Tensor] = field(default_factory=dict)
    #: SplitToSequence outputs: the node that split and each part's [start, end) on its axis.
    sequences: dict[str, tuple[_Ctx, int, list[tuple[int, int]]]] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    node_names: set[str] = field(default_factory=set)
    consumers: dict[str, int] = field(default_factory=dict)

    @property
    def free(self) -> bool:
        return self.batches[0] != self.batches[1]

    @property
    def dtype(self) -> np.dtype:
        return self.decl.dtype

    def run(self) -> Graph:
        from .graph import Graph

        graph = self.model.graph
        for init in graph.initializer:
            self._add_initializer(init)
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers[name] = self.consumers.get(name, 0) + 1
        out_name = graph.output[0].name
        self.consumers[out_name] = self.consumers.get(out_name, 0) + 1
        self.tensors[self.decl.name] = _Tensor("x", self._input_shapes())
        for index, node in enumerate(graph.node):
            self._convert(node, index)
        self._finish_output(out_name)
        try:
            return Graph(
                self.nodes,
                params=self.params,
                constants=self.constants,
                input="x",
                output="out",
                input_shape=(-1, *self.decl.shape[1:]) if self.free else self.decl.shape,
                dtype=self.dtype.type,
            )
        except CnnError as exc:  # every node was checked on its way in; this is a last guard
            raise OnnxImportError(exc.message, attr=exc.arg) from None

    def _input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        rest = self.decl.shape[1:]
        b1, b2 = self.batches
        return ((b1, *rest), (b2, *rest))

    # ---- initializers and names

    def _add_initializer(self, init: Any) -> None:
        from onnx import numpy_helper

        if init.name in ("x", "out"):
            raise OnnxImportError(
                f'initializer "{init.name}": the names "x" and "out" are reserved for the '
                "input and output",
                attr="initializer",
            )
        if init.name == self.decl.name:
            return  # an initializer that is also the input: a default value, the input wins
        value = numpy_helper.to_array(init)
        float_init = value.dtype.kind == "f"
        # a writeable copy: the protobuf buffer is read-only, and a user may train the weights
        self.consts[init.name] = _Const(np.array(value), init=init.name if float_init else None)

    def _graph_name(self, onnx_name: str) -> str:
        """The graph's name for a computed tensor: ``out`` for the output, else the file's."""
        if onnx_name == self.model.graph.output[0].name:
            return "out"
        if onnx_name in ("x", "out"):
            return f"{onnx_name}.onnx"  # the file's "x" or "out" that is not the input/output
        return onnx_name

    def _node_name(self, ctx: _Ctx, suffix: str = "") -> str:
        base = (ctx.name if not ctx.name.startswith("#") else f"{ctx.op}_{ctx.index}") + suffix
        name, k = base, 1
        while name in self.node_names:
            k += 1
            name = f"{base}.{k}"
        self.node_names.add(name)
        return name

    # ---- conversion of one node

    def _convert(self, node: Any, index: int) -> None:
        import onnx

        ctx = _Ctx(
            name=node.name or f"#{index}",
            op=node.op_type,
            inputs=list(node.input),
            outputs=list(node.output),
            attrs={a.name: onnx.helper.get_attribute_value(a) for a in node.attribute},
            index=index,
        )
        if node.domain not in ("", "ai.onnx"):
            raise ctx.error(
                f"operator {node.op_type} of domain {node.domain} is not supported", attr="domain"
            )
        for name in ctx.inputs:
            if name and name not in self.consts and name not in self.tensors | self.sequences:
                raise ctx.error(f'input "{name}" is not computed before this node', attr="input")
        fold = _FOLDERS.get(node.op_type)
        # A reshaped weight is not folded: it stays a graph input, so its gradient reaches it.
        # A reshaped or transposed weight is not folded either (the legacy exporter's Linear
        # on 4-D activations multiplies by Wᵀ).
        reshaped_weight = node.op_type in ("Reshape", "Transpose") and self._float_init(
            ctx.inputs[0]
        )
        # Arithmetic on a float initializer (a layer-scale weight, say) stays a node too.
        weight_arithmetic = node.op_type in _ARITHMETIC and any(
            self._float_init(n) for n in ctx.inputs
        )
        if (
            fold is not None
            and self._all_constant(ctx)
            and not reshaped_weight
            and not weight_arithmetic
        ):
            self._fold(ctx, fold)
            return
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            if fold is not None:
                raise ctx.error(
                    f"{node.op_type} is supported only on constant inputs (folded at load time); "
                    f'input "{self._first_computed(ctx)}" is computed from the model input',
                    attr="input",
                )
            raise ctx.error(f"operator {node.op_type} is not supported", attr="op_type")
        handler(self, ctx)

    def _all_constant(self, ctx: _Ctx) -> bool:
        if ctx.op == "Shape":
            return True  # the shape of a computed tensor is known at load time
        if ctx.op == "CastLike":  # reads only the dtype of its second input, known too
            return ctx.inputs[0] in self.consts
        return all(not n or n in self.consts for n in ctx.inputs)

    def _float_init(self, name: str) -> bool:
        c = self.consts.get(name)
        return c is not None and c.init is not None

    def _first_computed(self, ctx: _Ctx) -> str:
        return next(n for n in ctx.inputs if n in self.tensors)

    def _fold(self, ctx: _Ctx, fold: Callable[[_Importer, _Ctx], _Const]) -> None:
        for name in ctx.inputs:
            if self._float_init(name) and ctx.op not in ("Identity", "Shape", "Cast", "CastLike"):
                raise ctx.error(
                    f'{ctx.op} of the float initializer "{name}" is not supported: it would '
                    "hide the initializer from the gradient",
                    attr="input",
                )
        result = fold(self, ctx)
        if ctx.outputs[0] == self.model.graph.output[0].name:
            raise ctx.error(
                "the model's output is a constant: it does not depend on the input", attr="output"
            )
        self.consts[ctx.outputs[0]] = result
        self._check_extra_outputs(ctx, 1)

    def _check_extra_outputs(self, ctx: _Ctx, used: int) -> None:
        for name in ctx.outputs[used:]:
            if name and self.consumers.get(name):
                raise ctx.error(
                    f'output "{name}" is used; only the first output is supported', attr="output"
                )

    # ---- inputs of a computed node

    def const_input(self, ctx: _Ctx, i: int, what: str) -> np.ndarray | None:
        """Input ``i`` as a plain constant array, ``None`` when absent; refused when computed."""
        if i >= len(ctx.inputs) or not ctx.inputs[i]:
            return None
        name = ctx.inputs[i]
        c = self.consts.get(name)
        if c is None:
            raise ctx.error(
                f'{what} (input "{name}") must be a constant; it is computed from the model input',
                attr=what,
            )
        v = c.plain()
        if v is None:
            raise ctx.error(f'{what} (input "{name}") depends on the batch size', attr=what)
        return v

    def shape_of(self, ctx: _Ctx, i: int) -> tuple[int, ...]:
        name = ctx.inputs[i]
        t = self.tensors.get(name)
        return t.static_dims() if t is not None else tuple(self.consts[name].value.shape)

    def rank_of(self, ctx: _Ctx, i: int) -> int:
        return len(self.shape_of(ctx, i))

    def emit(
        self,
        ctx: _Ctx,
        op: str,
        inputs: Sequence[str],
        attrs: Mapping[str, Any] | None = None,
        *,
        grad: Sequence[bool] | None = None,
        output: str | None = None,
        suffix: str = "",
    ) -> str:
        """Append a graph node reading the ONNX tensors ``inputs``; returns its output's ONNX name.

        ``grad[i]`` says whether input ``i`` is differentiable: a float initializer
        there is a parameter, anywhere else (BatchNormalization's statistics) a constant.
        """
        from .graph import Node

        attrs = dict(attrs or {})
        grad = list(grad) if grad is not None else [True] * len(inputs)
        names = []
        for i, name in enumerate(inputs):
            c = self.consts.get(name)
            names.append(
                self.tensors[name].name
                if c is None
                else self._register_const(ctx, name, c, grad[i])
            )
        out_onnx = output if output is not None else ctx.outputs[0]
        shapes = [self._infer(ctx, op, inputs, attrs, k) for k in range(2)]
        out = self._graph_name(out_onnx)
        self.nodes.append(Node(self._node_name(ctx, suffix), op, tuple(names), out, attrs))
        self.tensors[out_onnx] = _Tensor(out, (shapes[0], shapes[1]))
        return out_onnx

    def _register_const(self, ctx: _Ctx, name: str, c: _Const, differentiable: bool) -> str:
        value = c.plain()
        if value is None:
            raise ctx.error(f'input "{name}" depends on the batch size', attr="input")
        if value.dtype.kind in "fiub":
            value = value.astype(self.dtype, copy=False)
        else:
            raise ctx.error(f'input "{name}" has dtype {value.dtype}, not a number', attr="input")
        if c.init is not None and differentiable:
            self.constants.pop(c.init, None)
            self.params[c.init] = value  # keyed by the initializer's own name, through any Identity
            return c.init
        key = c.init or name
        if key not in self.params:
            self.constants[key] = value
        return key

    def _infer(
        self, ctx: _Ctx, op: str, inputs: Sequence[str], attrs: Mapping[str, Any], k: int
    ) -> tuple[int, ...]:
        """The output shape of graph op ``op`` on the ONNX tensors ``inputs`` at batch ``k``."""
        from .graph import OPS

        shapes = [
            self.tensors[n].shapes[k] if n in self.tensors else tuple(self.consts[n].value.shape)
            for n in inputs
        ]
        try:
            out_shape, _ = _op_shape(OPS[op], shapes, attrs)
        except CnnError as exc:
            if self.free and self.decl.shape[0] > 0:
                raise _BatchBoundError() from exc
            raise ctx.error(
                getattr(exc, "message", str(exc)), attr=getattr(exc, "arg", None)
            ) from None
        return tuple(int(d) for d in out_shape)

    def _finish_output(self, onnx_out: str) -> None:
        if onnx_out in self.consts:
            raise OnnxImportError(
                "the model's output is a constant: it does not depend on the input", attr="output"
            )
        if onnx_out not in self.tensors:
            raise OnnxImportError(
                f'the model\'s output "{onnx_out}" is not computed by any node', attr="output"
            )
        t = self.tensors[onnx_out]
        if t.name != "out":  # the output is the input itself
            from .graph import Node

            self.nodes.append(Node("output", "identity", (t.name,), "out", {}))
        if self.free and (t.rank == 0 or t.dims()[0] != _IS_BATCH):
            if self.decl.shape[0] > 0:
                raise _BatchBoundError()
            raise OnnxImportError(
                "the output's first dimension does not follow the input's batch size", attr="output"
            )


def _op_shape(
    op: Any, shapes: list[tuple[int, ...]], attrs: Mapping[str, Any]
) -> tuple[tuple[int, ...], int]:
    fn = op["shape"] if isinstance(op, Mapping) else op.shape
    out, flops = fn(shapes, attrs)
    return tuple(out), int(flops)


# --------------------------------------------------------------------------- attributes


def _check_attrs(ctx: _Ctx, allowed: Iterable[str]) -> None:
    allowed = set(allowed)
    for name in ctx.attrs:
        if name not in allowed:
            raise ctx.error(f"attribute {name} is not supported", attr=name)


def _ints(ctx: _Ctx, name: str, length: int, default: int | None) -> tuple[int, ...]:
    v = ctx.attrs.get(name)
    if v is None:
        if default is None:
            raise ctx.error(f"attribute {name} is required", attr=name)
        return (default,) * length
    v = tuple(int(a) for a in v)
    if len(v) != length:
        raise ctx.error(f"{name} has {len(v)} values, expected {length}", attr=name)
    return v


def _auto_pad(ctx: _Ctx) -> str:
    v = ctx.attrs.get("auto_pad", b"NOTSET")
    v = v.decode() if isinstance(v, bytes) else str(v)
    if v not in ("NOTSET", "VALID", "SAME_UPPER"):
        raise ctx.error(f"auto_pad {v} is not supported", attr="auto_pad")
    return v


def _window(
    ctx: _Ctx,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[int, int, int, int]:
    """ONNX ``pads``/``auto_pad`` of a 2-D window -> padding ``(top, bottom, left, right)``."""
    mode = _auto_pad(ctx)
    if mode != "NOTSET" and "pads" in ctx.attrs:
        raise ctx.error(f"pads together with auto_pad {mode} is not valid ONNX", attr="pads")
    if mode == "VALID":
        return (0, 0, 0, 0)
    if mode == "SAME_UPPER":
        # out = ceil(in / s); the total padding that gives it, the odd pixel at the end.
        pads = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            pads.append((total // 2, total - total // 2))
        return (pads[0][0], pads[0][1], pads[1][0], pads[1][1])
    top, left, bottom, right = _ints(ctx, "pads", 4, 0)
    if min(top, left, bottom, right) < 0:
        raise ctx.error(
            f"negative pads {[top, left, bottom, right]} are not supported", attr="pads"
        )
    return (top, bottom, left, right)


def _spatial_input(imp: _Importer, ctx: _Ctx) -> tuple[int, int]:
    shape = imp.shape_of(ctx, 0)
    if len(shape) != 4:
        raise ctx.error(
            f"only 2-D (N, C, H, W) inputs are supported, the input has shape {list(shape)}",
            attr="input",
        )
    return shape[2], shape[3]


def _axis(ctx: _Ctx, axis: int, rank: int, name: str = "axis", *, batch_ok: bool = True) -> int:
    if not -rank <= axis < rank:
        raise ctx.error(f"{name} {axis} is out of range for rank {rank}", attr=name)
    axis %= rank
    if axis == 0 and not batch_ok:
        raise ctx.error(f"{name} 0 (the batch) is not supported", attr=name)
    return axis


# --------------------------------------------------------------------------- computed nodes


def _conv(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
    spatial = _spatial_input(imp, ctx)
    w_shape = imp.shape_of(ctx, 1)
    if len(w_shape) != 4:
        raise ctx.error(
            f"the weight has shape {list(w_shape)}; only 2-D kernels (F, C, KH, KW) are supported",
            attr="W",
        )
    kernel = (
        _ints(ctx, "kernel_shape", 2, None)
        if "kernel_shape" in ctx.attrs
        else (w_shape[2], w_shape[3])
    )
    if kernel != tuple(w_shape[2:]):
        raise ctx.error(
            f"kernel_shape {list(kernel)} disagrees with the weight's {list(w_shape[2:])}",
            attr="kernel_shape",
        )
    strides = _ints(ctx, "strides", 2, 1)
    dilations = _ints(ctx, "dilations", 2, 1)
    group = int(ctx.attrs.get("group", 1))
    attrs = {
        "stride": strides,
        "padding": _window(ctx, spatial, kernel, strides, dilations),
        "dilation": dilations,
        "groups": group,
    }
    imp.emit(ctx, "conv2d", [n for n in ctx.inputs if n], attrs)


def _pool(mode: str) -> Callable[[_Importer, _Ctx], None]:
    def convert(imp: _Importer, ctx: _Ctx) -> None:
        allowed = {"auto_pad", "ceil_mode", "kernel_shape", "pads", "strides", "dilations"}
        allowed |= {"storage_order"} if mode == "max" else {"count_include_pad"}
        _check_attrs(ctx, allowed)
        if int(ctx.attrs.get("storage_order", 0)) != 0:
            raise ctx.error(
                f"storage_order {ctx.attrs['storage_order']} is not supported (only 0)",
                attr="storage_order",
            )
        imp._check_extra_outputs(ctx, 1)
        spatial = _spatial_input(imp, ctx)
        kernel = _ints(ctx, "kernel_shape", 2, None)
        strides = _ints(ctx, "strides", 2, 1)
        dilations = _ints(ctx, "dilations", 2, 1)
        if dilations != (1, 1):
            raise ctx.error(
                f"dilations {list(dilations)} are not supported (only 1)", attr="dilations"
            )
        ceil_mode = bool(ctx.attrs.get("ceil_mode", 0))
        if ceil_mode and _auto_pad(ctx) != "NOTSET":
            raise ctx.error(
                f"ceil_mode 1 with auto_pad {_auto_pad(ctx)} is not supported", attr="ceil_mode"
            )
        attrs = {
            "mode": mode,
            "kernel_size": kernel,
            "stride": strides,
            "padding": _window(ctx, spatial, kernel, strides, dilations),
            "ceil_mode": ceil_mode,
            "count_include_pad": bool(ctx.attrs.get("count_include_pad", 0)),
        }
        imp.emit(ctx, "pool2d", ctx.inputs[:1], attrs)

    return convert


def _global_avg_pool(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, ())
    _spatial_input(imp, ctx)
    imp.emit(ctx, "global_avg_pool", ctx.inputs[:1])


def _reduce_mean(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, {"axes", "keepdims", "noop_with_empty_axes"})
    rank = imp.rank_of(ctx, 0)
    if imp.opset >= 18:
        given = imp.const_input(ctx, 1, "axes")
        axes = None if given is None else [int(a) for a in given.reshape(-1)]
    else:
        axes = [int(a) for a in ctx.attrs["axes"]] if "axes" in ctx.attrs else None
    if not axes:
        if int(ctx.attrs.get("noop_with_empty_axes", 0)):
            imp.emit(ctx, "identity", ctx.inputs[:1])
            return
        axes = list(range(rank))
    norm = tuple(sorted({_axis(ctx, a, rank, "axes", batch_ok=False) for a in axes}))
    imp.emit(
        ctx,
        "reduce_mean",
        ctx.inputs[:1],
        {"axes": norm, "keepdims": bool(ctx.attrs.get("keepdims", 1))},
    )


def _unary(op: str) -> Callable[[_Importer, _Ctx], None]:
    def convert(imp: _Importer, ctx: _Ctx) -> None:
        _check_attrs(ctx, ())
        imp.emit(ctx, op, ctx.inputs[:1])

    return convert


def _clip(imp: _Importer, ctx: _Ctx) -> None:
    bounds: list[float | None] = []
    if imp.opset < 11:
        _check_attrs(ctx, {"min", "max"})
        for name in ("min", "max"):
            v = ctx.attrs.get(name)
            bounds.append(None if v is None else float(v))
    else:
        _check_attrs(ctx, ())
        for i, name in ((1, "min"), (2, "max")):
            v = imp.const_input(ctx, i, name)
            if v is not None and v.size != 1:
                raise ctx.error(f"{name} must be a scalar, it has shape {list(v.shape)}", attr=name)
            bounds.append(None if v is None else float(v.reshape(())))
    lo, hi = bounds
    # float32's extremes are ONNX's defaults for "unbounded" in the attribute form.
    lo = None if lo is not None and lo <= -np.finfo(np.float32).max else lo
    hi = None if hi is not None and hi >= np.finfo(np.float32).max else hi
    if lo is not None and hi is not None and lo > hi:
        raise ctx.error(f"min {lo} is greater than max {hi}", attr="min")
    imp.emit(ctx, "clip", ctx.inputs[:1], {"min": lo, "max": hi})


def _batchnorm(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, {"epsilon", "momentum", "training_mode", "spatial"})
    if int(ctx.attrs.get("training_mode", 0)) != 0:
        raise ctx.error(
            "training_mode 1 is not supported (inference form only)", attr="training_mode"
        )
    imp._check_extra_outputs(ctx, 1)
    for i, what in ((3, "mean"), (4, "var")):
        imp.const_input(ctx, i, what)  # running statistics: constants, never computed
    imp.emit(
        ctx,
        "batchnorm",
        ctx.inputs[:5],
        {"epsilon": float(ctx.attrs.get("epsilon", 1e-5))},
        grad=[True, True, True, False, False],
    )


def _binary(op: str) -> Callable[[_Importer, _Ctx], None]:
    """``Mul``, ``Sub``, ``Div`` (and ``Add``): numpy broadcasting, no attributes."""

    def convert(imp: _Importer, ctx: _Ctx) -> None:
        _check_attrs(ctx, ())
        imp.emit(ctx, op, ctx.inputs[:2])

    return convert


def _hard_sigmoid(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, {"alpha", "beta"})
    alpha = float(ctx.attrs.get("alpha", 0.2))
    beta = float(ctx.attrs.get("beta", 0.5))
    imp.emit(ctx, "hard_sigmoid", ctx.inputs[:1], {"alpha": alpha, "beta": beta})


def _pow(imp: _Importer, ctx: _Ctx) -> None:
    """``Pow`` with a constant scalar exponent (``x ** 2`` of a variance, ``** 0.5``)."""
    _check_attrs(ctx, ())
    if ctx.inputs[1] not in imp.consts:
        raise ctx.error("the exponent must be a constant", attr="input")
    exponent = imp.consts[ctx.inputs[1]].value
    if exponent.size != 1:
        raise ctx.error(f"the exponent must be a scalar, it has shape {list(exponent.shape)}")
    imp.emit(ctx, "pow", ctx.inputs[:1], {"exponent": float(exponent.reshape(()))})


def _batch_first(imp: _Importer, ctx: _Ctx) -> np.ndarray:
    """The input's per-axis batch marks, refusing a tensor whose axis 0 is not the batch."""
    marks = imp.tensors[ctx.inputs[0]].dims()
    if len(marks) == 0 or marks[0] != _IS_BATCH:
        raise ctx.error("the input's axis 0 is not the batch", attr="input")
    return marks


def _transpose(imp: _Importer, ctx: _Ctx) -> None:
    """Transpose of a computed tensor: any permutation that keeps the batch on axis 0."""
    _check_attrs(ctx, {"perm"})
    weight = ctx.inputs[0] in imp.consts  # a float initializer: a parameter, no batch
    rank = imp.rank_of(ctx, 0) if weight else len(_batch_first(imp, ctx))
    perm = [int(p) for p in ctx.attrs.get("perm", range(rank - 1, -1, -1))]
    if sorted(perm) != list(range(rank)):
        raise ctx.error(f"perm {perm} is not a permutation of {rank} axes", attr="perm")
    if perm[0] != 0 and not weight:
        raise ctx.error(
            f"perm {perm} moves the batch axis; only permutations keeping it first are supported",
            attr="perm",
        )
    imp.emit(ctx, "transpose", ctx.inputs[:1], {"perm": tuple(perm)})


def _windows(
    imp: _Importer, ctx: _Ctx, bounds: dict[int, tuple[int, int]], output: str, suffix: str = ""
) -> None:
    """Emit a slice node keeping ``[start:end]`` on each axis of ``bounds`` (static sizes)."""
    shape = imp.shape_of(ctx, 0)
    starts = [0] * (len(shape) - 1)
    ends = list(shape[1:])
    for axis, (start, end) in bounds.items():
        starts[axis - 1], ends[axis - 1] = start, end
    imp.emit(
        ctx,
        "slice",
        ctx.inputs[:1],
        {"starts": tuple(starts), "ends": tuple(ends)},
        output=output,
        suffix=suffix,
    )


def _static_axis(ctx: _Ctx, marks: np.ndarray, axis: int, what: str) -> int:
    axis = _axis(ctx, axis, len(marks), what)
    if marks[axis] != _STATIC:
        raise ctx.error(f"{what} {axis} has a size that depends on the batch", attr=what)
    return axis


def _slice(imp: _Importer, ctx: _Ctx) -> None:
    """Slice of a computed tensor, step 1, on axes whose sizes do not depend on the batch."""
    _check_attrs(ctx, ())
    marks = _batch_first(imp, ctx)
    shape = imp.shape_of(ctx, 0)
    starts = imp.const_input(ctx, 1, "starts")
    ends = imp.const_input(ctx, 2, "ends")
    assert starts is not None  # required by the ONNX schema, which the checker enforces
    assert ends is not None
    axes = imp.const_input(ctx, 3, "axes")
    steps = imp.const_input(ctx, 4, "steps")
    axis_list = range(len(starts.reshape(-1))) if axes is None else axes.reshape(-1)
    if steps is not None and np.any(steps != 1):
        raise ctx.error(f"steps {steps.tolist()} are not supported (only 1)", attr="steps")
    bounds = {}
    for a, start, end in zip(axis_list, starts.reshape(-1), ends.reshape(-1), strict=True):
        axis = _static_axis(ctx, marks, int(a), "axes")
        n = shape[axis]
        lo, hi = (int(v) + n if v < 0 else int(v) for v in (start, end))
        bounds[axis] = (min(max(lo, 0), n), max(min(max(hi, 0), n), min(max(lo, 0), n)))
    _windows(imp, ctx, bounds, ctx.outputs[0])


def _split(imp: _Importer, ctx: _Ctx) -> None:
    """Split of a computed tensor along an axis whose size does not depend on the batch
    (ShuffleNetV2's channel split): one slice node per output."""
    _check_attrs(ctx, {"axis", "split", "num_outputs"})
    marks = _batch_first(imp, ctx)
    axis = _static_axis(ctx, marks, int(ctx.attrs.get("axis", 0)), "axis")
    size = imp.shape_of(ctx, 0)[axis]
    given = ctx.attrs.get("split")
    sizes = imp.const_input(ctx, 1, "split")
    if sizes is None and given is not None:
        sizes = np.asarray(given)
    outputs = list(ctx.outputs)
    if sizes is None:  # equal parts, the last one smaller when the size does not divide
        part = -(-size // len(outputs))
        sizes = np.array([min(part, size - k * part) for k in range(len(outputs))])
    parts = [int(v) for v in sizes.reshape(-1)]
    if len(parts) != len(outputs) or sum(parts) != size or min(parts) < 0:
        raise ctx.error(
            f"split {parts} does not cut axis {axis} of size {size} into {len(outputs)} parts",
            attr="split",
        )
    start = 0
    for k, (out, n) in enumerate(zip(outputs, parts, strict=True)):
        if out:
            _windows(imp, ctx, {axis: (start, start + n)}, out, suffix=f":{k}" if k else "")
        start += n


def _squeeze_axes(imp: _Importer, ctx: _Ctx) -> list[int] | None:
    """The ``axes`` of Squeeze/Unsqueeze: a constant input from opset 13, else an attribute."""
    if imp.opset >= 13:
        _check_attrs(ctx, ())
        given = imp.const_input(ctx, 1, "axes")
        return None if given is None else [int(a) for a in given.reshape(-1)]
    _check_attrs(ctx, {"axes"})
    return [int(a) for a in ctx.attrs["axes"]] if "axes" in ctx.attrs else None


def _reshaped(imp: _Importer, ctx: _Ctx, dims: list[int]) -> None:
    """Emit a reshape to ``dims`` (static sizes after the batch, which stays first)."""
    imp.emit(ctx, "reshape", ctx.inputs[:1], {"shape": (0, *dims)})


def _unsqueeze(imp: _Importer, ctx: _Ctx) -> None:
    """Unsqueeze of a computed tensor: size-1 axes anywhere after the batch."""
    _batch_first(imp, ctx)
    axes = _squeeze_axes(imp, ctx)
    if axes is None:
        raise ctx.error("axes are required", attr="axes")
    shape = list(imp.shape_of(ctx, 0))
    out_rank = len(shape) + len(axes)
    norm = sorted(_axis(ctx, a, out_rank, "axes") for a in axes)
    if len(set(norm)) != len(norm) or norm[0] == 0:
        raise ctx.error(f"axes {axes} repeat an axis or come before the batch", attr="axes")
    rest = iter(shape[1:])
    _reshaped(imp, ctx, [1 if i in norm else next(rest) for i in range(1, out_rank)])


def _squeeze(imp: _Importer, ctx: _Ctx) -> None:
    """Squeeze of a computed tensor: size-1 axes after the batch (all of them by default)."""
    marks = _batch_first(imp, ctx)
    axes = _squeeze_axes(imp, ctx)
    shape = imp.shape_of(ctx, 0)
    if axes is None:
        norm = [i for i in range(1, len(shape)) if shape[i] == 1 and marks[i] == _STATIC]
    else:
        norm = sorted({_axis(ctx, a, len(shape), "axes") for a in axes})
    if any(a == 0 or shape[a] != 1 or marks[a] != _STATIC for a in norm):
        raise ctx.error(f"axes {norm} of shape {list(shape)} are not all 1", attr="axes")
    _reshaped(imp, ctx, [shape[i] for i in range(1, len(shape)) if i not in norm])


def _split_to_sequence(imp: _Importer, ctx: _Ctx) -> None:
    """The dynamo exporter's ``chunk``: parts of a constant size (or the given sizes) along
    an axis; nothing is computed until ``SequenceAt`` takes a part (a slice)."""
    _check_attrs(ctx, {"axis", "keepdims"})
    marks = _batch_first(imp, ctx)
    axis = _static_axis(ctx, marks, int(ctx.attrs.get("axis", 0)), "axis")
    size = imp.shape_of(ctx, 0)[axis]
    split = imp.const_input(ctx, 1, "split")
    if split is None:
        raise ctx.error("a split into parts of size 1 (no split input) is not supported")
    if split.ndim == 0:
        step = int(split)
        if step < 1:
            raise ctx.error(f"split {step} must be positive", attr="split")
        sizes = [min(step, size - k) for k in range(0, size, step)]
    else:
        sizes = [int(v) for v in split.reshape(-1)]
    if sum(sizes) != size or min(sizes) < 0:
        raise ctx.error(f"split {sizes} does not cut axis {axis} of size {size}", attr="split")
    starts = np.cumsum([0, *sizes])
    bounds = [(int(a), int(b)) for a, b in itertools.pairwise(starts)]
    imp.sequences[ctx.outputs[0]] = (ctx, axis, bounds)


def _sequence_at(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, ())
    seq = imp.sequences.get(ctx.inputs[0])
    if seq is None:
        raise ctx.error(f'input "{ctx.inputs[0]}" is not a SplitToSequence output', attr="input")
    split, axis, bounds = seq
    position = imp.const_input(ctx, 1, "position")
    assert position is not None  # required by the ONNX schema
    k = int(position.reshape(()))
    if not -len(bounds) <= k < len(bounds):
        raise ctx.error(f"position {k} is out of range for {len(bounds)} parts", attr="position")
    k %= len(bounds)
    _windows(imp, split, {axis: bounds[k]}, ctx.outputs[0], suffix=f":{k}")


def _layer_norm(imp: _Importer, ctx: _Ctx) -> None:
    """LayerNormalization over the axes from ``axis`` on (never the batch); only its first
    output (the saved mean and inverse deviation are training outputs)."""
    _check_attrs(ctx, {"axis", "epsilon", "stash_type"})
    rank = imp.rank_of(ctx, 0)
    axis = _axis(ctx, int(ctx.attrs.get("axis", -1)), rank, "axis")
    if axis == 0:
        raise ctx.error("normalizing over the batch axis (axis 0) is not supported", attr="axis")
    if int(ctx.attrs.get("stash_type", 1)) != 1:
        raise ctx.error("stash_type other than 1 (float) is not supported", attr="stash_type")
    attrs = {"axis": axis, "epsilon": float(ctx.attrs.get("epsilon", 1e-5))}
    imp.emit(ctx, "layer_norm", [n for n in ctx.inputs[:3] if n], attrs)
    imp._check_extra_outputs(ctx, 1)


def _gelu(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, {"approximate"})
    approximate = ctx.attrs.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    if approximate not in ("none", "tanh"):
        raise ctx.error(f"approximate {approximate!r} is not supported", attr="approximate")
    imp.emit(ctx, "gelu", ctx.inputs[:1], {"approximate": approximate})


def _concat(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, {"axis"})
    axis = _axis(ctx, int(ctx.attrs["axis"]), imp.rank_of(ctx, 0), batch_ok=False)
    imp.emit(ctx, "concat", ctx.inputs, {"axis": axis})


def _flatten(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, {"axis"})
    rank = imp.rank_of(ctx, 0)
    axis = int(ctx.attrs.get("axis", 1))
    if not -rank <= axis <= rank:
        raise ctx.error(f"axis {axis} is out of range for rank {rank}", attr="axis")
    imp.emit(ctx, "flatten", ctx.inputs[:1], {"axis": axis + rank if axis < 0 else axis})


def _reshape(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, {"allowzero"})
    name = ctx.inputs[1]
    c = imp.consts.get(name)
    if c is None:
        raise ctx.error(
            f'shape (input "{name}") must be a constant; it is computed from the model input',
            attr="shape",
        )
    target = [int(v) for v in c.value.reshape(-1)]
    marks = c.batch.reshape(-1) if c.batch is not None else np.zeros(len(target), np.int8)
    t = imp.tensors.get(ctx.inputs[0])
    in_marks = t.dims() if t is not None else np.zeros(imp.rank_of(ctx, 0), np.int8)
    allowzero = int(ctx.attrs.get("allowzero", 0))
    for i, (v, m) in enumerate(zip(target, marks, strict=True)):
        if m == _IS_BATCH and i < len(in_marks) and in_marks[i] == _IS_BATCH:
            target[i] = 0  # "copy the input's dimension": the batch, whatever its size
        elif m != _STATIC:
            raise ctx.error(
                f"shape entry {i} depends on the batch size in a way that cannot be kept",
                attr="shape",
            )
        elif v == 0 and allowzero:
            raise ctx.error(
                "a 0 in shape with allowzero 1 (an empty tensor) is not supported", attr="allowzero"
            )
    imp.emit(ctx, "reshape", ctx.inputs[:1], {"shape": tuple(target)})


def _gemm(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, {"alpha", "beta", "transA", "transB"})
    attrs = {
        "alpha": float(ctx.attrs.get("alpha", 1.0)),
        "beta": float(ctx.attrs.get("beta", 1.0)),
        "trans_a": bool(ctx.attrs.get("transA", 0)),
        "trans_b": bool(ctx.attrs.get("transB", 0)),
    }
    imp.emit(ctx, "gemm", [n for n in ctx.inputs[:3] if n], attrs)


def _matmul(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, ())
    imp.emit(ctx, "matmul", ctx.inputs[:2])


def _softmax(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, {"axis"})
    shape = imp.shape_of(ctx, 0)
    rank = len(shape)
    if imp.opset >= 13:
        imp.emit(
            ctx,
            "softmax",
            ctx.inputs[:1],
            {"axis": _axis(ctx, int(ctx.attrs.get("axis", -1)), rank)},
        )
        return
    # Before opset 13 the input is seen as 2-D, (prod(shape[:axis]), prod(shape[axis:])),
    # and normalised over the whole second dimension.
    axis = int(ctx.attrs.get("axis", 1))
    if not -rank <= axis < rank:
        raise ctx.error(f"axis {axis} is out of range for rank {rank}", attr="axis")
    axis %= rank
    if axis == rank - 1:
        imp.emit(ctx, "softmax", ctx.inputs[:1], {"axis": axis})
        return
    flat = imp.emit(
        ctx, "flatten", ctx.inputs[:1], {"axis": axis}, output=f"{ctx.outputs[0]}:2d", suffix=":2d"
    )
    soft = imp.emit(
        ctx, "softmax", [flat], {"axis": 1}, output=f"{ctx.outputs[0]}:softmax", suffix=":softmax"
    )
    imp.emit(ctx, "reshape", [soft], {"shape": (-1, *shape[1:])})


def _dropout(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, {"ratio", "seed", "is_test"})
    imp._check_extra_outputs(ctx, 1)
    training = imp.const_input(ctx, 2, "training_mode") if imp.opset >= 12 else None
    if training is not None and bool(training.reshape(-1)[0]):
        raise ctx.error(
            "training_mode true is not supported (inference: pass-through)", attr="training_mode"
        )
    imp.emit(ctx, "identity", ctx.inputs[:1])


def _identity(imp: _Importer, ctx: _Ctx) -> None:
    _check_attrs(ctx, ())
    imp.emit(ctx, "identity", ctx.inputs[:1])


def _pad(imp: _Importer, ctx: _Ctx) -> None:
    rank = imp.rank_of(ctx, 0)
    if imp.opset < 11:
        _check_attrs(ctx, {"mode", "pads", "value"})
        pads = [int(p) for p in ctx.attrs["pads"]]
        value = float(ctx.attrs.get("value", 0.0))
        axes = list(range(rank))
    else:
        _check_attrs(ctx, {"mode"})
        given = imp.const_input(ctx, 1, "pads")
        assert given is not None  # required by the ONNX schema, which the checker enforces
        pads = [int(p) for p in given.reshape(-1)]
        v = imp.const_input(ctx, 2, "constant_value")
        value = 0.0 if v is None or v.size == 0 else float(v.reshape(-1)[0])
        a = imp.const_input(ctx, 3, "axes")
        axes = (
            list(range(rank))
            if a is None
            else [_axis(ctx, int(i), rank, "axes") for i in a.reshape(-1)]
        )
    mode = ctx.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "constant":
        raise ctx.error(f"mode {mode} is not supported (only constant)", attr="mode")
    if len(pads) != 2 * len(axes):
        raise ctx.error(f"pads has {len(pads)} values, expected {2 * len(axes)}", attr="pads")
    full = [0] * (2 * rank)
    for k, axis in enumerate(axes):
        full[axis], full[rank + axis] = pads[k], pads[len(axes) + k]
    if min(full) < 0:
        raise ctx.error(f"negative pads {full} (cropping) are not supported", attr="pads")
    if full[0] or full[rank]:
        raise ctx.error("padding the batch axis (0) is not supported", attr="pads")
    imp.emit(ctx, "pad", ctx.inputs[:1], {"pads": tuple(full), "value": value})


_HANDLERS: dict[str, Callable[[_Importer, _Ctx], None]] = {
    "Conv": _conv,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_avg_pool,
    "ReduceMean": _reduce_mean,
    "Relu": _unary("relu"),
    "Clip": _clip,
    "BatchNormalization": _batchnorm,
    "Add": _binary("add"),
    "Sub": _binary("sub"),
    "Mul": _binary("mul"),
    "Div": _binary("div"),
    "Sigmoid": _unary("sigmoid"),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _unary("hard_swish"),
    "Tanh": _unary("tanh"),
    "Sqrt": _unary("sqrt"),
    "Neg": _unary("neg"),
    "Pow": _pow,
    "Erf": _unary("erf"),
    "Gelu": _gelu,
    "LayerNormalization": _layer_norm,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Split": _split,
    "SplitToSequence": _split_to_sequence,
    "SequenceAt": _sequence_at,
    "Concat": _concat,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Softmax": _softmax,
    "Dropout": _dropout,
    "Identity": _identity,
    "Pad": _pad,
}


# --------------------------------------------------------------------------- folding


def _inputs(imp: _Importer, ctx: _Ctx) -> list[_Const | None]:
    return [imp.consts[n] if n else None for n in ctx.inputs]


def _same(c: _Const, op: Callable[[np.ndarray], np.ndarray]) -> _Const:
    """Apply an index operation to a value and to its batch marks alike."""
    return _Const(op(c.value), None if c.batch is None else op(c.batch))


def _fold_constant(imp: _Importer, ctx: _Ctx) -> _Const:
    from onnx import numpy_helper

    if len(ctx.attrs) != 1:
        raise ctx.error(f"expected one value attribute, got {sorted(ctx.attrs)}", attr="value")
    ((name, v),) = ctx.attrs.items()
    if name == "value":
        return _Const(np.asarray(numpy_helper.to_array(v)))
    plain = {
        "value_float": np.float32,
        "value_floats": np.float32,
        "value_int": np.int64,
        "value_ints": np.int64,
    }
    if name not in plain:
        raise ctx.error(f"attribute {name} is not supported", attr=name)
    return _Const(np.asarray(v, dtype=plain[name]))


def _fold_constant_of_shape(imp: _Importer, ctx: _Ctx) -> _Const:
    from onnx import numpy_helper

    _check_attrs(ctx, {"value"})
    shape = imp.const_input(ctx, 0, "input")
    assert shape is not None
    fill = (
        numpy_helper.to_array(ctx.attrs["value"])
        if "value" in ctx.attrs
        else np.zeros(1, np.float32)
    )
    dims = [int(d) for d in shape.reshape(-1)]
    if any(d < 0 for d in dims) or math.prod(dims) > 1 << 20:
        raise ctx.error(f"shape {dims} is negative or too large to fold", attr="input")
    return _Const(np.full(dims, fill.reshape(-1)[0], dtype=fill.dtype))


def _fold_shape(imp: _Importer, ctx: _Ctx) -> _Const:
    _check_attrs(ctx, {"start", "end"})
    name = ctx.inputs[0]
    t = imp.tensors.get(name)
    if t is not None:
        full = _Const(np.array(t.static_dims(), dtype=np.int64), t.dims())
    else:
        full = _Const(np.array(imp.consts[name].value.shape, dtype=np.int64))
    rank = len(full.value)
    start = int(ctx.attrs.get("start", 0))
    end = int(ctx.attrs.get("end", rank))
    start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
    return _same(full, lambda a: a[start:end])


def _fold_gather(imp: _Importer, ctx: _Ctx) -> _Const:
    _check_attrs(ctx, {"axis"})
    data, idx = _inputs(imp, ctx)
    assert data is not None
    assert idx is not None
    indices = idx.plain()
    if indices is None:
        raise ctx.error("indices depend on the batch size", attr="indices")
    rank = data.value.ndim
    axis = _axis(ctx, int(ctx.attrs.get("axis", 0)), rank)
    size = data.value.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise ctx.error(f"indices {indices.tolist()} out of range for size {size}", attr="indices")
    ind = np.where(indices < 0, indices + size, indices).astype(np.int64)
    return _same(data, lambda a: np.take(a, ind, axis=axis))


def _fold_unsqueeze(imp: _Importer, ctx: _Ctx) -> _Const:
    data = imp.consts[ctx.inputs[0]]
    if imp.opset >= 13:
        _check_attrs(ctx, ())
        given = imp.const_input(ctx, 1, "axes")
        assert given is not None
        axes = [int(a) for a in given.reshape(-1)]
    else:
        _check_attrs(ctx, {"axes"})
        axes = [int(a) for a in ctx.attrs["axes"]]
    out_rank = data.value.ndim + len(axes)
    norm = sorted(_axis(ctx, a, out_rank, "axes") for a in axes)
    if len(set(norm)) != len(norm):
        raise ctx.error(f"axes {axes} repeat an axis", attr="axes")
    return _same(data, lambda a: np.expand_dims(a, tuple(norm)))


def _fold_concat(imp: _Importer, ctx: _Ctx) -> _Const:
    _check_attrs(ctx, {"axis"})
    parts = [c for c in _inputs(imp, ctx) if c is not None]
    axis = _axis(ctx, int(ctx.attrs["axis"]), parts[0].value.ndim)
    value = np.concatenate([p.value for p in parts], axis=axis)
    if all(p.batch is None for p in parts):
        return _Const(value)
    marks = [p.batch if p.batch is not None else np.zeros(p.value.shape, np.int8) for p in parts]
    return _Const(value, np.concatenate(marks, axis=axis))


def _fold_slice(imp: _Importer, ctx: _Ctx) -> _Const:
    _check_attrs(ctx, ())
    data = imp.consts[ctx.inputs[0]]
    starts, ends, axes, steps = (
        imp.const_input(ctx, i, w) for i, w in enumerate(("starts", "ends", "axes", "steps"), 1)
    )
    assert starts is not None
    assert ends is not None
    rank = data.value.ndim
    axes_l = (
        list(range(len(starts)))
        if axes is None
        else [_axis(ctx, int(a), rank, "axes") for a in axes]
    )
    steps_l = [1] * len(axes_l) if steps is None else [int(s) for s in steps]
    index: list[Any] = [slice(None)] * rank
    for axis, start, end, step in zip(axes_l, starts.tolist(), ends.tolist(), steps_l, strict=True):
        if step == 0:
            raise ctx.error("a step of 0 is not valid", attr="steps")
        dim = data.value.shape[axis]
        start, end = (v + dim if v < 0 else v for v in (int(start), int(end)))
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        index[axis] = np.arange(start, end, step, dtype=np.int64)
    result = data
    for axis, ind in enumerate(index):
        if isinstance(ind, np.ndarray):
            result = _same(result, partial(np.take, indices=ind, axis=axis))
    return result


def _fold_transpose(imp: _Importer, ctx: _Ctx) -> _Const:
    _check_attrs(ctx, {"perm"})
    data = imp.consts[ctx.inputs[0]]
    perm = [int(p) for p in ctx.attrs.get("perm", range(data.value.ndim)[::-1])]
    if sorted(perm) != list(range(data.value.ndim)):
        raise ctx.error(f"perm {perm} is not a permutation of {data.value.ndim} axes", attr="perm")
    return _same(data, lambda a: np.transpose(a, perm))


def _fold_cast(imp: _Importer, ctx: _Ctx) -> _Const:
    import onnx

    _check_attrs(ctx, {"to", "saturate"})
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(int(ctx.attrs["to"]))
    except (KeyError, ValueError):
        raise ctx.error(f"cast to type {ctx.attrs.get('to')} is not supported", attr="to") from None
    return _cast(imp, ctx, np.dtype(dtype))


def _fold_cast_like(imp: _Importer, ctx: _Ctx) -> _Const:
    _check_attrs(ctx, {"saturate"})
    like = ctx.inputs[1]
    dtype = imp.consts[like].value.dtype if like in imp.consts else imp.dtype
    return _cast(imp, ctx, dtype)


def _cast(imp: _Importer, ctx: _Ctx, dtype: np.dtype) -> _Const:
    data = imp.consts[ctx.inputs[0]]
    if data.batch is not None and data.batch.any() and dtype.kind not in "iu":
        raise ctx.error(
            "casting a batch-dependent shape to a non-integer type is not supported", attr="to"
        )
    if data.init is not None:
        if dtype.kind != "f":
            raise ctx.error(
                f'casting the float initializer "{data.init}" to {dtype} is not supported',
                attr="to",
            )
        return _Const(
            data.value, init=data.init
        )  # every float initializer is cast to the model's dtype
    return _Const(data.value.astype(dtype), data.batch)


def _fold_reshape(imp: _Importer, ctx: _Ctx) -> _Const:
    _check_attrs(ctx, {"allowzero"})
    data = imp.consts[ctx.inputs[0]]
    shape = imp.const_input(ctx, 1, "shape")
    assert shape is not None
    target = [int(v) for v in shape.reshape(-1)]
    if not int(ctx.attrs.get("allowzero", 0)):
        target = [data.value.shape[i] if v == 0 else v for i, v in enumerate(target)]
    try:
        return _same(data, lambda a: a.reshape(target))
    except ValueError:
        raise ctx.error(
            f"cannot reshape {list(data.value.shape)} to {target}", attr="shape"
        ) from None


def _fold_squeeze(imp: _Importer, ctx: _Ctx) -> _Const:
    data = imp.consts[ctx.inputs[0]]
    rank = data.value.ndim
    if imp.opset >= 13:
        _check_attrs(ctx, ())
        given = imp.const_input(ctx, 1, "axes")
        axes = None if given is None else [int(a) for a in given.reshape(-1)]
    else:
        _check_attrs(ctx, {"axes"})
        axes = [int(a) for a in ctx.attrs["axes"]] if "axes" in ctx.attrs else None
    if axes is None:
        norm = tuple(i for i, d in enumerate(data.value.shape) if d == 1)
    else:
        norm = tuple(sorted({_axis(ctx, a, rank, "axes") for a in axes}))
    if any(data.value.shape[a] != 1 for a in norm):
        raise ctx.error(
            f"axes {list(norm)} of shape {list(data.value.shape)} are not all 1", attr="axes"
        )
    return _same(data, partial(np.squeeze, axis=norm))


def _fold_expand(imp: _Importer, ctx: _Ctx) -> _Const:
    _check_attrs(ctx, ())
    data = imp.consts[ctx.inputs[0]]
    shape = imp.const_input(ctx, 1, "shape")
    assert shape is not None
    try:  # ONNX's Expand broadcasts both ways: the result has the broadcast of both shapes
        target = np.broadcast_shapes(data.value.shape, tuple(int(d) for d in shape.reshape(-1)))
    except ValueError:
        raise ctx.error(
            f"cannot expand {list(data.value.shape)} to {shape.tolist()}", attr="shape"
        ) from None
    if math.prod(target) > 1 << 20:
        raise ctx.error(f"shape {list(target)} is too large to fold", attr="shape")
    return _same(data, lambda a: np.broadcast_to(a, target).copy())


def _integer_division(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX's Div: true division for floats, truncation toward zero for integers."""
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        if np.any(b == 0):
            raise ValueError("division by zero")
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.result_type(a, b))
    return np.divide(a, b)


_ARITHMETIC: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _integer_division,
}
"""Arithmetic folded on constant inputs (shape computations: ShuffleNet's channels / 2)."""


def _fold_arithmetic(imp: _Importer, ctx: _Ctx) -> _Const:
    _check_attrs(ctx, ())
    a, b = (imp.consts[n].plain() for n in ctx.inputs[:2])
    if a is None or b is None:
        raise ctx.error(
            f"{ctx.op} of a size that depends on the batch is not supported", attr="input"
        )
    try:
        value = _ARITHMETIC[ctx.op](a, b)
    except ValueError as exc:
        raise ctx.error(f"cannot fold {ctx.op}: {exc}", attr="input") from None
    return _Const(np.asarray(value))


def _fold_identity(imp: _Importer, ctx: _Ctx) -> _Const:
    c = imp.consts[ctx.inputs[0]]
    return _Const(c.value, c.batch, c.init)


_FOLDERS: dict[str, Callable[[_Importer, _Ctx], _Const]] = {
    "Constant": _fold_constant,
    "ConstantOfShape": _fold_constant_of_shape,
    "Shape": _fold_shape,
    "Gather": _fold_gather,
    "Unsqueeze": _fold_unsqueeze,
    "Concat": _fold_concat,
    "Slice": _fold_slice,
    "Transpose": _fold_transpose,
    "Cast": _fold_cast,
    "CastLike": _fold_cast_like,
    "Squeeze": _fold_squeeze,
    "Expand": _fold_expand,
    "Reshape": _fold_reshape,
    "Identity": _fold_identity,
    **dict.fromkeys(_ARITHMETIC, _fold_arithmetic),
}
