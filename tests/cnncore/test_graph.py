"""cnncore.graph: topology, fan-out gradients, wrt, shape inference and the memory bound."""

from __future__ import annotations

import dataclasses
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import cnncore
from cnncore import conv as conv_module
from cnncore.conv import ConvLimits, ConvPath, DxPath, conv2d_plan
from cnncore.geometry import conv2d_geometry, linear_info, pool2d_geometry
from cnncore.gradcheck import assert_gradient
from cnncore.graph import OPS, Graph, GraphError, Node
from cnncore.network import network_graph
from tests.cnncore.test_network import small_cnn


def residual_block(rng: np.random.Generator, dtype: Any = np.float64) -> tuple[np.ndarray, Graph]:
    """x (2, 4, 6, 6) -> conv -> batchnorm -> relu -> conv -> add x -> relu -> max pool
    -> global average pool -> flatten -> gemm: a ResNet basic block with a head.
    ``x`` feeds both the first conv and the join (the fan-out)."""

    def t(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(dtype)

    nodes = [
        Node("conv1", "conv2d", ("x", "w1", "b1"), "h1", {"padding": 1}),
        Node("bn", "batchnorm", ("h1", "scale", "shift", "mean", "var"), "h2", {"epsilon": 1e-5}),
        Node("relu1", "relu", ("h2",), "h3"),
        Node("conv2", "conv2d", ("h3", "w2"), "h4", {"padding": (1, 1, 1, 1)}),
        Node("join", "add", ("h4", "x"), "h5"),
        Node("relu2", "relu", ("h5",), "h6"),
        Node("pool", "pool2d", ("h6",), "h7", {"kernel_size": 2, "stride": 2}),
        Node("gap", "global_avg_pool", ("h7",), "h8"),
        Node("flat", "flatten", ("h8",), "h9", {"axis": 1}),
        Node("fc", "gemm", ("h9", "fw", "fb"), "out", {"trans_b": 1}),
    ]
    params = {
        "w1": t(4, 4, 3, 3),
        "b1": t(4),
        "scale": 1 + t(4),
        "shift": t(4),
        "w2": t(4, 4, 3, 3),
        "fw": t(3, 4),
        "fb": t(3),
    }
    constants = {"mean": t(4), "var": 0.5 + rng.random(4).astype(dtype)}
    x = t(2, 4, 6, 6, scale=1.0)
    return x, Graph(nodes, params=params, constants=constants, input_shape=(-1, 4, 6, 6))


def branchy(rng: np.random.Generator, dtype: Any = np.float64) -> tuple[np.ndarray, Graph]:
    """x (2, 3, 8, 8) -> overlapping max pool and asymmetric average pool -> concat
    -> clip -> reduce_mean -> matmul -> softmax -> flatten -> gemm: every other op."""
    nodes = [
        Node("pmax", "pool2d", ("x",), "p1", {"kernel_size": 3, "stride": 2, "padding": 1}),
        Node(
            "pavg",
            "pool2d",
            ("x",),
            "p2",
            {
                "mode": "avg",
                "kernel_size": 3,
                "stride": 2,
                "padding": (0, 1, 0, 1),
                "count_include_pad": False,
            },
        ),
        Node("cat", "concat", ("p1", "p2"), "c", {"axis": 1}),
        Node("clip", "clip", ("c",), "cl", {"min": -1.0, "max": 1.0}),
        Node("mean", "reduce_mean", ("cl",), "r", {"axes": (2,), "keepdims": 0}),
        Node("mm", "matmul", ("r", "W"), "m"),
        Node("sm", "softmax", ("m",), "s", {"axis": -1}),
        Node("pad", "pad", ("s",), "sp", {"pads": (0, 0, 1, 0, 0, 1), "value": 0.5}),
        Node("flat", "flatten", ("sp",), "f"),
        Node("fc", "gemm", ("f", "G"), "out", {"alpha": 0.5}),
    ]
    params = {
        "W": rng.standard_normal((4, 5)).astype(dtype),
        "G": rng.standard_normal((42, 7)).astype(dtype),
    }
    return rng.standard_normal((2, 3, 8, 8)).astype(dtype), Graph(nodes, params=params)


# --------------------------------------------------------------------------- topology


def test_nodes_in_any_order_give_the_same_topological_order_and_output(
    rng: np.random.Generator,
) -> None:
    x, g = residual_block(rng)
    shuffled = [g.nodes[i] for i in rng.permutation(len(g.nodes))]
    g2 = Graph(shuffled, params=g.params, constants=g.constants)
    assert [n.name for n in g2.nodes] == [n.name for n in g.nodes]
    np.testing.assert_array_equal(g2.forward(x)[0], g.forward(x)[0])  # same ops, same order


def test_nodes_the_output_does_not_need_are_dropped() -> None:
    g = Graph(
        [Node("a", "relu", ("x",), "out"), Node("dead", "relu", ("x",), "unused")], output="out"
    )
    assert [n.name for n in g.nodes] == ["a"]


def _graph_error(build: Callable[[], Any]) -> GraphError:
    with pytest.raises(GraphError) as info:
        build()
    return info.value


TOPOLOGY_ERRORS = [
    pytest.param(
        lambda: Graph(
            [Node("a", "relu", ("b_out",), "a_out"), Node("b", "relu", ("a_out",), "b_out")],
            output="a_out",
        ),
        "a",
        "is on a cycle",
        id="cycle",
    ),
    pytest.param(
        lambda: Graph(
            [
                Node("head", "relu", ("x",), "h"),
                Node("c1", "add", ("h", "c2_out"), "c1_out"),
                Node("c2", "relu", ("c1_out",), "c2_out"),
                Node("tail", "relu", ("c2_out",), "out"),
            ],
            output="out",
        ),
        "c1",
        "is on a cycle",
        id="cycle-behind-a-head",
    ),
    pytest.param(
        lambda: Graph([Node("a", "relu", ("nope",), "out")]),
        "a",
        'input "nope" is not the graph input, a parameter, a constant or any node\'s output',
        id="unknown-tensor",
    ),
    pytest.param(
        lambda: Graph([Node("a", "relu", ("x",), "h"), Node("b", "relu", ("x",), "h")]),
        "b",
        'output "h" is already a tensor of node "a"',
        id="duplicate-output",
    ),
    pytest.param(
        lambda: Graph([Node("a", "relu", ("x",), "w")], params={"w": np.ones(2)}),
        "a",
        'output "w" is already a tensor of the graph',
        id="output-is-a-param",
    ),
    pytest.param(
        lambda: Graph([Node("a", "relu", ("x",), "h"), Node("a", "relu", ("h",), "out")]),
        "a",
        "two nodes have this name",
        id="duplicate-name",
    ),
    pytest.param(
        lambda: Graph([Node("a", "Conv", ("x",), "out")]), "a", "unknown op 'Conv'", id="unknown-op"
    ),
    pytest.param(
        lambda: Graph([Node("a", "conv2d", ("x",), "out")]),
        "a",
        "conv2d takes inputs (x, w[, b]), got 1",
        id="arity",
    ),
    pytest.param(
        lambda: Graph([Node("a", "relu", ("x",), "out", {"alpha": 1})]),
        "a",
        "unknown attribute 'alpha' (relu takes no attributes)",
        id="unknown-attribute",
    ),
    pytest.param(
        lambda: Graph([Node("a", "pool2d", ("x",), "out", {"kernel_size": 0})]),
        "a",
        "kernel_size must be >= 1, got 0",
        id="bad-attribute",
    ),
]


@pytest.mark.parametrize(("build", "node", "fragment"), TOPOLOGY_ERRORS)
def test_topology_errors_name_the_node(build: Callable[[], Any], node: str, fragment: str) -> None:
    exc = _graph_error(build)
    assert exc.node == node
    assert str(exc).startswith(f'node "{node}" (')
    assert fragment in str(exc)


GRAPH_ERRORS = [
    pytest.param(
        lambda: Graph([Node("a", "relu", ("x",), "h"), Node("b", "relu", ("x",), "k")]),
        "give output=: 2 tensors are read by no node ('h', 'k')",
        id="two-sinks",
    ),
    pytest.param(
        lambda: Graph([Node("a", "relu", ("x",), "h")], output="zz"),
        'the output "zz" is no tensor of the graph',
        id="unknown-output",
    ),
    pytest.param(
        lambda: Graph([], params={"w": np.ones(1)}, constants={"w": np.ones(1)}),
        '"w" is both a parameter and a constant',
        id="param-and-constant",
    ),
]


@pytest.mark.parametrize(("build", "fragment"), GRAPH_ERRORS)
def test_graph_level_errors(build: Callable[[], Any], fragment: str) -> None:
    exc = _graph_error(build)
    assert exc.node is None
    assert str(exc) == f"graph: {fragment}"


def test_a_graph_whose_declared_input_does_not_fit_fails_to_build() -> None:
    w = np.ones((2, 3, 5, 5))
    with pytest.raises(GraphError, match=r'node "c" \(conv2d\): output height would be -1') as info:
        Graph([Node("c", "conv2d", ("x", "w"), "out")], params={"w": w}, input_shape=(-1, 3, 3, 8))
    assert info.value.detail.startswith("output height would be -1")


def test_bad_parameters_and_settings() -> None:
    with pytest.raises(cnncore.DtypeError, match="w must be float32 or float64") as info:
        Graph([], params={"w": np.ones(2, dtype=complex)})
    assert info.value.arg == "w"
    with pytest.raises(cnncore.ParameterError, match="dtype must be float32, float64 or None"):
        Graph([], dtype=np.int32)
    with pytest.raises(cnncore.ParameterError, match="input_shape dimension 1 must be"):
        Graph([], input_shape=(-1, 0))


# --------------------------------------------------------------------------- gradients


def test_residual_block_gradients_match_central_differences(rng: np.random.Generator) -> None:
    x, g = residual_block(rng)
    out, cache = g.forward(x)
    dout = rng.standard_normal(out.shape)
    grads = g.backward(dout, cache)
    assert set(grads) == {"x", *g.params}  # the running statistics are constants: no gradient
    for name, analytic in grads.items():
        target = x if name == "x" else g.params[name]
        assert_gradient(lambda: g.forward(x)[0], target, analytic, dout)


def test_every_op_chained_gradients_match_central_differences(rng: np.random.Generator) -> None:
    x, g = branchy(rng)
    out, cache = g.forward(x)
    dout = rng.standard_normal(out.shape)
    grads = g.backward(dout, cache)
    for name, analytic in grads.items():
        target = x if name == "x" else g.params[name]
        assert_gradient(lambda: g.forward(x)[0], target, analytic, dout)


def test_fan_out_gradients_are_summed_exactly(rng: np.random.Generator) -> None:
    # out = relu(x) + x: dL/dx = dout * (x > 0) + dout, one gradient from each reader of x.
    x = rng.standard_normal((3, 5))
    g = Graph([Node("r", "relu", ("x",), "h"), Node("s", "add", ("h", "x"), "out")])
    out, cache = g.forward(x)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_array_equal(g.backward(dout, cache)["x"], dout * (x > 0) + dout)


def test_a_sum_never_writes_into_dout_or_its_views(rng: np.random.Generator) -> None:
    # Both readers of x pass dout on unchanged (identity, add): the sum must be a new array.
    x = rng.standard_normal((2, 3))
    g = Graph(
        [
            Node("i", "identity", ("x",), "a"),
            Node("f", "reshape", ("x",), "b", {"shape": (2, 3)}),
            Node("s", "add", ("a", "b"), "out"),
        ]
    )
    out, cache = g.forward(x)
    dout = rng.standard_normal(out.shape)
    before = dout.copy()
    dx = g.backward(dout, cache)["x"]
    np.testing.assert_array_equal(dout, before)
    np.testing.assert_array_equal(dx, 2 * before)
    same = Graph([Node("s", "add", ("x", "x"), "out")])  # one node reading x twice
    _, cache = same.forward(x)
    np.testing.assert_array_equal(same.backward(dout, cache)["x"], 2 * before)
    np.testing.assert_array_equal(dout, before)


def test_wrt_returns_only_what_was_asked_and_skips_the_rest(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    conv = OPS["conv2d"]

    def counting(dout: np.ndarray, cache: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        calls.append("conv2d")
        return conv.backward(dout, cache, needs)

    monkeypatch.setitem(OPS, "conv2d", dataclasses.replace(conv, backward=counting))
    x, g = residual_block(rng)
    out, cache = g.forward(x)
    dout = rng.standard_normal(out.shape)
    full = g.backward(dout, cache, release=False)
    assert calls == ["conv2d", "conv2d"]
    calls.clear()
    head = g.backward(dout, cache, wrt=["fw", "fb"], release=False)
    assert set(head) == {"fw", "fb"}
    assert calls == []  # nothing before the head leads to fw or fb
    np.testing.assert_array_equal(head["fw"], full["fw"])
    second = g.backward(dout, cache, wrt=["w2"])
    assert calls == ["conv2d"]  # conv2, not conv1: w2 is read after conv1
    np.testing.assert_array_equal(second["w2"], full["w2"])


def test_a_parameter_the_output_does_not_depend_on_gets_zeros(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3))
    g = Graph([Node("r", "relu", ("x",), "out")], params={"spare": np.ones((4, 2))})
    out, cache = g.forward(x)
    grads = g.backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(grads["spare"], np.zeros((4, 2)))


BACKWARD_MISUSE = [
    pytest.param(lambda g, x: (g, g.forward(x)[1], None), "dout", "dout has shape", id="dout"),
    pytest.param(
        lambda g, x: (g, g.forward(x, backward=False)[1], 1.0),
        "cache",
        "forward(..., backward=False), which keeps no caches",
        id="no-caches",
    ),
    pytest.param(
        lambda g, x: (Graph(g.nodes, params=g.params, constants=g.constants), g.forward(x)[1], 1.0),
        "cache",
        "another graph's forward pass",
        id="other-graph",
    ),
]


@pytest.mark.parametrize(("setup", "arg", "fragment"), BACKWARD_MISUSE)
def test_backward_misuse(
    rng: np.random.Generator, setup: Callable, arg: str, fragment: str
) -> None:
    x, g = residual_block(rng)
    graph, cache, scale = setup(g, x)
    dout = np.ones((3, 3)) if scale is None else np.ones((2, 3))
    with pytest.raises(
        cnncore.CnnError, match=fragment.replace("(", r"\(").replace(")", r"\)")
    ) as info:
        graph.backward(dout, cache)
    assert info.value.arg == arg


def test_a_cache_serves_one_backward_unless_kept(rng: np.random.Generator) -> None:
    x, g = residual_block(rng)
    out, cache = g.forward(x)
    dout = rng.standard_normal(out.shape)
    kept = g.backward(dout, cache, release=False)
    first = g.backward(dout, cache)
    np.testing.assert_array_equal(kept["w1"], first["w1"])
    assert all(c is None for c in cache.caches or [])  # released as consumed
    with pytest.raises(cnncore.ParameterError, match="already used by a backward pass"):
        g.backward(dout, cache)
    with pytest.raises(cnncore.ParameterError, match='wrt names "w9", which gets no gradient'):
        g.backward(dout, g.forward(x)[1], wrt=["w9"])


def test_read_only_parameters_and_input_are_never_written(rng: np.random.Generator) -> None:
    x, g = residual_block(rng)
    frozen = {k: v.copy() for k, v in g.params.items()}
    for v in (*g.params.values(), *g.constants.values(), x):
        v.flags.writeable = False
    out, cache = g.forward(x)
    grads = g.backward(np.ones_like(out), cache)
    assert all(grads[k].flags.writeable for k in grads)
    for k, v in frozen.items():
        np.testing.assert_array_equal(g.params[k], v)


def test_dtype_casts_input_and_parameters(rng: np.random.Generator) -> None:
    x, g = residual_block(rng)
    g32 = Graph(g.nodes, params=g.params, constants=g.constants, dtype=np.float32)
    out, cache = g32.forward(x)  # float64 x is cast
    grads = g32.backward(np.ones_like(out), cache)
    assert {out.dtype, *(v.dtype for v in grads.values())} == {np.dtype(np.float32)}
    # float32 against the float64 graph: ~10 rounding steps of 6e-8 on values of order 1.
    np.testing.assert_allclose(out, g.forward(x)[0], rtol=1e-5, atol=1e-6)


def test_keep_and_op_counts(rng: np.random.Generator) -> None:
    x, g = residual_block(rng)
    _, cache = g.forward(x, keep=["h5"])
    assert set(cache.values) == {"h5"}
    assert cache.values["h5"].shape == (2, 4, 6, 6)
    with pytest.raises(cnncore.ParameterError, match='keep names "w1", which is no node output'):
        g.forward(x, keep=["w1"])
    assert g.op_counts() == {
        "conv2d": 2,
        "batchnorm": 1,
        "relu": 2,
        "add": 1,
        "pool2d": 1,
        "global_avg_pool": 1,
        "flatten": 1,
        "gemm": 1,
    }


# --------------------------------------------------------------------------- shapes


def test_infer_agrees_with_geometry(rng: np.random.Generator) -> None:
    _, g = residual_block(rng)
    info = g.infer((5, 4, 6, 6))
    by = {n.name: n for n in info.nodes}
    conv = conv2d_geometry((5, 4, 6, 6), (4, 4, 3, 3), padding=1).info
    assert (by["conv1"].output_shape, by["conv1"].flops) == (conv.output_shape, conv.flops)
    assert by["conv1"].param_count == 4 * 4 * 3 * 3 + 4
    pool = pool2d_geometry((5, 4, 6, 6), kernel_size=2, stride=2).info
    assert (by["pool"].output_shape, by["pool"].flops) == (pool.output_shape, pool.flops)
    fc = linear_info((5, 4), (4, 3))
    assert by["fc"].output_shape == fc.output_shape
    assert by["fc"].flops == fc.flops + 2 * 5 * 3  # plus alpha/beta scaling of c
    assert info.output_shape == (5, 3)
    assert info.total_params == sum(v.size for v in g.params.values())
    assert info.total_flops == sum(n.flops for n in info.nodes)
    assert info.shapes["h8"] == (5, 4, 1, 1)


def test_infer_checks_the_declared_input(rng: np.random.Generator) -> None:
    _, g = residual_block(rng)
    with pytest.raises(
        cnncore.ShapeError, match=r"x has shape \(3, 4, 7, 6\) but the graph takes \(N, 4, 6, 6\)"
    ):
        g.infer((3, 4, 7, 6))


def test_shape_errors_name_the_node_and_its_inputs() -> None:
    g = Graph([Node("c", "conv2d", ("x", "w"), "out")], params={"w": np.ones((2, 3, 3, 3))})
    with pytest.raises(GraphError) as info:
        g.infer((1, 4, 5, 5))
    assert str(info.value) == (
        'node "c" (conv2d): w has 3 input channels but x has 4 (groups=1, so w needs 4) '
        '(inputs: x="x" (1, 4, 5, 5), w="w" (2, 3, 3, 3))'
    )
    assert info.value.arg == "w"


def test_network_graph_names_and_agrees_with_network_info(rng: np.random.Generator) -> None:
    x, layers = small_cnn(rng)
    g = network_graph(layers)
    assert [(n.name, n.op, n.inputs, n.output) for n in g.nodes] == [
        ("0", "conv2d", ("x", "0.w", "0.b"), "0.out"),
        ("1", "relu", ("0.out",), "1.out"),
        ("2", "pool2d", ("1.out",), "2.out"),
        ("3", "flatten", ("2.out",), "3.out"),
        ("4", "linear", ("3.out", "4.w", "4.b"), "out"),
    ]
    infos = cnncore.network_info(x.shape, layers)
    ginfo = g.infer(x.shape)
    assert [n.output_shape for n in ginfo.nodes] == [i.output_shape for i in infos]
    assert [n.flops for n in ginfo.nodes] == [i.flops for i in infos]
    assert [n.param_count for n in ginfo.nodes] == [i.param_count for i in infos]
    out, _ = g.forward(x)
    np.testing.assert_array_equal(out, cnncore.network_forward(x, layers)[0])


# --------------------------------------------------------------------------- memory


def _peak(run: Callable[[], None]) -> int:
    run()  # warm: first-use allocations (thread pools, caches) are not the pass's
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("backward", [True, False], ids=["forward+backward", "forward"])
@pytest.mark.parametrize("batch", [1, 16], ids=["N1", "N16"])
@pytest.mark.parametrize("make", [residual_block, branchy], ids=["residual", "branchy"])
def test_working_bytes_bounds_what_a_pass_allocates(
    rng: np.random.Generator, make: Callable, batch: int, dtype: Any, backward: bool
) -> None:
    x0, g = make(rng, dtype)
    shape = (batch, *x0.shape[1:])
    itemsize = np.dtype(dtype).itemsize

    def one_pass() -> None:
        x = np.ones(shape, dtype=dtype)  # the input and dout are part of the bound
        out, cache = g.forward(x, backward=backward)
        if backward:
            g.backward(np.ones(out.shape, dtype=dtype), cache)

    measured = _peak(one_pass)
    bound = g.infer(shape).working_bytes(itemsize, backward=backward)
    assert measured <= bound
    # Not uselessly loose either: the bound keeps every activation until its backward,
    # counts a fan-out's sum twice and each op's largest temporaries (conv's dW partials
    # for every chunk, pooling's float64 bincount buffer), so it may reach a few times
    # the measured peak on a graph this small; 4x leaves room for the op estimates' slack.
    assert bound <= 4 * measured, (bound, measured)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("backward", [True, False], ids=["forward+backward", "forward"])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs", "bias"),
    [
        pytest.param((2, 8, 30, 30), (16, 8, 3, 3), {"padding": 1}, True, id="padded-bias"),
        pytest.param((2, 6, 31, 30), (8, 6, 3, 3), {"stride": 2}, False, id="stride2"),
        pytest.param((2, 8, 30, 30), (16, 8, 1, 1), {}, False, id="1x1-unpadded"),
        pytest.param((2, 8, 30, 30), (8, 2, 3, 3), {"groups": 4, "padding": 1}, True, id="groups"),
        # dX by a convolution of dout (DxPath.CORRELATION) whose columns outgrow col2im's
        # shares: 4 times the filters of the channels.
        pytest.param((2, 4, 30, 30), (16, 4, 3, 3), {"padding": 1}, False, id="widening"),
    ],
)
def test_working_bytes_bounds_a_convolution_in_bands(
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    attrs: dict[str, Any],
    bias: bool,
    dtype: Any,
    backward: bool,
) -> None:
    # Per-sample layers computed in bands of output rows (ConvPath.BANDS), four or more
    # bands a sample: the cache is the padded input, the backward pass copies each band
    # again for dW. The graph plans its convolutions with conv.LIMITS.
    no_whole_batch = (0, 0)
    limits = ConvLimits(
        batch_max_pixels=no_whole_batch,
        inference_batch_max_pixels=no_whole_batch,
        band_bytes=1 << 12,
    )
    monkeypatch.setattr(conv_module, "LIMITS", limits)
    params = {"w": rng.standard_normal(w_shape).astype(dtype)}
    if bias:
        params["b"] = rng.standard_normal(w_shape[0]).astype(dtype)
    g = Graph([Node("c", "conv2d", ("x", *params), "out", attrs)], params=params)
    info = g.infer(x_shape)
    itemsize = np.dtype(dtype).itemsize
    geom = conv2d_geometry(x_shape, w_shape, bias=bias, **attrs)
    plan = conv2d_plan(geom, itemsize)
    assert plan.path is ConvPath.BANDS
    assert geom.out_h >= 4 * plan.band_rows
    _, cache = g.forward(np.ones(x_shape, dtype=dtype))
    assert cache.caches is not None
    assert cache.caches[0].cols is None

    def one_pass() -> None:
        x = np.ones(x_shape, dtype=dtype)
        out, cache = g.forward(x, backward=backward)
        if backward:
            g.backward(np.ones(out.shape, dtype=dtype), cache)

    measured = _peak(one_pass)
    bound = info.working_bytes(itemsize, backward=backward)
    assert measured <= bound
    assert bound <= 4 * measured, (bound, measured)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"),
    [
        pytest.param((8, 4, 12, 12), (16, 4, 3, 3), {"padding": 1}, id="widening"),
        pytest.param((8, 16, 12, 12), (4, 16, 3, 3), {"padding": (2, 0, 1, 1)}, id="narrowing"),
        pytest.param(
            (8, 6, 12, 12), (6, 2, 3, 3), {"padding": 2, "dilation": 2, "groups": 3}, id="dil"
        ),
    ],
)
def test_working_bytes_bounds_a_whole_batch_convolution_whose_dx_correlates(
    rng: np.random.Generator,
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    attrs: dict[str, Any],
    dtype: Any,
) -> None:
    # One GEMM over the batch forward, dX by a convolution of dout with the rotated kernel.
    params = {"w": rng.standard_normal(w_shape).astype(dtype)}
    g = Graph([Node("c", "conv2d", ("x", "w"), "out", attrs)], params=params)
    geom = conv2d_geometry(x_shape, w_shape, bias=False, **attrs)
    plan = conv2d_plan(geom, np.dtype(dtype).itemsize)
    assert plan.path is ConvPath.WHOLE_BATCH
    assert plan.dx is DxPath.CORRELATION

    def one_pass() -> None:
        x = np.ones(x_shape, dtype=dtype)
        out, cache = g.forward(x)
        g.backward(np.ones(out.shape, dtype=dtype), cache)

    measured = _peak(one_pass)
    bound = g.infer(x_shape).working_bytes(np.dtype(dtype).itemsize)
    assert measured <= bound
    assert bound <= 4 * measured, (bound, measured)


