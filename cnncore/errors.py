"""The one exception family of :mod:`cnncore`.

Every bad argument to a public function raises a subclass of :class:`CnnError`,
which is a :class:`ValueError`, so ``except ValueError`` keeps working for callers
that do not know this package. Each error carries ``arg``, the name of the
argument at fault (``"w"``, ``"padding"``, ``"dout"``...), which the HTTP layer
turns into the ``loc`` of its problem details.

Every exception class of the package is defined here; :mod:`cnncore.graph`,
:mod:`cnncore.network_shapes` and :mod:`cnncore.onnx` re-export theirs, so the older
import paths keep working.
"""

from __future__ import annotations

__all__ = [
    "CnnError",
    "DtypeError",
    "GraphError",
    "LayerError",
    "OnnxImportError",
    "ParameterError",
    "ShapeError",
]


class CnnError(ValueError):
    """Base class of every error raised for bad arguments.

    Parameters
    ----------
    message
        What was expected and what was given, with the numbers.
    arg
        Name of the argument at fault, or ``None`` when no single one is.
    """

    def __init__(self, message: str, *, arg: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.arg = arg


class ShapeError(CnnError):
    """Arrays whose shapes do not fit together, or an output size that is not positive."""


class ParameterError(CnnError):
    """A hyper-parameter of the wrong type or out of range."""


class DtypeError(CnnError):
    """An array whose dtype is not float32, float64, integer or bool."""


class GraphError(CnnError):
    """A node that does not fit the graph or its inputs.

    The message starts ``node "<name>" (<op>): `` followed by :attr:`detail`.

    Attributes
    ----------
    node
        Name of the node at fault, or None for the graph as a whole.
    op
        The node's op, or None.
    detail
        The message without the node prefix.
    arg
        The attribute or input at fault (``"padding"``, ``"w"``), or None.
    """

    def __init__(
        self, detail: str, *, node: str | None = None, op: str | None = None, arg: str | None = None
    ) -> None:
        prefix = f'node "{node}" ({op}): ' if node is not None else "graph: "
        super().__init__(prefix + detail, arg=arg)
        self.node = node
        self.op = op
        self.detail = detail


class LayerError(CnnError):
    """A layer of a stack that does not fit the shape arriving at it.

    Attributes
    ----------
    index
        Position of the layer in the stack (0-based).
    arg
        The layer's field at fault (``"kernel_size"``, ``"groups"``...), or ``None``
        when the layer as a whole does not fit (e.g. its output would be empty).
    """

    def __init__(self, message: str, *, index: int, arg: str | None = None) -> None:
        super().__init__(message, arg=arg)
        self.index = index


class OnnxImportError(CnnError):
    """An ONNX model that cannot be imported exactly.

    Parameters
    ----------
    message
        What is wrong, with the values (``"auto_pad SAME_LOWER is not supported"``).
    node, op
        The ONNX node's name and operator, when one node is at fault; the message
        then starts ``node "<node>" (<op>): ``.
    attr
        The attribute or input at fault (also :attr:`CnnError.arg`), or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        op: str | None = None,
        attr: str | None = None,
    ) -> None:
        prefix = f'node "{node}" ({op}): ' if node is not None else ""
        super().__init__(prefix + message, arg=attr)
        self.node = node
        self.op = op
        self.attr = attr
