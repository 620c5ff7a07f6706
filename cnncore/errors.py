"""The one exception family of :mod:`cnncore`.

Every bad argument to a public function raises a subclass of :class:`CnnError`,
which is a :class:`ValueError`, so ``except ValueError`` keeps working for callers
that do not know this package. Each error carries ``arg``, the name of the
argument at fault (``"w"``, ``"padding"``, ``"dout"``...), which the HTTP layer
turns into the ``loc`` of its problem details.
"""

from __future__ import annotations


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
