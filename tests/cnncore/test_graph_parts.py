"""cnncore.graph's parts (a batch run on threads, ``Graph._parts``) and cnncore.threads.

Every test that wants a split sets ``cnncore.threads.WORKERS`` and
``cnncore.graph.SPLIT_MIN_FLOPS = 0`` (:func:`split_batches`), so that its small graphs
split the same way whatever the machine's core count.

What "the same result" means. A split pass makes, on each part, the very calls the graph
makes on that part alone, so against :func:`parts_alone` (the graph run on each part by
itself, on one BLAS thread like the parts; the parameter gradients summed in part
order, as the engine sums them) it must agree bit for bit. Against the whole batch it
need not: BLAS picks its kernels by the matrices' sizes, so a GEMM over 3 or 2 samples'
columns may round differently from the same GEMM over 5 (seen here: conv2d's batched GEMM
in float32, and gemm in both dtypes, on this machine). Each element of either pass
is then within ``K·u·T`` of the exact value (tests/fixtures/onnx/reference.py:
``K`` the terms summed along the whole pass, ``T`` the graph's "magnitude twin",
``u = eps/2``), so the two differ by at most ``2·K·u·T = K·eps·T``; :func:`assert_close`
with ``bound=(K, T)`` allows ``2·(K+1)·eps·T``, twice that. The twin covers every op but
softmax, so the channels graph is compared that way up to its logits.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

import cnncore.graph as graph_module
from cnncore import threads
from cnncore.errors import ParameterError
from cnncore.graph import OPS, Graph, GraphError, Node
from tests.cnncore.test_graph import _peak, branchy
from tests.fixtures.onnx.reference import magnitudes, sum_terms
from tests.helpers import assert_close

#: The real threshold, read before any test patches it.
REAL_SPLIT_MIN_FLOPS = graph_module.SPLIT_MIN_FLOPS

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])

#: Threads, and the parts of a batch of 5 on them.
WORKERS = pytest.mark.parametrize(
    ("workers", "parts"), [(2, (3, 2)), (3, (2, 2, 1))], ids=["2-workers", "3-workers"]
)


# --------------------------------------------------------------------------- helpers


def split_batches(monkeypatch: pytest.MonkeyPatch, workers: int = 2) -> None:
    """Split any batch of two or more on ``workers`` threads, whatever the machine has.

    ``Graph`` remembers ``infer`` per shape: build the graphs to split after this.
    """
    monkeypatch.setattr(graph_module, "SPLIT_MIN_FLOPS", 0)
    monkeypatch.setattr(threads, "WORKERS", workers)


def copy_of(g: Graph, output: str | None = None) -> Graph:
    """A new graph of the same nodes and arrays (so with nothing inferred yet)."""
    return Graph(
        g.nodes,
        params=g.params,
        constants=g.constants,
        input=g.input,
        output=output or g.output,
    )


def run_whole(
    g: Graph, x: np.ndarray, dout: np.ndarray | None = None, keep: Sequence[str] = ()
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(out, kept values, gradients)`` of a copy of ``g`` on one thread: ``x`` unsplit.

    No gradients (an empty dict) without ``dout``.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(threads, "WORKERS", 1)
        whole = copy_of(g)
        assert whole.infer(x.shape).parts is None
        out, cache = whole.forward(x, keep=keep)
        grads = {} if dout is None else whole.backward(dout, cache)
    return out, cache.values, grads


def passes(
    g: Graph, x: np.ndarray, dout: np.ndarray
) -> tuple[np.ndarray, Any, dict[str, np.ndarray]]:
    """``(out, cache, gradients)`` of a forward and a backward pass of ``g`` itself."""
    out, cache = g.forward(x)
    return out, cache, g.backward(dout, cache)


def part_slices(parts: Sequence[int]) -> list[slice]:
    stops = np.cumsum(parts).tolist()
    return [slice(stop - p, stop) for p, stop in zip(parts, stops, strict=True)]


def parts_alone(
    g: Graph, x: np.ndarray, dout: np.ndarray, parts: Sequence[int]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The graph run on each part of the batch by itself, joined as the engine joins parts:
    outputs and input gradients concatenated, parameter gradients summed in part order.

    BLAS is kept to one thread, as it is while the parts run.
    """
    with threads.blas_single_threaded():
        runs = [run_whole(g, x[s], dout[s]) for s in part_slices(parts)]
    out = np.concatenate([run[0] for run in runs])
    grads = {
        name: np.concatenate([run[2][name] for run in runs])
        if name == g.input
        else functools.reduce(operator.add, [run[2][name] for run in runs])
        for name in runs[0][2]
    }
    return out, grads


def batch_of(
    n: int, make: Callable[..., tuple[np.ndarray, Graph]], rng: np.random.Generator, dtype: Any
) -> tuple[np.ndarray, Graph]:
    """``make``'s graph and an input of ``n`` samples."""
    x0, g = make(rng, dtype)
    return rng.standard_normal((n, *x0.shape[1:])).astype(dtype), g


