"""Operators that move activations (issue 22): Transpose, Slice, Split and the dynamo
exporter's SplitToSequence/SequenceAt, on graphs built with onnx.helper. They only move
values, so onnxruntime's answers are equal bit for bit; gradients by central differences.
ShuffleNetV2's channel shuffle and ConvNeXt's NHWC stretches are real-exporter fixtures
(tests/fixtures/onnx)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper, numpy_helper

from cnncore.gradcheck import assert_gradient
from cnncore.onnx import OnnxImportError, import_model

from .test_onnx import ort_forward
from .test_onnx_pointwise import model, node

SHAPE = (2, 6, 4, 5)


mk = helper.make_node


def ints(name: str, values: Any) -> Any:
    value = numpy_helper.from_array(np.asarray(values, np.int64))
    return mk("Constant", [], [name], name=f"c_{name}", value=value)


def sliced(starts: list[int], ends: list[int], axes: list[int]) -> list[Any]:
    return [
        ints("st", starts),
        ints("en", ends),
        ints("ax", axes),
        node("Slice", ["input", "st", "en", "ax"]),
    ]


CASES: dict[str, list[Any]] = {
    "transpose-nhwc": [node("Transpose", ["input"], "t", perm=[0, 2, 3, 1]), node("Relu", ["t"])],
    "transpose-round-trip": [
        node("Transpose", ["input"], "t", perm=[0, 2, 3, 1]),
        node("Relu", ["t"], "s"),
        node("Transpose", ["s"], perm=[0, 3, 1, 2]),
    ],
    "slice-channels": sliced([1], [4], [1]),
    "slice-negative-and-clamped": sliced([-3, 0], [1 << 40, -1], [1, 3]),
    "split-sizes-input": [
        ints("sp", [2, 4]),
        mk("Split", ["input", "sp"], ["a", "b"], name="split", axis=1),
        node("Mul", ["a", "a"], "aa"),
        node("Concat", ["b", "aa"], axis=1),
    ],
    "split-equal": [
        mk("Split", ["input"], ["a", "b", "c"], name="split", axis=1),
        node("Sub", ["a", "c"], "d"),
        node("Concat", ["d", "b"], axis=1),
    ],
    "squeeze-unsqueeze": [  # the top-left pixel as [N, C], then back to [N, C, 1, 1]
        ints("st", [0, 0]),
        ints("en", [1, 1]),
        ints("ax", [2, 3]),
        mk("Slice", ["input", "st", "en", "ax"], ["m"], name="corner"),
        ints("sq", [2, 3]),
        mk("Squeeze", ["m", "sq"], ["s"], name="squeeze"),
        ints("uq", [-1, 2]),
        mk("Unsqueeze", ["s", "uq"], ["u"], name="unsqueeze"),
        node("Mul", ["input", "u"]),
    ],
    "split-to-sequence": [
        ints("sz", 3),
        mk("SplitToSequence", ["input", "sz"], ["seq"], name="sts", axis=1),
        ints("p0", 0),
        ints("p1", -1),
        mk("SequenceAt", ["seq", "p0"], ["a"], name="at0"),
        mk("SequenceAt", ["seq", "p1"], ["b"], name="at1"),
        node("Mul", ["a", "b"]),
    ],
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_equal_to_onnxruntime_and_gradients(case: str, rng: np.random.Generator) -> None:
    m = model(CASES[case], SHAPE, {}, np.float64)
    x = rng.standard_normal(SHAPE)
    g = import_model(m)
    out, cache = g.forward(x)
    np.testing.assert_array_equal(out, ort_forward(m, x))
    dout = rng.standard_normal(out.shape)
    grads = g.backward(dout, cache)
    assert_gradient(lambda: g.forward(x)[0], x, grads["x"], dout=dout)


def test_a_transpose_keeps_the_batch_split_and_one_moving_it_is_refused() -> None:
    g = import_model(model(CASES["transpose-nhwc"], SHAPE, {}, np.float64))
    assert g.infer((64, 6, 4, 5)).output_shape == (64, 4, 5, 6)
    with pytest.raises(OnnxImportError, match="moves the batch axis"):
        import_model(
            model([node("Transpose", ["input"], perm=[1, 0, 2, 3])], SHAPE, {}, np.float64)
        )


def test_a_transposed_weight_stays_a_parameter(rng: np.random.Generator) -> None:
    """The legacy exporter's Linear on NHWC activations multiplies by Wᵀ: W keeps its
    gradient (the Transpose is a node, not folded into a constant)."""
    w = rng.standard_normal((3, 5))
    nodes = [node("Transpose", ["W"], "wt", perm=[1, 0]), node("MatMul", ["input", "wt"])]
    g = import_model(model(nodes, (2, 4, 5), {"W": w}, np.float64))
    assert set(g.params) == {"W"}
    x = rng.standard_normal((2, 4, 5))
    out, cache = g.forward(x)
    np.testing.assert_array_equal(out, x @ w.T)
    dout = rng.standard_normal(out.shape)
    grads = g.backward(dout, cache)
    assert_gradient(lambda: g.forward(x)[0], g.params["W"], grads["W"], dout=dout)


def test_slicing_the_batch_is_refused() -> None:
    nodes = [
        ints("st", [0]),
        ints("en", [1]),
        ints("ax", [0]),
        node("Slice", ["input", "st", "en", "ax"]),
    ]
    with pytest.raises(OnnxImportError, match="axes 0 has a size that depends on the batch"):
        import_model(model(nodes, SHAPE, {}, np.float64))
