"""Helpers for the graph and op tests: one-node graphs and their gradient checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from cnncore.gradcheck import assert_gradient
from cnncore.graph import Graph, GraphError, Node


def one_node(
    op: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    constants: tuple[str, ...] = (),
) -> Graph:
    """A graph of the single node ``op``: the first array is the input, the others
    are parameters (or constants when named in ``constants``), in the op's order."""
    names = list(arrays)
    return Graph(
        [Node("n", op, tuple(names), "out", dict(attrs or {}))],
        params={k: arrays[k] for k in names[1:] if k not in constants},
        constants={k: arrays[k] for k in constants},
        input=names[0],
    )


def run(
    op: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    constants: tuple[str, ...] = (),
) -> np.ndarray:
    """The output of the one-node graph of ``op`` on ``arrays``."""
    names = list(arrays)
    return one_node(op, arrays, attrs, constants).forward(arrays[names[0]])[0]


def check_gradients(
    rng: np.random.Generator,
    op: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    constants: tuple[str, ...] = (),
) -> None:
    """Every gradient of the one-node graph against central differences (float64).

    The graph holds the float64 parameter arrays themselves (no copy), so perturbing
    them in place is what :func:`cnncore.gradcheck.assert_gradient` needs.
    """
    g = one_node(op, arrays, attrs, constants)
    x = arrays[g.input]
    out, cache = g.forward(x)
    dout = rng.standard_normal(out.shape)
    grads = g.backward(dout, cache)
    assert set(grads) == {g.input, *g.params}
    for name, analytic in grads.items():
        assert analytic.shape == arrays[name].shape
        assert_gradient(lambda: g.forward(x)[0], arrays[name], analytic, dout)


def assert_refused(
    op: str,
    shapes: list[tuple[int, ...]],
    attrs: Mapping[str, Any],
    arg: str | None,
    message: str,
    names: tuple[str, ...] | None = None,
) -> None:
    """Building the one-node graph of ``op`` and inferring its shapes (the first input
    of ``shapes[0]``, parameters of the others) raises a GraphError naming the node,
    whose detail starts with ``message`` and whose ``arg`` is ``arg`` (unless None)."""
    names = names or tuple(f"t{i}" for i in range(len(shapes)))
    params = {k: np.zeros(s) for k, s in zip(names[1:], shapes[1:], strict=True)}
    with pytest.raises(GraphError) as info:
        Graph([Node("n", op, names, "out", dict(attrs))], params=params, input=names[0]).infer(
            shapes[0]
        )
    assert str(info.value).startswith(f'node "n" ({op}): {message}')
    if arg is not None:
        assert info.value.arg == arg