def _chain(*nodes: Node, **params: np.ndarray) -> Graph:
    return Graph(list(nodes), params=params)


def _node(op: str, attrs: dict | None = None, **params: np.ndarray) -> Graph:
    """One node of ``op`` on the input ``x`` and then ``params``, in that order."""
    return _chain(Node("n", op, ("x", *params), "out", attrs or {}), **params)


def with_op(monkeypatch: pytest.MonkeyPatch, name: str, **replaced: Any) -> None:
    """Replace callables of ``OPS[name]``, for the graphs built afterwards."""
    monkeypatch.setitem(OPS, name, dataclasses.replace(OPS[name], **replaced))


@pytest.fixture(autouse=True)
def _openblas_released() -> Iterator[None]:
    """After each test, no thread holds threadpoolctl's control of OpenBLAS (see
    :func:`release_openblas`): a split on this thread would otherwise keep it for good."""
    yield
    threadpoolctl = sys.modules.get("threadpoolctl")
    if threadpoolctl is not None:
        release_openblas(threadpoolctl)


# --------------------------------------------------------------------------- graphs


def residual(rng: np.random.Generator, dtype: Any = np.float64) -> tuple[np.ndarray, Graph]:
    """x (5, 4, 6, 6) -> conv -> relu -> conv -> add x -> relu -> max pool -> flatten -> gemm.

    Pooling's attributes are spelled out: the magnitude twin reads them as given.
    """

    def t(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(dtype)

    nodes = [
        Node("conv1", "conv2d", ("x", "w1", "b1"), "h1", {"padding": 1}),
        Node("relu1", "relu", ("h1",), "h2"),
        Node("conv2", "conv2d", ("h2", "w2"), "h3", {"padding": 1}),
        Node("join", "add", ("h3", "x"), "h4"),
        Node("relu2", "relu", ("h4",), "h5"),
        Node(
            "pool",
            "pool2d",
            ("h5",),
            "h6",
            {"kernel_size": (2, 2), "stride": (2, 2), "padding": (0, 0, 0, 0)},
        ),
        Node("flat", "flatten", ("h6",), "h7", {"axis": 1}),
        Node("fc", "gemm", ("h7", "fw", "fb"), "out"),
    ]
    params = {"w1": t(4, 4, 3, 3), "b1": t(4), "w2": t(4, 4, 3, 3), "fw": t(36, 3), "fb": t(3)}
    x = t(5, 4, 6, 6, scale=1.0)
    return x, Graph(nodes, params=params, input_shape=(-1, 4, 6, 6))


def channels(rng: np.random.Generator, dtype: Any = np.float64) -> tuple[np.ndarray, Graph]:
    """x (5, 3, 6, 6) -> two convs -> concat on channels -> batchnorm -> add a (1, 5, 1, 1)
    bias -> relu -> pad H and W -> reduce_mean over H, W -> matmul -> add -> ``logits``
    -> softmax on axis 1."""

    def t(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(dtype)

    nodes = [
        Node("ca", "conv2d", ("x", "wa"), "a", {"padding": 1}),
        Node("cb", "conv2d", ("x", "wb"), "b"),
        Node("cat", "concat", ("a", "b"), "c", {"axis": 1}),
        Node("bn", "batchnorm", ("c", "scale", "shift", "mean", "var"), "d"),
        Node("bias", "add", ("d", "beta"), "e"),
        Node("act", "relu", ("e",), "f"),
        Node("pad", "pad", ("f",), "p", {"pads": (0, 0, 1, 1, 0, 0, 1, 1), "value": 0.0}),
        Node("mean", "reduce_mean", ("p",), "m", {"axes": (2, 3), "keepdims": False}),
        Node("mm", "matmul", ("m", "W"), "z"),
        Node("shift2", "add", ("z", "c2"), "logits"),
        Node("sm", "softmax", ("logits",), "out", {"axis": 1}),
    ]
    params = {
        "wa": t(2, 3, 3, 3),
        "wb": t(3, 3, 1, 1),
        "scale": 1 + t(5),
        "shift": t(5),
        "beta": t(1, 5, 1, 1),
        "W": t(5, 4, scale=1.0),
        "c2": t(4),
    }
    constants = {"mean": t(5), "var": 0.5 + rng.random(5).astype(dtype)}
    x = t(5, 3, 6, 6, scale=1.0)
    return x, Graph(nodes, params=params, constants=constants)


GRAPHS = pytest.mark.parametrize(
    "make", [residual, channels, branchy], ids=["residual", "channels", "branchy"]
)


# --------------------------------------------------------------------------- the parts


@pytest.mark.parametrize(
    ("n", "workers", "parts"),
    [
        (5, 2, (3, 2)),
        (5, 3, (2, 2, 1)),
        (8, 2, (4, 4)),
        (7, 4, (2, 2, 2, 1)),
        (2, 3, (1, 1)),  # no more parts than samples
    ],
    ids=["5-on-2", "5-on-3", "8-on-2", "7-on-4", "2-on-3"],
)
def test_parts_are_as_equal_as_can_be_larger_first(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, n: int, workers: int, parts: tuple
) -> None:
    split_batches(monkeypatch, workers)
    g = _node("relu")
    x = rng.standard_normal((n, 3))
    assert g.infer(x.shape).parts == parts
    out, cache = g.forward(x)
    assert cache.parts is not None
    assert [s for s, _ in cache.parts] == part_slices(parts)
    np.testing.assert_array_equal(out, np.maximum(x, 0))


@GRAPHS
@DTYPES
@WORKERS
def test_a_split_pass_is_its_parts_run_alone_bit_for_bit(
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable,
    dtype: Any,
    workers: int,
    parts: tuple,
) -> None:
    x, g = batch_of(5, make, rng, dtype)
    dout = rng.standard_normal(g.infer(x.shape).output_shape).astype(dtype)
    want_out, want_grads = parts_alone(g, x, dout, parts)

    split_batches(monkeypatch, workers)
    s = copy_of(g)
    assert s.infer(x.shape).parts == parts
    out, _, grads = passes(s, x, dout)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, want_out)
    assert set(grads) == {"x", *g.params}
    for name, want in want_grads.items():
        assert grads[name].dtype == dtype
        np.testing.assert_array_equal(grads[name], want, err_msg=name)


@pytest.mark.parametrize(
    ("make", "output"),
    [(residual, None), (channels, "logits")],
    ids=["residual", "channels-before-softmax"],
)
@DTYPES
@WORKERS
def test_a_split_pass_agrees_with_the_whole_batch_to_round_off(
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable,
    output: str | None,
    dtype: Any,
    workers: int,
    parts: tuple,
) -> None:
    x, g = make(rng, dtype)
    g = copy_of(g, output)
    dout = rng.standard_normal(g.infer(x.shape).output_shape).astype(dtype)
    want_out, _, want_grads = run_whole(g, x, dout)
    t_out, t_grads = magnitudes(g, x, dout)
    k = sum_terms(g, x.shape)

    split_batches(monkeypatch, workers)
    s = copy_of(g)
    assert s.infer(x.shape).parts == parts
    out, _, grads = passes(s, x, dout)
    # Both passes are within K·u·T of the exact values (module docstring); the inputs are
    # fixed by the seed and none sits within that of a relu kink or a max-pooling tie.
    assert_close(out, want_out, dtype, bound=(k, t_out))
    for name, want in want_grads.items():
        assert_close(grads[name], want, dtype, bound=(k, t_grads[name]))


def test_a_batch_splits_once_each_part_has_split_min_flops_of_work(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, g = residual(rng)
    flops = g.infer(x.shape).total_flops
    monkeypatch.setattr(threads, "WORKERS", 2)
    monkeypatch.setattr(graph_module, "SPLIT_MIN_FLOPS", flops // 2)
    assert copy_of(g).infer(x.shape).parts == (3, 2)  # 2 · (flops // 2) <= flops
    monkeypatch.setattr(graph_module, "SPLIT_MIN_FLOPS", flops // 2 + 1)
    assert copy_of(g).infer(x.shape).parts is None


# --------------------------------------------------------------------------- batches kept whole


MIXING = [
    pytest.param(
        (5, 3),
        lambda: _chain(
            Node("r", "relu", ("x",), "h"), Node("s", "softmax", ("h",), "out", {"axis": 0})
        ),
        id="relu-then-softmax-over-the-batch",
    ),
    pytest.param((5, 3), lambda: _node("softmax", {"axis": -2}), id="softmax-axis-minus-2"),
    pytest.param(
        (5, 3, 4),
        lambda: _node("reduce_mean", {"axes": (0, 2)}),
        id="reduce-mean-over-the-batch",
    ),
    pytest.param(
        (5, 3),
        lambda: _node("reduce_mean", {"keepdims": False}),
        id="reduce-mean-over-every-axis",
    ),
    pytest.param(
        (5, 2, 3),
        lambda: _node("reshape", {"shape": (5, -1)}),
        id="reshape-to-5-samples-which-a-part-cannot",
    ),
    pytest.param(
        (6, 2, 2),
        lambda: _node("reshape", {"shape": (6, -1)}),
        id="reshape-to-6-samples-which-mixes-a-part",
    ),
    pytest.param((5, 3), lambda: _node("flatten", {"axis": 0}), id="flatten-axis-0"),
    pytest.param(
        (5, 3),
        lambda: _chain(Node("c", "concat", ("x", "x"), "out", {"axis": 0})),
        id="concat-on-the-batch",
    ),
    pytest.param(
        (5, 3),
        lambda: _node("add", p=np.ones((5, 3))),
        id="add-a-parameter-as-long-as-the-batch",
    ),
    pytest.param(
        (5, 5),
        lambda: _node("gemm", {"trans_a": 1}, b=np.ones((5, 2))),
        id="gemm-trans-a",
    ),
    pytest.param(
        (5, 4),
        lambda: _node("gemm", b=np.ones((4, 2)), c=np.ones((5, 2))),
        id="gemm-a-bias-per-row",
    ),
    pytest.param(
        (5, 5),
        lambda: _chain(Node("m", "matmul", ("x", "x"), "out")),
        id="matmul-b-from-the-input",
    ),
    pytest.param(
        (5, 3),
        lambda: _chain(Node("m", "matmul", ("w", "x"), "out"), w=np.ones((5, 5))),
        id="matmul-the-batch-as-b",
    ),
    pytest.param(
        (5, 3),
        lambda: _node("pad", {"pads": (0, 0, 1, 0), "value": 0.0}),
        id="pad-the-batch",
    ),
    pytest.param(
        (5, 3),
        lambda: _chain(Node("r", "relu", ("w",), "out"), w=np.ones((5, 3))),
        id="output-without-the-batch",
    ),
]


@pytest.mark.parametrize(("x_shape", "build"), MIXING)
def test_a_graph_that_mixes_samples_runs_the_batch_whole(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, x_shape: tuple, build: Callable
) -> None:
    split_batches(monkeypatch)
    g = build()
    x = rng.standard_normal(x_shape)
    info = g.infer(x.shape)
    assert info.parts is None
    out, cache = g.forward(x)
    assert cache.parts is None
    assert out.shape == info.output_shape
    np.testing.assert_array_equal(out, run_whole(g, x)[0])  # the same unsplit pass


def _controller_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import threadpoolctl fails
    monkeypatch.setattr(threads, "_CONTROLLER", None)
    monkeypatch.setattr(threads, "_CONTROLLER_READY", False)


def _no_blas_library(monkeypatch: pytest.MonkeyPatch) -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    none = threadpoolctl.ThreadpoolController().select(internal_api="no-such-library")
    monkeypatch.setattr(threads, "_CONTROLLER", none)
    monkeypatch.setattr(threads, "_CONTROLLER_READY", True)


SETTINGS = [
    pytest.param(1, lambda mp: None, id="batch-of-1"),
    pytest.param(
        5,
        lambda mp: mp.setattr(graph_module, "SPLIT_MIN_FLOPS", REAL_SPLIT_MIN_FLOPS),
        id="below-the-real-threshold",
    ),
    pytest.param(5, lambda mp: mp.setattr(threads, "WORKERS", 1), id="one-worker"),
    pytest.param(5, _controller_missing, id="threadpoolctl-missing"),
    pytest.param(5, _no_blas_library, id="no-blas-library-found"),
]


@pytest.mark.parametrize(("n", "setup"), SETTINGS)
def test_settings_that_keep_the_batch_whole(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, n: int, setup: Callable
) -> None:
    split_batches(monkeypatch)
    setup(monkeypatch)
    x, g = batch_of(n, residual, rng, np.float64)
    info = g.infer(x.shape)
    assert info.parts is None
    assert info.total_flops < 2 * REAL_SPLIT_MIN_FLOPS  # so the real threshold keeps it whole
    out, cache = g.forward(x)
    assert cache.parts is None
    np.testing.assert_array_equal(out, run_whole(g, x)[0])
    with threads.blas_single_threaded():  # a no-op without a BLAS to limit, never an error
        pass


PER_SAMPLE = [
    ("add", [(5, 4, 3, 3), (4, 1, 1)], (True, False), {}, True, "add-channel-bias"),
    ("add", [(5, 4), (1, 4)], (True, False), {}, True, "add-bias-with-a-leading-1"),
    ("add", [(5, 4), (5, 4)], (True, False), {}, False, "add-a-batch-long-parameter"),
    ("add", [(5, 4), (5, 4)], (True, True), {}, True, "add-two-batched"),
    ("add", [(5, 4), (5, 4, 1, 1)], (True, True), {}, False, "add-batched-of-two-ranks"),
    ("concat", [(5, 2, 3), (5, 4, 3)], (True, True), {"axis": 1}, True, "concat-channels"),
    ("concat", [(5, 2), (5, 3)], (True, False), {"axis": 1}, False, "concat-a-parameter"),
    ("concat", [(5, 2), (5, 2)], (True, True), {"axis": -2}, False, "concat-axis-minus-2"),
    ("softmax", [(5, 3)], (True,), {"axis": 1}, True, "softmax-axis-1"),
    ("softmax", [(5, 3)], (True,), {"axis": -2}, False, "softmax-axis-minus-2"),
    ("reduce_mean", [(5, 3, 4, 4)], (True,), {"axes": (-2, -1)}, True, "reduce-mean-spatial"),
    ("reduce_mean", [(5, 3, 4, 4)], (True,), {"axes": (-4,)}, False, "reduce-mean-axis-minus-4"),
    ("reduce_mean", [(5, 3)], (True,), {}, False, "reduce-mean-every-axis"),
    ("flatten", [(5, 3, 2)], (True,), {"axis": 1}, True, "flatten-axis-1"),
    ("flatten", [(5, 3, 2)], (True,), {"axis": -3}, False, "flatten-axis-minus-3"),
    ("pad", [(5, 3)], (True,), {"pads": (0, 1, 0, 1)}, True, "pad-features"),
    ("pad", [(5, 3)], (True,), {"pads": (1, 0, 0, 0)}, False, "pad-batch-start"),
    ("pad", [(5, 3)], (True,), {"pads": (0, 0, 1, 0)}, False, "pad-batch-end"),
    ("gemm", [(5, 4), (4, 2)], (True, False), {}, True, "gemm"),
    ("gemm", [(5, 4), (2, 4)], (True, False), {"trans_b": 1}, True, "gemm-trans-b"),
    ("gemm", [(5, 5), (5, 2)], (True, False), {"trans_a": 1}, False, "gemm-trans-a"),
    ("gemm", [(5, 4), (4, 2)], (True, True), {}, False, "gemm-b-batched"),
    ("gemm", [(5, 4), (4, 2), (2,)], (True, False, False), {}, True, "gemm-bias"),
    ("gemm", [(5, 4), (4, 2), (1, 2)], (True, False, False), {}, True, "gemm-bias-1-row"),
    ("gemm", [(5, 4), (4, 2), (5, 2)], (True, False, False), {}, False, "gemm-bias-5-rows"),
    ("matmul", [(5, 3, 4), (4, 2)], (True, False), {}, True, "matmul-stack-by-a-matrix"),
    ("matmul", [(5, 4), (4,)], (True, False), {}, True, "matmul-by-a-vector"),
    ("matmul", [(5,), (5, 2)], (True, False), {}, False, "matmul-a-vector-of-the-batch"),
    ("matmul", [(5, 3, 4), (5, 4, 2)], (True, False), {}, False, "matmul-by-a-stack"),
    ("matmul", [(5, 5), (5, 5)], (True, True), {}, False, "matmul-b-batched"),
    ("matmul", [(5, 5), (5, 3)], (False, True), {}, False, "matmul-the-batch-as-b"),
    ("conv2d", [(5, 3, 4, 4), (2, 3, 3, 3)], (True, False), {}, True, "conv2d"),
    ("conv2d", [(5, 3, 4, 4), (5, 3, 3, 3)], (True, True), {}, False, "conv2d-batched-kernels"),
    ("relu", [(5, 3)], (True,), {}, True, "relu"),
]


@pytest.mark.parametrize(
    ("op", "shapes", "batched", "raw", "expected"),
    [pytest.param(*case[:5], id=case[5]) for case in PER_SAMPLE],
)
def test_per_sample_rules(op: str, shapes: list, batched: tuple, raw: dict, expected: bool) -> None:
    # Graph-level tests cannot see all of these: a rule's mistake is often also a shape
    # that differs from the part's, which keeps the batch whole anyway.
    rule = OPS[op].per_sample
    assert rule is not None
    assert rule([tuple(s) for s in shapes], batched, OPS[op].attrs(raw)) is expected


# --------------------------------------------------------------------------- keep, wrt, caches


def test_kept_tensors_are_joined_in_part_order(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "wp" is computed from a parameter alone: every part has the same, the first's is kept.
    g = _chain(
        Node("pos", "relu", ("w",), "wp"),
        Node("fc", "gemm", ("x", "wp", "b"), "h"),
        Node("act", "relu", ("h",), "out"),
        w=rng.standard_normal((4, 3)),
        b=rng.standard_normal(3),
    )
    x = rng.standard_normal((5, 4))
    keep = ["x", "wp", "h", "out"]
    with threads.blas_single_threaded():  # as the parts run
        runs = [run_whole(g, x[s], keep=keep)[1] for s in part_slices((3, 2))]
    whole = run_whole(g, x, keep=keep)[1]

    split_batches(monkeypatch)
    s = copy_of(g)
    with pytest.raises(ParameterError, match='keep names "w", which is no node output'):
        s.forward(x, keep=["w"])
    out, cache = s.forward(x, keep=keep)
    assert cache.parts is not None
    assert set(cache.values) == set(keep)
    np.testing.assert_array_equal(cache.values["x"], x)
    np.testing.assert_array_equal(cache.values["wp"], whole["wp"])
    for t in ("h", "out"):
        np.testing.assert_array_equal(cache.values[t], np.concatenate([r[t] for r in runs]))
    np.testing.assert_array_equal(cache.values["out"], out)
    # Against the whole batch, h's BLAS rows may round otherwise: each is a sum of 4
    # products and the bias, within 5·eps·(|x| @ |wp| + |b|) of either.
    magnitude = np.abs(x) @ np.abs(whole["wp"]) + np.abs(g.params["b"])
    assert_close(cache.values["h"], whole["h"], bound=(5, magnitude))


def test_wrt_limits_the_gradients_of_every_part(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    conv = OPS["conv2d"]

    def counting(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        calls.append(len(dout))
        return conv.backward(dout, cache, needs)

    with_op(monkeypatch, "conv2d", backward=counting)
    split_batches(monkeypatch)
    x, g = residual(rng)
    out, cache = g.forward(x)
    dout = rng.standard_normal(out.shape)
    full = g.backward(dout, cache, release=False)
    assert sorted(calls) == [2, 2, 3, 3]  # both convs, in each part
    calls.clear()
    head = g.backward(dout, cache, wrt=["fw", "fb"], release=False)
    assert set(head) == {"fw", "fb"}
    assert calls == []  # nothing before the head leads to fw or fb, in any part
    only_x = g.backward(dout, cache, wrt=["x"])
    assert set(only_x) == {"x"}
    for name, grad in (*head.items(), *only_x.items()):
        np.testing.assert_array_equal(grad, full[name], err_msg=name)


def test_a_split_cache_serves_one_backward_unless_kept(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    split_batches(monkeypatch)
    x, g = residual(rng)
    out, cache = g.forward(x)
    dout = rng.standard_normal(out.shape)
    first = g.backward(dout, cache, release=False)
    second = g.backward(dout, cache, release=False)
    last = g.backward(dout, cache)
    for name in first:
        np.testing.assert_array_equal(second[name], first[name], err_msg=name)
        np.testing.assert_array_equal(last[name], first[name], err_msg=name)
    assert cache.parts is not None
    assert all(part.consumed for _, part in cache.parts)
    with pytest.raises(ParameterError, match="already used by a backward pass") as info:
        g.backward(dout, cache)
    assert info.value.arg == "cache"


def test_an_inference_split_cache_refuses_backward(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    split_batches(monkeypatch)
    x, g = residual(rng)
    out, cache = g.forward(x, backward=False)
    assert cache.parts is not None
    # Max pooling's inference pass gives the same bits without its backward bookkeeping.
    np.testing.assert_array_equal(out, g.forward(x)[0])
    with pytest.raises(ParameterError, match="keeps no caches") as info:
        g.backward(np.ones_like(out), cache)
    assert info.value.arg == "cache"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_an_error_in_one_part_is_the_error_of_the_whole_batch(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    # conv2d refuses a loud tensor, which only sample 4's part (the second of (3, 2)) has;
    # the first part waits until the second has failed, then records that it went on.
    failed = threading.Event()
    went_on: list[tuple[int, bool]] = []
    conv, gemm = OPS["conv2d"], OPS["gemm"]

    def refuse_loud(a: np.ndarray) -> None:
        if (np.abs(a) > 100).any():
            failed.set()
            raise ParameterError("a sample is louder than 100", arg="x")

    def go_on_after_the_failure(a: np.ndarray) -> None:
        went_on.append((len(a), failed.wait(timeout=5)))

    def conv_forward(inputs: Sequence[np.ndarray], attrs: dict) -> tuple[np.ndarray, Any]:
        refuse_loud(inputs[0])
        return conv.forward(inputs, attrs)

    def gemm_forward(inputs: Sequence[np.ndarray], attrs: dict) -> tuple[np.ndarray, Any]:
        go_on_after_the_failure(inputs[0])  # the last node: this part got to the end
        return gemm.forward(inputs, attrs)

    def conv_backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple:
        refuse_loud(dout)
        go_on_after_the_failure(dout)
        return conv.backward(dout, cache, needs)

    if phase == "forward":
        with_op(monkeypatch, "conv2d", forward=conv_forward)
        with_op(monkeypatch, "gemm", forward=gemm_forward)
    else:
        with_op(monkeypatch, "conv2d", backward=conv_backward)
    x, g = residual(rng)
    dout = rng.standard_normal(g.infer(x.shape).output_shape)
    if phase == "forward":
        x[4, 0, 0, 0] = 1000.0
    else:
        dout[4] = 1e4  # through gemm, pooling and relu, conv2 gets more than 100 somewhere

    with pytest.raises(GraphError) as whole:
        run_whole(g, x, dout)
    failed.clear()
    went_on.clear()

    split_batches(monkeypatch)
    s = copy_of(g)
    with pytest.raises(GraphError) as split:
        passes(s, x, dout)
    assert str(split.value) == str(whole.value)
    assert (split.value.node, split.value.op, split.value.arg) == (
        whole.value.node,
        whole.value.op,
        whole.value.arg,
    )
    # The first part ran on after the second failed: forward to its gemm, backward
    # through both convs.
    assert went_on == ([(3, True)] if phase == "forward" else [(3, True), (3, True)])


# --------------------------------------------------------------------------- BLAS threads


def blas_threads(threadpoolctl: Any) -> list[int]:
    """The distinct thread counts of the loaded BLAS libraries (more than numpy's may be
    loaded when the whole suite runs: scikit-learn's scipy, say)."""
    infos = threadpoolctl.threadpool_info()
    return sorted({i["num_threads"] for i in infos if i["user_api"] == "blas"})


def release_openblas(threadpoolctl: Any) -> None:
    """Let any thread set OpenBLAS's thread count again.

    threadpoolctl 3.8 lets one thread only set the count of an OpenBLAS built with
    pthreads (numpy's wheels): the first to set it, until it ends or clears that (its own
    ``with threadpool_limits`` blocks do on leaving). Earlier splits of this process may
    have made the test's thread that one.
    """
    openblas = getattr(threadpoolctl, "OpenBLASController", None)
    clear = getattr(openblas, "clear_controlling_thread", None)
    if clear is not None:  # threadpoolctl before 3.8 has no controlling thread
        clear(force=True)


@pytest.fixture
def blas_count() -> Iterator[Callable[[], list[int]]]:
    """BLAS's thread count per library, set to two for the test (whatever the machine's),
    with no thread holding threadpoolctl's control of OpenBLAS; restored after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not threads.can_limit_blas():
        pytest.skip("threadpoolctl finds no BLAS library")
    release_openblas(threadpoolctl)
    limiter = threadpoolctl.threadpool_limits(limits=2, user_api="blas")
    release_openblas(threadpoolctl)
    try:
        if set(blas_threads(threadpoolctl)) != {2}:
            pytest.skip("this BLAS cannot be set to two threads")
        yield lambda: blas_threads(threadpoolctl)
    finally:
        release_openblas(threadpoolctl)
        limiter.restore_original_limits()
        release_openblas(threadpoolctl)


def counting_blas_in_relu(
    monkeypatch: pytest.MonkeyPatch, count: Callable[[], list[int]]
) -> list[list[int]]:
    """BLAS's thread counts seen by every relu forward and backward of graphs built next."""
    during: list[list[int]] = []
    relu = OPS["relu"]

    def forward(inputs: Sequence[np.ndarray], attrs: dict) -> tuple[np.ndarray, Any]:
        during.append(count())
        return relu.forward(inputs, attrs)

    def backward(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple:
        during.append(count())
        return relu.backward(dout, cache, needs)

    with_op(monkeypatch, "relu", forward=forward, backward=backward)
    return during


def test_blas_runs_on_one_thread_during_the_parts_and_gets_its_count_back(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, blas_count: Callable
) -> None:
    during = counting_blas_in_relu(monkeypatch, blas_count)
    split_batches(monkeypatch)
    x, g = residual(rng)
    before = blas_count()
    out, cache = g.forward(x)
    after_forward = blas_count()
    g.backward(np.ones_like(out), cache)
    after_backward = blas_count()
    assert cache.parts is not None
    assert len(during) == 8  # two relus, two parts, forward and backward
    assert all(set(seen) == {1} for seen in during)
    assert after_forward == before
    assert after_backward == before


def test_nested_blas_single_threaded_restores_the_count_when_the_outer_block_leaves(
    blas_count: Callable,
) -> None:
    with threads.blas_single_threaded():
        with threads.blas_single_threaded():
            nested = blas_count()
        outer = blas_count()
    assert (nested, outer, blas_count()) == ([1], [1], [2])


@pytest.mark.parametrize("last_out", ["first-in", "second-in"])
def test_concurrent_blas_single_threaded_restores_the_count_when_its_last_user_leaves(
    blas_count: Callable, last_out: str
) -> None:
    # Users 0 and 1 enter in that order, and the one ``last_out`` names leaves last; both
    # live on until the end, as pool threads do.
    # The "second-in" case: with threadpoolctl 3.8 the first user to enter, which sets
    # the limit, becomes its controlling thread of a pthreads OpenBLAS, so the restore of
    # another thread leaving last would be ignored unless threads.py releases it.
    last = 0 if last_out == "first-in" else 1
    inside = [threading.Event(), threading.Event()]
    first_left, done = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def user(i: int) -> None:
        if i == 1:
            seen["user 0 came in"] = inside[0].wait(timeout=5)
        with threads.blas_single_threaded():
            inside[i].set()
            if i != last:
                seen["both came in"] = inside[1 - i].wait(timeout=5)
            else:
                seen["the first left"] = first_left.wait(timeout=5)
                seen["inside, after the first left"] = blas_count()
        if i != last:
            first_left.set()
            done.wait(timeout=5)
        else:
            seen["after both left"] = blas_count()
            done.set()

    users = [threading.Thread(target=user, args=(i,)) for i in (0, 1)]
    for t in users:
        t.start()
    for t in users:
        t.join(timeout=10)
    assert seen == {
        "user 0 came in": True,
        "both came in": True,
        "the first left": True,
        "inside, after the first left": [1],
        "after both left": [2],
    }


def test_a_split_pass_on_another_thread_than_the_first_one_limits_blas_too(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, blas_count: Callable
) -> None:
    # With threadpoolctl 3.8, the first thread to split a batch (here the test's; in the
    # service, one of its worker threads) would stay its controlling thread of a pthreads
    # OpenBLAS, and a limit set from any other thread would be ignored, unless threads.py
    # releases that control after each change.
    during = counting_blas_in_relu(monkeypatch, blas_count)
    split_batches(monkeypatch)
    x, g = residual(rng)
    g.forward(x)  # the first split, on this thread
    during.clear()
    later = threading.Thread(target=lambda: g.forward(x))
    later.start()
    later.join(timeout=10)
    assert len(during) == 4  # two relus, two parts
    assert all(set(seen) == {1} for seen in during), during
    assert blas_count() == [2]


# --------------------------------------------------------------------------- map_threads


def test_map_threads_returns_the_results_in_item_order() -> None:
    both = threading.Barrier(2, timeout=5)  # the first two items at once: two threads

    def run(i: int) -> tuple[int, int]:
        if i < 2:
            both.wait()
        return i * i, threading.get_ident()

    results = threads.map_threads(run, list(range(6)), 2)
    assert [r for r, _ in results] == [0, 1, 4, 9, 16, 25]
    assert len({ident for _, ident in results[:2]}) == 2


def test_map_threads_raises_the_first_error_in_item_order_once_every_item_ran() -> None:
    # Item 1 fails only after item 3 has: the error raised is still item 1's.
    ran: list[int] = []
    three_failed = threading.Event()

    def run(i: int) -> None:
        if i == 1:
            three_failed.wait(timeout=5)
        ran.append(i)
        if i in (1, 3):
            three_failed.set()
            raise ValueError(f"item {i}")

    with pytest.raises(ValueError, match="item 1"):
        threads.map_threads(run, list(range(6)), 2)
    assert sorted(ran) == list(range(6))
    assert ran.index(3) < ran.index(1)


def test_map_threads_inside_map_threads_runs_serially_on_its_worker() -> None:
    def inner(j: int) -> tuple[int, bool]:
        return threading.get_ident(), threads.in_worker()

    def outer(i: int) -> tuple[int, list[tuple[int, bool]]]:
        return threading.get_ident(), threads.map_threads(inner, [0, 1, 2], 3)

    assert not threads.in_worker()
    results = threads.map_threads(outer, [0, 1], 2)
    assert [calls for _, calls in results] == [[(ident, True)] * 3 for ident, _ in results]
    assert not threads.in_worker()


@pytest.mark.parametrize(
    ("workers", "items"),
    [(1, [0, 1, 2]), (3, [0]), (None, [0, 1, 2])],
    ids=["one-worker", "one-item", "WORKERS-1"],
)
def test_map_threads_runs_serially_on_the_caller_with_one_worker_or_item(
    monkeypatch: pytest.MonkeyPatch, workers: int | None, items: list[int]
) -> None:
    monkeypatch.setattr(threads, "WORKERS", 1)  # the default of workers=None
    results = threads.map_threads(
        lambda i: (i, threading.get_ident(), threads.in_worker()), items, workers
    )
    assert results == [(i, threading.get_ident(), False) for i in items]


# --------------------------------------------------------------------------- memory


def wide(rng: np.random.Generator, dtype: Any = np.float64) -> tuple[np.ndarray, Graph]:
    """x (2, 32, 3, 3) -> conv2d with a (64, 32, 3, 3) kernel -> flatten -> gemm: parameter
    gradients much larger than the activations, and conv's dW a view (which the engine
    copies before summing the parts' into it)."""
    nodes = [
        Node("conv", "conv2d", ("x", "w", "b"), "h"),
        Node("flat", "flatten", ("h",), "f"),
        Node("fc", "gemm", ("f", "fw"), "out"),
    ]
    params = {
        "w": rng.standard_normal((64, 32, 3, 3)).astype(dtype),
        "b": rng.standard_normal(64).astype(dtype),
        "fw": rng.standard_normal((64, 10)).astype(dtype),
    }
    return rng.standard_normal((2, 32, 3, 3)).astype(dtype), Graph(nodes, params=params)


@DTYPES
@pytest.mark.parametrize("backward", [True, False], ids=["forward+backward", "forward"])
@pytest.mark.parametrize("make", [residual, channels, wide], ids=["residual", "channels", "wide"])
@pytest.mark.parametrize(("batch", "parts"), [(16, (8, 8)), (5, (3, 2))], ids=["N16", "N5"])
def test_working_bytes_bounds_what_a_split_pass_allocates(
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable,
    dtype: Any,
    backward: bool,
    batch: int,
    parts: tuple,
) -> None:
    # As test_graph.test_working_bytes_bounds_what_a_pass_allocates, the batch in parts;
    # no lower limit: whether the parts' peaks coincide depends on how the threads run
    # (the measured peak of one pass varied by a third from run to run).
    split_batches(monkeypatch)
    x0, g = make(rng, dtype)
    shape = (batch, *x0.shape[1:])
    info = g.infer(shape)
    assert info.parts == parts

    def one_pass() -> None:
        x = np.ones(shape, dtype=dtype)  # the input and dout are part of the bound
        out, cache = g.forward(x, backward=backward)
        if backward:
            g.backward(np.ones(out.shape, dtype=dtype), cache)

    measured = _peak(one_pass)
    assert measured <= info.working_bytes(np.dtype(dtype).itemsize, backward=backward)
