"""cnncore.load_onnx on graphs built with onnx.helper: onnxruntime forward, central differences.

onnxruntime is the reference implementation of ONNX semantics: every supported operator
and attribute combination is run by both, in float32, on the same rounded inputs.

Forward tolerance. Each output element of a case is a sum of at most ``k`` products
(``k`` = C/groups·KH·KW for a convolution, the window size for average pooling, the
inner dimension of a matrix product, ...). Both implementations accumulate in float32 in
some order, so each is within ``k·eps32·S`` of the exact sum, where ``S`` is the sum
of the terms' magnitudes (the standard bound for recursive summation, eps32 = 2**-24
the unit roundoff). ``S`` is computed by running the same graph in float64 on ``|x|``
with every parameter replaced by its magnitude (the "magnitude twin": convolutions,
matrix products, pooling and additions of magnitudes give exactly ``S``, and
BatchNormalization's mean is negated so ``x - mean`` becomes ``|x| + |mean|``). The two
float32 answers may then differ by ``2·k·eps32·S`` (one bound each); chains of ops add
their ``k`` (first order), which the cases do by hand. Ops that only move or compare
values (ReLU, max pooling, padding, concatenation, reshapes) are exact: ``k = 0`` means
bit-for-bit equality.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnncore import CnnError, load_onnx
from cnncore.gradcheck import assert_gradient
from cnncore.graph import Graph
from cnncore.onnx import OnnxImportError, import_model

EPS32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff 2**-24


# --------------------------------------------------------------------------- building models


@dataclass
class Case:
    """One ONNX graph: nodes, initializers (float ones become parameters), the input's shape."""

    nodes: list[Any]
    x_shape: tuple[int, ...]
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 17
    k: int = 0  # products per output sum along the longest path (module docstring); 0: exact
    softmax: bool = False  # outputs in [0, 1]: S = 1 (a normalised sum of k exponentials)
    x_dims: list[Any] | None = None  # declared input dims, default ["N", *x_shape[1:]]


def model_of(case: Case, dtype: type = np.float32) -> onnx.ModelProto:
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    dims = case.x_dims if case.x_dims is not None else ["N", *case.x_shape[1:]]
    inits = [
        numpy_helper.from_array(v.astype(dtype) if v.dtype.kind == "f" else v, name)
        for name, v in case.inits.items()
    ]
    graph = helper.make_graph(
        case.nodes,
        "case",
        [helper.make_tensor_value_info("input", elem, dims)],
        [helper.make_tensor_value_info("y", elem, None)],
        initializer=inits,
    )
    model = helper.make_model_gen_version(
        graph, opset_imports=[helper.make_opsetid("", case.opset)]
    )
    return with_output_shape(model)


def with_output_shape(model: onnx.ModelProto) -> onnx.ModelProto:
    """The checker wants the output's shape, as exporters write it: ONNX's own inference
    fills it in, or (for operators it does not know) an unknown-rank placeholder."""
    with contextlib.suppress(onnx.shape_inference.InferenceError):
        model = onnx.shape_inference.infer_shapes(model)
    for out in model.graph.output:
        out.type.tensor_type.shape.SetInParent()
    return model


def node(op: str, inputs: list[str], output: str = "y", **attrs: Any) -> Any:
    return helper.make_node(op, inputs, [output], name=f"{op}_node", **attrs)


def const(name: str, value: Any, dtype: Any = np.int64) -> Any:
    return helper.make_node(
        "Constant",
        [],
        [name],
        name=f"const_{name}",
        value=numpy_helper.from_array(np.asarray(value, dtype=dtype)),
    )


