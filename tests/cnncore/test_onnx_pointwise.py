"""The mobile CNNs' point-wise operators (issue 22): Sigmoid, HardSigmoid, HardSwish, Tanh,
Sqrt, Neg, Pow, Mul, Sub, Div, with numpy broadcasting, against onnxruntime forward and
central differences backward, in float64, on graphs built with onnx.helper.

Forward tolerances, per case (``u`` is the unit roundoff of the dtype compared):

- arithmetic (``Mul``, ``Sub``, ``Div``, ``Neg``): one IEEE operation per element on the
  same operands on both sides, so the results are equal bit for bit;
- piecewise-linear activations (``HardSigmoid``, ``HardSwish``): at most three roundings
  on each side (a product, a sum, a product), each within ``u`` of the magnitudes
  involved, so the two differ by at most ``6·u·(1 + |x|)``;
- layer normalization: see its case below (sums of ``D`` terms for the mean and variance);
- transcendental ones (``Sigmoid``, ``Tanh``, ``Sqrt``, ``Pow``, ``Erf``): an elementary function
  (within 2 ulp in numpy's and onnxruntime's libraries) and at most two more roundings on
  each side give ``2·(4 + 2)·u`` relative to the result; onnxruntime's logistic goes
  through ``tanh`` (``(1 + tanh(x/2)) / 2``), which is accurate to ``u`` in absolute terms
  only, so near 0 its answer carries up to ``2u`` more absolute error, times ``|x|`` once
  multiplied by ``x`` (SiLU): the bound is ``12u·|y| + 4u·(1 + |x|)``. cnncore's own
  logistic is checked relative to an extended-precision one separately.

Gradients: :func:`cnncore.gradcheck.assert_gradient` (central differences, its own bound)
on every input and parameter, with inputs kept away from the kinks of the piecewise ops.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnncore import load_onnx
from cnncore.gradcheck import assert_gradient
from cnncore.graph import OPS
from cnncore.onnx import OnnxImportError, import_model
from cnncore.op import first_only

from .test_graph import _peak
from .test_onnx import ort_forward, with_output_shape

U64 = 2.0**-53
U32 = 2.0**-24


def model(
    nodes: list[Any], x_shape: tuple[int, ...], inits: dict[str, np.ndarray], dtype: Any
) -> onnx.ModelProto:
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "pointwise",
        [helper.make_tensor_value_info("input", elem, ["N", *x_shape[1:]])],
        [helper.make_tensor_value_info("y", elem, None)],
        initializer=[numpy_helper.from_array(v.astype(dtype), k) for k, v in inits.items()],
    )
    return with_output_shape(
        helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", 17)])
    )


def node(op: str, inputs: list[str], output: str = "y", **attrs: Any) -> Any:
    return helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs)


def scalar(name: str, value: float, dtype: Any) -> Any:
    return helper.make_node(
        "Constant",
        [],
        [name],
        name=f"c_{name}",
        value=numpy_helper.from_array(np.asarray(value, dtype)),
    )


def away_from(x: np.ndarray, kinks: tuple[float, ...], gap: float = 1e-2) -> np.ndarray:
    """``x`` with every entry within ``gap`` of a kink moved ``gap`` away from it."""
    x = x.copy()
    for k in kinks:
        near = np.abs(x - k) < gap
        x[near] = k + np.where(x[near] >= k, gap, -gap)
    return x


SHAPE = (2, 3, 4, 5)

# name: (nodes, inits, input transform, kinks, kind, ORT dtype)
CASES: dict[str, tuple[Any, ...]] = {
    "sigmoid": ([node("Sigmoid", ["input"])], {}, None, (), "transcendental", np.float64),
    "tanh": ([node("Tanh", ["input"])], {}, None, (), "transcendental", np.float64),
    "sqrt": ([node("Sqrt", ["input"])], {}, np.abs, (0.0,), "transcendental", np.float64),
    "pow-2": (
        [scalar("p", 2.0, np.float64), node("Pow", ["input", "p"])],
        {},
        None,
        (),
        "transcendental",
        np.float64,
    ),
    "pow-half": (
        [scalar("p", 0.5, np.float64), node("Pow", ["input", "p"])],
        {},
        np.abs,
        (0.0,),
        "transcendental",
        np.float64,
    ),
    "neg": ([node("Neg", ["input"])], {}, None, (), "exact", np.float64),
    "hard-sigmoid": ([node("HardSigmoid", ["input"])], {}, None, (-2.5, 2.5), "linear", np.float32),
    "hard-sigmoid-torch": (
        [node("HardSigmoid", ["input"], alpha=1 / 6, beta=0.5)],
        {},
        None,
        (-3.0, 3.0),
        "linear",
        np.float32,
    ),
    "hard-swish": ([node("HardSwish", ["input"])], {}, None, (-3.0, 3.0), "linear", np.float32),
    "erf": ([node("Erf", ["input"])], {}, None, (), "transcendental", np.float32),
    "gelu-erf-chain": (  # the legacy exporter's GELU: x * (1 + erf(x / sqrt 2)) / 2
        [
            scalar("r2", 1.4142135623730951, np.float32),
            node("Div", ["input", "r2"], "d"),
            node("Erf", ["d"], "e"),
            scalar("one", 1.0, np.float32),
            node("Add", ["e", "one"], "a"),
            node("Mul", ["input", "a"], "m"),
            scalar("half", 0.5, np.float32),
            node("Mul", ["m", "half"]),
        ],
        {},
        None,
        (),
        "transcendental",
        np.float32,
    ),
    "layer-norm-channels-last": (
        [
            node("Transpose", ["input"], "t", perm=[0, 2, 3, 1]),
            node("LayerNormalization", ["t", "S", "B"], "n", axis=-1, epsilon=1e-6),
            node("Transpose", ["n"], perm=[0, 3, 1, 2]),
        ],
        {"S": (3,), "B": (3,)},
        None,
        (),
        "layernorm",
        np.float32,
    ),
    "mul-se": (  # squeeze-and-excitation: x * sigmoid(mean over the plane), (N,C,1,1) x (N,C,H,W)
        [
            node("ReduceMean", ["input"], "m", axes=[2, 3]),
            node("Sigmoid", ["m"], "s"),
            node("Mul", ["input", "s"]),
        ],
        {},
        None,
        (),
        "transcendental",
        np.float64,
    ),
    "mul-param": ([node("Mul", ["input", "G"])], {"G": (3, 1, 1)}, None, (), "exact", np.float64),
    "mul-scalar": (
        [scalar("h", 0.5, np.float64), node("Mul", ["h", "input"])],
        {},
        None,
        (),
        "exact",
        np.float64,
    ),
    "silu": (
        [node("Sigmoid", ["input"], "s"), node("Mul", ["input", "s"])],
        {},
        None,
        (),
        "transcendental",
        np.float64,
    ),
    "sub-rank": ([node("Sub", ["B", "input"])], {"B": (5,)}, None, (), "exact", np.float64),
    "div-param": (
        [node("Div", ["input", "D"])],
        {"D": (1, 3, 1, 1)},
        None,
        (),
        "exact",
        np.float64,
    ),
    "div-by-input": (
        [node("Div", ["D", "input"])],
        {"D": (4, 5)},
        np.abs,
        (0.0,),
        "exact",
        np.float64,
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_forward_equals_onnxruntime_and_gradients_central_differences(
    case: str, rng: np.random.Generator
) -> None:
    nodes, shapes, transform, kinks, kind, ort_dtype = CASES[case]
    inits = {k: rng.uniform(0.5, 2.0, s) for k, s in shapes.items()}  # positive: Div is safe
    x = rng.standard_normal(SHAPE) * 3
    if transform is not None:
        x = transform(x) + 0.1
    x = away_from(x, kinks)
    reference = ort_forward(model(nodes, SHAPE, inits, ort_dtype), x.astype(ort_dtype))
    g = import_model(model(nodes, SHAPE, inits, ort_dtype))
    out, _ = g.forward(x.astype(ort_dtype))
    assert out.dtype == ort_dtype
    u = U64 if ort_dtype == np.float64 else U32
    if kind == "exact":
        np.testing.assert_array_equal(out, reference)
    elif kind == "linear":
        assert np.all(np.abs(out - reference) <= 6 * u * (1 + np.abs(x.astype(ort_dtype))))
    elif kind == "layernorm":
        # D-term sums for the mean and the variance, each within D·u of its magnitudes, move
        # xhat by at most about 2·D·u·(1 + |xhat|) with |xhat| <= sqrt(D), on either side;
        # times |scale| (the bias adds one rounding).
        d = x.shape[1]
        scale = np.abs(inits["S"]).max()
        bound = 4 * (d + 2) * u * (1 + math.sqrt(d)) * scale + 2 * u * np.abs(reference)
        assert np.all(np.abs(out - reference) <= bound)
    else:
        bound = 12 * u * np.abs(reference) + 4 * u * (1 + np.abs(x.astype(ort_dtype)))
        assert np.all(np.abs(out - reference) <= bound)

    g64 = import_model(model(nodes, SHAPE, inits, np.float64))
    out, cache = g64.forward(x)
    dout = rng.standard_normal(out.shape)
    grads = g64.backward(dout, cache)
    assert set(grads) == {"x", *g64.params}
    assert_gradient(lambda: g64.forward(x)[0], x, grads["x"], dout=dout)
    for p, value in g64.params.items():
        assert grads[p].shape == value.shape
        assert_gradient(lambda: g64.forward(x)[0], value, grads[p], dout=dout)


def test_sigmoid_is_accurate_relative_to_its_value(rng: np.random.Generator) -> None:
    """exp(-|x|) (within 2 ulp), a sum and a quotient (one rounding each): 4u relative,
    against the same formula in extended precision (64-bit mantissa, exact here to 2^-64)."""
    g = import_model(model([node("Sigmoid", ["input"])], SHAPE, {}, np.float64))
    x = rng.standard_normal(SHAPE) * 10
    exact = 1 / (1 + np.exp(-x.astype(np.longdouble)))
    np.testing.assert_allclose(g.forward(x)[0], exact.astype(np.float64), rtol=4 * U64 * 2)


def test_sigmoid_tails_neither_overflow_nor_cancel() -> None:
    g = import_model(model([node("Sigmoid", ["input"])], (1, 4), {}, np.float32))
    x = np.array([[-100.0, -20.0, 20.0, 100.0]], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is fine
        out, cache = g.forward(x)
        dx = g.backward(np.ones_like(out), cache)["x"]
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    # 4u relative, down to float32's subnormals, whose spacing is 2^-149 absolute.
    np.testing.assert_allclose(out, exact, rtol=4 * U32, atol=2.0**-149)
    assert np.all(np.isfinite(dx))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_of_special_values(dtype: Any) -> None:
    g = import_model(model([node("Sigmoid", ["input"])], (1, 5), {}, dtype))
    x = np.array([[np.nan, np.inf, -np.inf, -0.0, 0.0]], dtype)
    out = g.forward(x)[0]
    np.testing.assert_array_equal(out, np.array([[np.nan, 1.0, 0.0, 0.5, 0.5]], dtype))


@pytest.mark.parametrize("op", ["mul", "sub", "div"])
def test_the_batch_is_split_only_where_samples_stay_apart(op: str) -> None:
    """A parameter of shape (1, C, 1, 1) or (C, 1, 1) broadcasts the same values to every
    sample; one whose axis 0 has the batch's size would pair parameters with samples, so
    the graph must not run parts of the batch apart (Graph._parts asks per_sample)."""
    rule = OPS[op].per_sample
    assert rule is not None
    batched = (True, False)
    assert rule([(8, 3, 4, 5), (1, 3, 1, 1)], batched, {})
    assert rule([(8, 3, 4, 5), (3, 1, 1)], batched, {})
    assert rule([(8, 3, 4, 5), (8, 3, 4, 5)], (True, True), {})  # two batched operands
    assert not rule([(2, 3, 4, 5), (2, 3, 4, 5)], batched, {})
    for unary in ("sigmoid", "hard_swish", "tanh", "pow"):
        assert OPS[unary].per_sample == first_only


def test_shape_arithmetic_is_folded() -> None:
    """ShuffleNetV2's exporters compute a channel split as channels // 2 on constants."""
    nodes = [
        helper.make_node("Shape", ["input"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "one"], ["c"], name="gather", axis=0),
        helper.make_node("Div", ["c", "two"], ["half"], name="div"),
        helper.make_node("Mul", ["half", "two"], ["c2"], name="mul"),
        helper.make_node("Sub", ["c2", "zero"], ["c3"], name="sub"),
        helper.make_node("Concat", ["keep", "c3", "three"], ["shape2"], name="concat", axis=0),
        helper.make_node("Reshape", ["input", "shape2"], ["y"], name="reshape"),
    ]
    consts = {
        "one": np.array(1),
        "two": np.array([2]),
        "zero": np.array([0]),
        "keep": np.array([0]),
        "three": np.array([3]),
    }
    inits = [numpy_helper.from_array(v.astype(np.int64), k) for k, v in consts.items()]
    graph = helper.make_graph(
        nodes,
        "fold",
        [helper.make_tensor_value_info("input", TensorProto.DOUBLE, ["N", 4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        initializer=inits,
    )
    opset = [helper.make_opsetid("", 17)]
    g = import_model(with_output_shape(helper.make_model_gen_version(graph, opset_imports=opset)))
    assert [n.op for n in g.nodes] == ["reshape"]
    x = np.arange(24.0).reshape(2, 4, 3)
    np.testing.assert_array_equal(g.forward(x)[0], x)  # [0, 4 // 2 * 2 - 0, 3]: the same shape


@pytest.mark.parametrize(
    ("nodes", "words"),
    [
        ([node("HardSigmoid", ["input"], gamma=1.0)], "gamma"),
        ([node("Pow", ["input", "input"])], "exponent must be a constant"),
    ],
    ids=["unknown-attribute", "computed-exponent"],
)
def test_refusals_name_the_node_and_attribute(nodes: list[Any], words: str) -> None:
    with pytest.raises(OnnxImportError, match=words):
        import_model(model(nodes, SHAPE, {}, np.float64))


def test_load_onnx_reads_them_from_a_file(tmp_path: Any, rng: np.random.Generator) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(model([node("HardSwish", ["input"])], SHAPE, {}, np.float32), path)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(load_onnx(path).forward(x)[0].shape, SHAPE)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("backward", [True, False], ids=["forward+backward", "forward"])
def test_working_bytes_bounds_what_the_new_ops_allocate(dtype: Any, backward: bool) -> None:
    """GraphInfo.working_bytes against tracemalloc on a block that uses every new op: a
    hard-swish, a squeeze-and-excitation gate, SiLU, and arithmetic with parameters."""
    nodes = [
        node("HardSwish", ["input"], "h"),
        node("ReduceMean", ["h"], "m", axes=[2, 3]),
        node("HardSigmoid", ["m"], "gate", alpha=1 / 6, beta=0.5),
        node("Mul", ["h", "gate"], "se"),
        node("Sigmoid", ["se"], "s"),
        node("Mul", ["se", "s"], "silu"),
        node("Tanh", ["silu"], "t"),
        node("Sub", ["t", "B"], "d"),
        node("Div", ["d", "D"], "q"),
        node("Neg", ["q"], "n"),
        scalar("two", 2.0, np.float64 if dtype == np.float64 else np.float32),
        node("Pow", ["n", "two"], "p"),
        node("Sqrt", ["p"]),
    ]
    inits = {"B": np.full((3, 1, 1), 0.25), "D": np.full((1, 3, 1, 1), 2.0)}
    g = import_model(model(nodes, (16, 3, 20, 20), inits, dtype))
    shape = (16, 3, 20, 20)

    def one_pass() -> None:
        x = np.ones(shape, dtype=dtype)
        out, cache = g.forward(x, backward=backward)
        if backward:
            g.backward(np.ones(out.shape, dtype=dtype), cache)

    measured = _peak(one_pass)
    assert measured <= g.infer(shape).working_bytes(np.dtype(dtype).itemsize, backward=backward)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_opset_20(approximate: str, rng: np.random.Generator) -> None:
    """ONNX's own Gelu (opset 20, the dynamo exporter's), both forms: bound as the
    transcendental cases above; gradients by central differences in float64."""
    m = model([node("Gelu", ["input"], approximate=approximate)], SHAPE, {}, np.float32)
    m.opset_import[0].version = 20
    x = (rng.standard_normal(SHAPE) * 3).astype(np.float32)
    out, _ = import_model(m).forward(x)
    reference = ort_forward(m, x)
    assert np.all(
        np.abs(out - reference) <= 12 * U32 * np.abs(reference) + 4 * U32 * (1 + np.abs(x))
    )
    m64 = model([node("Gelu", ["input"], approximate=approximate)], SHAPE, {}, np.float64)
    m64.opset_import[0].version = 20
    g = import_model(m64)
    x64 = x.astype(np.float64)
    out, cache = g.forward(x64)
    dout = rng.standard_normal(out.shape)
    assert_gradient(lambda: g.forward(x64)[0], x64, g.backward(dout, cache)["x"], dout=dout)


@pytest.mark.parametrize("backward", [True, False], ids=["forward+backward", "forward"])
def test_working_bytes_bounds_layer_norm_and_gelu(backward: bool) -> None:
    nodes = [
        node("Transpose", ["input"], "t", perm=[0, 2, 3, 1]),
        node("LayerNormalization", ["t", "S", "B"], "n", axis=-1),
        node("Erf", ["n"], "e"),
        node("Transpose", ["e"], perm=[0, 3, 1, 2]),
    ]
    shape = (16, 3, 20, 20)
    g = import_model(model(nodes, shape, {"S": np.ones(3), "B": np.zeros(3)}, np.float32))

    def one_pass() -> None:
        x = np.ones(shape, dtype=np.float32)
        out, cache = g.forward(x, backward=backward)
        if backward:
            g.backward(np.ones(out.shape, dtype=np.float32), cache)

    assert _peak(one_pass) <= g.infer(shape).working_bytes(4, backward=backward)