# --------------------------------------------------------------------------- in-place inference


def _spy_overwrites(g: Graph, calls: list[str]) -> None:
    """Record the nodes whose output the engine writes into their input (Op.overwrite)."""
    for i, (node, op) in enumerate(zip(g.nodes, g._ops, strict=True)):
        if op.overwrite is not None:

            def spy(inputs: Any, attrs: Any, _op: Any = op, _name: str = node.name) -> Any:
                calls.append(_name)
                return _op.overwrite(inputs, attrs)

            g._ops[i] = dataclasses.replace(op, overwrite=spy)


def test_inference_overwrites_only_dead_activations_it_owns(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    nodes = [
        Node("c", "conv2d", ("x", "w"), "h", {"padding": 1}),
        Node("r", "relu", ("h",), "a"),  # h is dead after r: overwritten
        Node("view", "reshape", ("a",), "v", {"shape": (2, -1)}),
        Node("r2", "relu", ("v",), "b"),  # v is a view of a, which f still reads
        Node("f", "flatten", ("a",), "af"),
        Node("s", "add", ("b", "af"), "s1"),  # b is dead and owns its memory: overwritten
        Node("id", "identity", ("x",), "xi"),
        Node("rx", "relu", ("xi",), "rxi"),  # xi is the caller's input itself
        Node("rm", "relu", ("m",), "rmi"),  # a parameter
        Node("fx", "flatten", ("rxi",), "fxi"),
        Node("g", "gemm", ("fxi", "rmi"), "p"),
        Node("out", "add", ("s1", "p"), "y"),
    ]
    m = rng.standard_normal((75, 100))
    g = Graph(nodes, params={"w": w, "m": m})
    x0, w0, m0 = x.copy(), w.copy(), m.copy()
    calls: list[str] = []
    _spy_overwrites(g, calls)
    inferred, _ = g.forward(x, backward=False)
    trained, _ = g.forward(x)  # no overwrites with caches
    np.testing.assert_array_equal(inferred, trained)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(m, m0)
    assert calls == ["r", "s", "out"]  # never r2 (a view), rx (the input), rm (a parameter)


def test_inference_does_not_overwrite_kept_tensors(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3, 5, 5))
    g = Graph(
        [Node("c", "conv2d", ("x", "w"), "h", {"padding": 1}), Node("r", "relu", ("h",), "a")],
        params={"w": rng.standard_normal((4, 3, 3, 3))},
    )
    calls: list[str] = []
    _spy_overwrites(g, calls)
    _, cache = g.forward(x, backward=False, keep=["h"])
    want, _ = cnncore.conv2d_forward(x, g.params["w"], padding=1)
    np.testing.assert_array_equal(cache.values["h"], want)  # still has its negatives
    assert (cache.values["h"] < 0).any()
    assert calls == []