def ort_forward(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": x})[0])


def magnitude_twin(g: Graph, x: np.ndarray) -> np.ndarray:
    """``S`` of the module docstring: the graph in float64 on magnitudes."""
    consts = {k: np.abs(v).astype(np.float64) for k, v in g.constants.items()}
    for n in g.nodes:
        if n.op == "batchnorm":
            consts[n.inputs[3]] = -consts[n.inputs[3]]
    twin = Graph(
        g.nodes,
        params={k: np.abs(v).astype(np.float64) for k, v in g.params.items()},
        constants=consts,
        input=g.input,
        output=g.output,
        dtype=np.float64,
    )
    return twin.forward(np.abs(x).astype(np.float64))[0]


def w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


# --------------------------------------------------------------------------- the cases


def conv_cases(rng: np.random.Generator) -> dict[str, Case]:
    wt, b = w(rng, 4, 2, 3, 3), w(rng, 4)
    cin = {"W": wt, "B": b}
    return {
        "conv-pads": Case(
            [node("Conv", ["input", "W", "B"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])],
            (2, 2, 6, 5),
            cin,
            k=19,
        ),
        "conv-stride-dilation-asym": Case(
            [
                node(
                    "Conv", ["input", "W", "B"], strides=[2, 1], dilations=[1, 2], pads=[0, 1, 2, 0]
                )
            ],
            (2, 2, 7, 8),
            cin,
            k=19,
        ),
        "conv-groups-nobias": Case(
            [node("Conv", ["input", "W"], group=2)], (2, 4, 5, 5), {"W": w(rng, 4, 2, 3, 3)}, k=18
        ),
        "conv-depthwise": Case(
            [node("Conv", ["input", "W", "B"], group=3, pads=[1, 1, 1, 1])],
            (2, 3, 5, 5),
            {"W": w(rng, 3, 1, 3, 3), "B": w(rng, 3)},
            k=10,
        ),
        "conv-auto-valid": Case(
            [node("Conv", ["input", "W", "B"], auto_pad="VALID")], (1, 2, 5, 6), cin, k=19
        ),
        "conv-same-upper-stride2": Case(
            [node("Conv", ["input", "W", "B"], auto_pad="SAME_UPPER", strides=[2, 2])],
            (2, 2, 6, 7),
            cin,
            k=19,
        ),
        "conv-opset21": Case(
            [node("Conv", ["input", "W", "B"], pads=[1, 0, 1, 0])],
            (1, 2, 5, 5),
            cin,
            opset=21,
            k=19,
        ),
        "conv-opset10": Case(
            [node("Conv", ["input", "W", "B"], pads=[0, 0, 1, 1])],
            (1, 2, 5, 5),
            cin,
            opset=10,
            k=19,
        ),
    }


def pool_cases(rng: np.random.Generator) -> dict[str, Case]:
    x = (2, 3, 7, 6)
    return {
        "maxpool-2x2": Case([node("MaxPool", ["input"], kernel_shape=[2, 2], strides=[2, 2])], x),
        "maxpool-3x3-s2-pads": Case(
            [node("MaxPool", ["input"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], x
        ),
        "maxpool-asym-pads": Case(
            [node("MaxPool", ["input"], kernel_shape=[3, 2], pads=[2, 0, 0, 1])], x
        ),
        "maxpool-ceil": Case(
            [node("MaxPool", ["input"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], x
        ),
        "maxpool-same-upper": Case(
            [
                node(
                    "MaxPool", ["input"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"
                )
            ],
            x,
        ),
        "maxpool-storage-order-0": Case(
            [node("MaxPool", ["input"], kernel_shape=[2, 2], storage_order=0)], x
        ),
        "avgpool-exclude-pad": Case(
            [
                node(
                    "AveragePool", ["input"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
                )
            ],
            x,
            k=9,
        ),
        "avgpool-include-pad": Case(
            [
                node(
                    "AveragePool",
                    ["input"],
                    kernel_shape=[3, 3],
                    strides=[2, 2],
                    pads=[1, 1, 1, 1],
                    count_include_pad=1,
                )
            ],
            x,
            k=9,
        ),
        "avgpool-ceil": Case(
            [node("AveragePool", ["input"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
            x,
            k=4,
        ),
        "avgpool-valid-opset10": Case(
            [node("AveragePool", ["input"], kernel_shape=[2, 3], auto_pad="VALID")],
            x,
            opset=10,
            k=6,
        ),
        "global-avgpool": Case([node("GlobalAveragePool", ["input"])], x, k=42),
        "reducemean-attr-opset17": Case(
            [node("ReduceMean", ["input"], axes=[2, 3], keepdims=1)], x, k=42
        ),
        "reducemean-input-opset18": Case(
            [const("axes", [-2, -1]), node("ReduceMean", ["input", "axes"], keepdims=0)],
            x,
            opset=18,
            k=42,
        ),
    }


def elementwise_cases(rng: np.random.Generator) -> dict[str, Case]:
    x = (2, 3, 4, 4)
    bn = {"s": w(rng, 3), "b": w(rng, 3), "m": w(rng, 3), "v": rng.uniform(0.5, 2.0, 3)}
    return {
        "relu": Case([node("Relu", ["input"])], x),
        "clip-attrs-opset10": Case([node("Clip", ["input"], min=-0.5, max=0.75)], x, opset=10),
        "clip-relu6-constants": Case(
            [
                const("lo", 0.0, np.float32),
                const("hi", 6.0, np.float32),
                node("Clip", ["input", "lo", "hi"]),
            ],
            x,
        ),
        "clip-max-only-initializer": Case(
            [node("Clip", ["input", "", "hi"])], x, {"hi": np.array(0.3)}, opset=13
        ),
        "batchnorm": Case(
            [node("BatchNormalization", ["input", "s", "b", "m", "v"], epsilon=1e-3)], x, bn, k=4
        ),
        "batchnorm-opset15": Case(
            [node("BatchNormalization", ["input", "s", "b", "m", "v"], training_mode=0)],
            x,
            bn,
            opset=15,
            k=4,
        ),
        "add-bias-broadcast": Case(
            [node("Add", ["input", "c"])], x, {"c": w(rng, 1, 3, 1, 1)}, k=1
        ),
        "add-residual-fanout": Case(
            [node("Conv", ["input", "W"], "c", pads=[1, 1, 1, 1]), node("Add", ["c", "input"])],
            x,
            {"W": w(rng, 3, 3, 3, 3)},
            k=28,
        ),
        "concat-channels": Case(
            [
                node("Conv", ["input", "W"], "a"),
                node("Relu", ["input"], "r"),
                node("Concat", ["a", "r"], axis=1),
            ],
            (2, 3, 4, 4),
            {"W": w(rng, 2, 3, 1, 1)},
            k=3,
        ),
        "identity": Case([node("Identity", ["input"])], x),
        "dropout-opset12": Case(
            [const("ratio", 0.5, np.float32), node("Dropout", ["input", "ratio"])], x, opset=13
        ),
        "dropout-training-false": Case(
            [const("t", False, np.bool_), node("Dropout", ["input", "", "t"])], x, opset=13
        ),
        "dropout-attr-opset10": Case([node("Dropout", ["input"], ratio=0.3)], x, opset=10),
        "softmax-last-opset13": Case(
            [node("Softmax", ["input"], axis=-1)], (3, 5), k=5, softmax=True
        ),
        "softmax-channels-opset13": Case(
            [node("Softmax", ["input"], axis=1)], x, k=3, softmax=True
        ),
        "softmax-coerced-opset10": Case(
            [node("Softmax", ["input"], axis=1)], x, opset=10, k=48, softmax=True
        ),
    }


def shape_cases(rng: np.random.Generator) -> dict[str, Case]:
    x = (2, 3, 4, 4)
    fc = {"Wt": w(rng, 5, 48), "b5": w(rng, 5)}
    return {
        "flatten-axis1": Case([node("Flatten", ["input"])], x),
        "flatten-axis-minus3": Case([node("Flatten", ["input"], axis=-3)], x),
        "reshape-minus1-N": Case([const("s", [-1, 48]), node("Reshape", ["input", "s"])], x),
        "reshape-copy-0": Case([const("s", [0, 12, -1]), node("Reshape", ["input", "s"])], x),
        "reshape-allowzero-no-zero": Case(
            [const("s", [-1, 48]), node("Reshape", ["input", "s"], allowzero=1)], x, opset=14
        ),
        # torch's legacy exporter: x.view(x.size(0), -1)
        "reshape-shape-gather-unsqueeze-concat": Case(
            [
                helper.make_node("Shape", ["input"], ["shp"], name="shape"),
                const("zero", 0),
                helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather", axis=0),
                const("ax", [0]),
                helper.make_node("Unsqueeze", ["n", "ax"], ["n1"], name="unsqueeze"),
                const("m1", [-1]),
                helper.make_node("Concat", ["n1", "m1"], ["target"], name="concat", axis=0),
                node("Reshape", ["input", "target"]),
            ],
            x,
        ),
        "reshape-unsqueeze-attr-opset10": Case(
            [
                helper.make_node("Shape", ["input"], ["shp"], name="shape"),
                const("zero", 0),
                helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather", axis=0),
                helper.make_node("Unsqueeze", ["n"], ["n1"], name="unsqueeze", axes=[0]),
                const("m1", [-1]),
                helper.make_node("Concat", ["n1", "m1"], ["target"], name="concat", axis=0),
                node("Reshape", ["input", "target"]),
            ],
            x,
            opset=10,
        ),
        # the dynamo exporter: Shape(start=0, end=1) and Concat
        "reshape-shape-slice-opset18": Case(
            [
                helper.make_node("Shape", ["input"], ["n1"], name="shape", start=0, end=1),
                const("m1", [-1]),
                helper.make_node("Concat", ["n1", "m1"], ["target"], name="concat", axis=0),
                node("Reshape", ["input", "target"], allowzero=1),
            ],
            x,
            opset=18,
        ),
        # the dynamo exporter without its optimizer: the batch through Squeeze
        "reshape-shape-squeeze-opset18": Case(
            [
                helper.make_node("Shape", ["input"], ["n1"], name="shape", start=0, end=1),
                const("ax", [0]),
                helper.make_node("Squeeze", ["n1", "ax"], ["n"], name="squeeze"),
                helper.make_node("Unsqueeze", ["n", "ax"], ["n2"], name="unsqueeze"),
                const("m1", [-1]),
                helper.make_node("Concat", ["n2", "m1"], ["target"], name="concat", axis=0),
                node("Reshape", ["input", "target"]),
            ],
            x,
            opset=18,
        ),
        # ... and a zero conv bias: Shape of the weight, Expand of a CastLike'd scalar
        "conv-bias-expand-castlike-opset18": Case(
            [
                helper.make_node("Shape", ["W"], ["f"], name="shape", start=0, end=1),
                const("zero", 0.0, np.float32),
                helper.make_node("CastLike", ["zero", "input"], ["z"], name="castlike"),
                helper.make_node("Expand", ["z", "f"], ["bias"], name="expand"),
                node("Conv", ["input", "W", "bias"]),
            ],
            x,
            {"W": w(rng, 2, 3, 3, 3)},
            opset=18,
            k=28,
        ),
        "reshape-initializer-shape": Case(
            [node("Reshape", ["input", "s"])], x, {"s": np.array([0, -1], np.int64)}
        ),
        "gemm-transB-alpha-beta": Case(
            [
                node("Flatten", ["input"], "f"),
                node("Gemm", ["f", "Wt", "b5"], alpha=0.5, beta=2.0, transB=1),
            ],
            x,
            fc,
            k=49,
        ),
        "gemm-transA-noC": Case(
            [node("Gemm", ["input", "W"], transA=1)],
            (4, 3),
            {"W": w(rng, 4, 5)},
            k=4,
            x_dims=[4, 3],
        ),
        "gemm-C-row": Case(
            [node("Gemm", ["input", "W", "c"])], (3, 4), {"W": w(rng, 4, 5), "c": w(rng, 1, 5)}, k=5
        ),
        "matmul": Case([node("MatMul", ["input", "W"])], (3, 4), {"W": w(rng, 4, 5)}, k=4),
        "pad-constant-opset13": Case(
            [
                const("p", [0, 0, 1, 2, 0, 0, 2, 0]),
                const("v", 0.5, np.float32),
                node("Pad", ["input", "p", "v"]),
            ],
            x,
            opset=13,
        ),
        "pad-attrs-opset10": Case(
            [node("Pad", ["input"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=-1.0)], x, opset=10
        ),
        "pad-axes-opset18": Case(
            [
                const("p", [1, 0, 0, 2]),
                const("axes", [2, -1]),
                node("Pad", ["input", "p", "", "axes"]),
            ],
            x,
            opset=18,
        ),
        # torch's legacy exporter for F.pad(x, (1, 2, 0, 1)): the ONNX pads are computed
        # from torch's (last axis first, begin/end pairs) by a folded sub-graph.
        "pad-computed-by-subgraph": Case(
            [
                const("tp", [1, 2, 0, 1]),
                const("four", [4]),
                helper.make_node(
                    "ConstantOfShape",
                    ["four"],
                    ["zeros"],
                    name="cos",
                    value=numpy_helper.from_array(np.zeros(1, np.int64)),
                ),
                helper.make_node("Concat", ["tp", "zeros"], ["p8"], name="cat", axis=0),
                const("r", [-1, 2]),
                helper.make_node("Reshape", ["p8", "r"], ["p42"], name="rs1"),
                const("st", [-1]),
                const("en", [-(2**63)]),
                const("sax", [0]),
                const("ss", [-1]),
                helper.make_node("Slice", ["p42", "st", "en", "sax", "ss"], ["rev"], name="slice"),
                helper.make_node("Transpose", ["rev"], ["tr"], name="tr", perm=[1, 0]),
                const("flat", [-1]),
                helper.make_node("Reshape", ["tr", "flat"], ["p"], name="rs2"),
                helper.make_node("Cast", ["p"], ["pc"], name="cast", to=TensorProto.INT64),
                node("Pad", ["input", "pc"]),
            ],
            x,
        ),
    }


def all_cases() -> dict[str, Case]:
    rng = np.random.default_rng(20261201)
    return {**conv_cases(rng), **pool_cases(rng), **elementwise_cases(rng), **shape_cases(rng)}


CASES = all_cases()


# --------------------------------------------------------------------------- forward vs onnxruntime


@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_onnxruntime(name: str, rng: np.random.Generator) -> None:
    case = CASES[name]
    model = model_of(case)
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    g = import_model(model)
    out, _ = g.forward(x)
    ref = ort_forward(model, x)
    assert out.dtype == np.float32
    assert out.shape == ref.shape
    if case.k == 0:
        np.testing.assert_array_equal(out, ref)  # values are moved or compared, never rounded
        return
    mag = np.ones_like(ref, dtype=np.float64) if case.softmax else magnitude_twin(g, x)
    bound = 2 * case.k * EPS32 * mag  # one k·eps32·S bound for each side (module docstring)
    err = np.abs(out.astype(np.float64) - ref)
    assert np.all(err <= bound), f"max excess {np.max(err - bound):.3g}, max err {err.max():.3g}"


# ------------------------------------------------------------------ backward vs central differences


def _differentiable(name: str) -> bool:
    return not name.startswith(("identity", "dropout", "flatten", "reshape-copy"))


@pytest.mark.parametrize("name", [n for n in CASES if _differentiable(n)])
def test_backward_matches_central_differences(name: str, rng: np.random.Generator) -> None:
    case = CASES[name]
    g = import_model(model_of(case, np.float64))
    # one sample where the batch is free: every element costs two forward passes
    x = rng.standard_normal(case.x_shape if case.x_dims else (1, *case.x_shape[1:]))
    out, cache = g.forward(x)
    dout = rng.standard_normal(out.shape)
    grads = g.backward(dout, cache)
    assert set(grads) == {"x", *g.params}
    assert_gradient(lambda: g.forward(x)[0], x, grads["x"], dout=dout)
    for p, value in g.params.items():
        assert_gradient(lambda: g.forward(x)[0], value, grads[p], dout=dout)


def test_fan_out_gradients_are_summed(rng: np.random.Generator) -> None:
    # x feeds a convolution, a ReLU and the final Add; W feeds two convolutions.
    case = Case(
        [
            node("Conv", ["input", "W"], "a", pads=[1, 1, 1, 1]),
            node("Relu", ["input"], "r"),
            node("Conv", ["r", "W"], "b", pads=[1, 1, 1, 1]),
            node("Add", ["a", "b"], "s"),
            node("Add", ["s", "input"]),
        ],
        (2, 2, 4, 4),
        {"W": w(rng, 2, 2, 3, 3)},
    )
    g = import_model(model_of(case, np.float64))
    x = rng.standard_normal(case.x_shape)
    out, cache = g.forward(x)
    dout = rng.standard_normal(out.shape)
    grads = g.backward(dout, cache)
    assert_gradient(lambda: g.forward(x)[0], x, grads["x"], dout=dout)
    assert_gradient(lambda: g.forward(x)[0], g.params["W"], grads["W"], dout=dout)


# ------------------------------------------------------------------- what the graph looks like


def test_names_params_constants_and_dtype(tmp_path: Path, rng: np.random.Generator) -> None:
    bn = {
        "conv.weight": w(rng, 3, 2, 3, 3),
        "bn.weight": w(rng, 3),
        "bn.bias": w(rng, 3),
        "bn.running_mean": w(rng, 3),
        "bn.running_var": rng.uniform(0.5, 2, 3),
    }
    case = Case(
        [
            node("Conv", ["input", "conv.weight"], "c"),
            node(
                "BatchNormalization",
                ["c", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
                "x",
            ),
            node("Relu", ["x"], "out"),
            node("Identity", ["out"]),
        ],
        (2, 2, 5, 5),
        bn,
    )
    path = tmp_path / "m.onnx"
    onnx.save(model_of(case, np.float64), path)
    g = load_onnx(path)
    assert g.input == "x"
    assert g.output == "out"
    assert g.dtype == np.float64
    assert tuple(g.input_shape) == (-1, 2, 5, 5)
    assert set(g.params) == {"conv.weight", "bn.weight", "bn.bias"}
    assert {"bn.running_mean", "bn.running_var"} <= set(g.constants)
    assert all(v.dtype == np.float64 for v in g.params.values())
    assert g.op_counts() == {"conv2d": 1, "batchnorm": 1, "relu": 1, "identity": 1}
    # the file's tensors called "x" and "out" are not the model's input and output
    assert g.forward(rng.standard_normal((3, 2, 5, 5)))[0].shape == (3, 3, 3, 3)


def test_float32_initializers_of_a_double_model_are_cast() -> None:
    case = Case([node("Add", ["input", "c"])], (2, 3), {"c": np.ones(3)})
    model = model_of(case, np.float64)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones(3, np.float32), "c"))
    g = import_model(model)
    assert g.params["c"].dtype == np.float64


def test_fixed_batch_kept_when_the_graph_bakes_it_in() -> None:
    # A constant Reshape target [2, -1] only means "keep the batch" at batch 2.
    case = Case([const("s", [2, -1]), node("Reshape", ["input", "s"])], (2, 3, 4), x_dims=[2, 3, 4])
    assert tuple(import_model(model_of(case)).input_shape) == (2, 3, 4)
    free = Case(
        [const("s", [-1, 12]), node("Reshape", ["input", "s"])], (2, 3, 4), x_dims=[2, 3, 4]
    )
    assert tuple(import_model(model_of(free)).input_shape) == (-1, 3, 4)


# --------------------------------------------------------------------------- refused models


def _refusal(name: str, nodes: list[Any], message: str, **kw: Any) -> Any:
    return pytest.param(
        Case(nodes, kw.pop("x_shape", (1, 2, 5, 5)), kw.pop("inits", {}), **kw), message, id=name
    )


W2 = np.ones((2, 2, 3, 3))

REFUSED = [
    _refusal(
        "conv-same-lower",
        [helper.make_node("Conv", ["input", "W"], ["y"], name="Conv_12", auto_pad="SAME_LOWER")],
        'node "Conv_12" (Conv): auto_pad SAME_LOWER is not supported',
        inits={"W": W2},
    ),
    _refusal(
        "conv-1d",
        [node("Conv", ["input", "W"])],
        'node "Conv_node" (Conv): only 2-D (N, C, H, W) inputs are supported, '
        "the input has shape [2, 2, 5]",
        x_shape=(1, 2, 5),
        inits={"W": np.ones((2, 2, 3))},
    ),
    _refusal(
        "maxpool-storage-order-1",
        [node("MaxPool", ["input"], kernel_shape=[2, 2], storage_order=1)],
        'node "MaxPool_node" (MaxPool): storage_order 1 is not supported (only 0)',
    ),
    _refusal(
        "maxpool-dilations",
        [node("MaxPool", ["input"], kernel_shape=[2, 2], dilations=[2, 2])],
        'node "MaxPool_node" (MaxPool): dilations [2, 2] are not supported (only 1)',
    ),
    _refusal(
        "maxpool-indices-used",
        [
            helper.make_node("MaxPool", ["input"], ["p", "idx"], name="mp", kernel_shape=[2, 2]),
            node("Cast", ["idx"], "c", to=TensorProto.FLOAT),
            node("Add", ["p", "c"]),
        ],
        'node "mp" (MaxPool): output "idx" is used; only the first output is supported',
    ),
    _refusal(
        "avgpool-ceil-same-upper",
        [node("AveragePool", ["input"], kernel_shape=[2, 2], ceil_mode=1, auto_pad="SAME_UPPER")],
        'node "AveragePool_node" (AveragePool): '
        "ceil_mode 1 with auto_pad SAME_UPPER is not supported",
    ),
    _refusal(
        "batchnorm-training",
        [node("BatchNormalization", ["input", "s", "b", "m", "v"], training_mode=1)],
        'node "BatchNormalization_node" (BatchNormalization): '
        "training_mode 1 is not supported (inference form only)",
        inits={k: np.ones(2) for k in "sbmv"},
        opset=15,
    ),
    _refusal(
        "clip-computed-bound",
        [
            node("ReduceMean", ["input"], "m", keepdims=0, axes=[1, 2, 3]),
            node("Clip", ["input", "m"]),
        ],
        'node "Clip_node" (Clip): min (input "m") must be a constant; '
        "it is computed from the model input",
    ),
    _refusal(
        "pad-reflect",
        [const("p", [0, 0, 1, 1, 0, 0, 1, 1]), node("Pad", ["input", "p"], mode="reflect")],
        'node "Pad_node" (Pad): mode reflect is not supported (only constant)',
    ),
    _refusal(
        "pad-negative",
        [const("p", [0, 0, -1, 0, 0, 0, 0, 0]), node("Pad", ["input", "p"])],
        'node "Pad_node" (Pad): '
        "negative pads [0, 0, -1, 0, 0, 0, 0, 0] (cropping) are not supported",
    ),
    _refusal(
        "pad-batch",
        [const("p", [1, 0, 0, 0, 0, 0, 0, 0]), node("Pad", ["input", "p"])],
        'node "Pad_node" (Pad): padding the batch axis (0) is not supported',
    ),
    _refusal(
        "reshape-computed-shape",
        [
            node("Cast", ["input"], "s", to=TensorProto.INT64),
            node("Flatten", ["s"], "s1", axis=0),
            node("Reshape", ["input", "s1"]),
        ],
        'node "Cast_node" (Cast): Cast is supported only on constant inputs (folded at load time); '
        'input "input" is computed from the model input',
    ),
    _refusal(
        "transpose-moves-batch",
        [node("Transpose", ["input"], perm=[1, 0, 2, 3])],
        'node "Transpose_node" (Transpose): perm [1, 0, 2, 3] moves the batch axis; only '
        "permutations keeping it first are supported",
    ),
    _refusal(
        "reducemean-batch",
        [node("ReduceMean", ["input"], axes=[0])],
        'node "ReduceMean_node" (ReduceMean): axes 0 (the batch) is not supported',
    ),
    _refusal(
        "concat-batch",
        [node("Concat", ["input", "input"], axis=0)],
        'node "Concat_node" (Concat): axis 0 (the batch) is not supported',
    ),
    _refusal(
        "dropout-training",
        [const("t", True, np.bool_), node("Dropout", ["input", "", "t"])],
        'node "Dropout_node" (Dropout): '
        "training_mode true is not supported (inference: pass-through)",
        opset=13,
    ),
    _refusal(
        "unknown-operator",
        [node("LeakyRelu", ["input"])],
        'node "LeakyRelu_node" (LeakyRelu): operator LeakyRelu is not supported',
    ),
    _refusal(
        "unnamed-node",
        [helper.make_node("LeakyRelu", ["input"], ["y"])],
        'node "#0" (LeakyRelu): operator LeakyRelu is not supported',
    ),
    _refusal(
        "opset-9",
        [node("Relu", ["input"])],
        "opset 9 is not supported: the importer is tested with opsets 10 to 21",
        opset=9,
    ),
    _refusal(
        "opset-22",
        [node("Relu", ["input"])],
        "opset 22 is not supported: the importer is tested with opsets 10 to 21",
        opset=22,
    ),
    _refusal(
        "free-spatial-dim",
        [node("Relu", ["input"])],
        'input "input": dimension 2 is not fixed (H); only the batch (dimension 0) may be free',
        x_dims=["N", 2, "H", 5],
    ),
    _refusal(
        "flatten-merges-batch",
        [node("Flatten", ["input"], axis=2)],
        "the output's first dimension does not follow the input's batch size",
    ),
    _refusal(
        "constant-output",
        [const("c", [1.0], np.float32), node("Identity", ["c"])],
        'node "Identity_node" (Identity): '
        "the model's output is a constant: it does not depend on the input",
    ),
]


@pytest.mark.parametrize(("case", "message"), REFUSED)
def test_refused_with_a_message(case: Case, message: str) -> None:
    with pytest.raises(OnnxImportError) as info:
        import_model(model_of(case))
    assert str(info.value).startswith(message), str(info.value)
    assert isinstance(info.value, CnnError)
    assert isinstance(info.value, ValueError)


def _two_io(kind: str) -> onnx.ModelProto:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2])
    if kind == "inputs":
        g = helper.make_graph(
            [helper.make_node("Add", ["a", "b"], ["y"])],
            "g",
            [a, b],
            [helper.make_tensor_value_info("y", 1, None)],
        )
    elif kind == "outputs":
        g = helper.make_graph(
            [helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Relu", ["a"], ["z"])],
            "g",
            [a],
            [
                helper.make_tensor_value_info("y", 1, None),
                helper.make_tensor_value_info("z", 1, None),
            ],
        )
    else:
        i = helper.make_tensor_value_info("a", TensorProto.INT64, [1, 2])
        g = helper.make_graph(
            [helper.make_node("Identity", ["a"], ["y"])],
            "g",
            [i],
            [helper.make_tensor_value_info("y", 7, None)],
        )
    return with_output_shape(
        helper.make_model_gen_version(g, opset_imports=[helper.make_opsetid("", 17)])
    )


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("inputs", 'the model must have exactly one input, it has 2 ("a", "b")'),
        ("outputs", 'the model must have exactly one output, it has 2 ("y", "z")'),
        ("int-input", 'input "a" is INT64; only FLOAT and DOUBLE tensors are supported'),
    ],
)
def test_refused_inputs_and_outputs(kind: str, message: str) -> None:
    with pytest.raises(
        OnnxImportError, match="^" + message.replace("(", r"\(").replace(")", r"\)")
    ):
        import_model(_two_io(kind))


def test_custom_domain_refused() -> None:
    g = helper.make_graph(
        [helper.make_node("Gelu", ["input"], ["y"], name="g", domain="com.example")],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    model = with_output_shape(helper.make_model(g, opset_imports=opsets, ir_version=8))
    with pytest.raises(
        OnnxImportError,
        match=r'^node "g" \(Gelu\): operator Gelu of domain com\.example is not supported',
    ):
        import_model(model)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\xffnot a protobuf\xff", "cannot be read as an ONNX model"),
        (None, "no such file"),
    ],
    ids=["garbage", "missing"],
)
def test_unreadable_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(OnnxImportError, match=message):
        load_onnx(path)


def test_external_data_from_the_folder_only(tmp_path: Path) -> None:
    from onnx.external_data_helper import convert_model_to_external_data

    model = model_of(Case([node("Add", ["input", "c"])], (2, 300), {"c": np.ones(300)}))
    convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    (tmp_path / "m").mkdir()
    onnx.save(model, tmp_path / "m" / "model.onnx")
    assert load_onnx(tmp_path / "m" / "model.onnx").params["c"].shape == (300,)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    (tmp_path / "outside.bin").write_bytes(np.ones(300, np.float32).tobytes())
    onnx.save(model, tmp_path / "m" / "model.onnx")
    with pytest.raises(OnnxImportError, match="points outside the directory"):
        load_onnx(tmp_path / "m" / "model.onnx")


def test_checker_runs_first() -> None:
    model = model_of(Case([node("Relu", ["missing"])], (1, 2)))
    with pytest.raises(OnnxImportError, match=r"^onnx\.checker: "):
        import_model(model)


def test_cnncore_import_does_not_load_onnx() -> None:
    import subprocess
    import sys

    code = (
        "import sys, cnncore; assert 'onnx' not in sys.modules, 'onnx imported'; cnncore.load_onnx"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
