"""cnncore.network: a small CNN against central differences and the single ops by hand."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import cnncore
from cnncore import (
    Conv2d,
    Linear,
    MeanSquaredError,
    SoftmaxCrossEntropy,
    network_backward,
    network_forward,
    network_info,
    network_loss,
)
from cnncore.gradcheck import assert_gradient
from cnncore.network_shapes import FlattenSpec, LayerError, Pool2dSpec, ReluSpec
from tests.helpers import assert_close


def small_cnn(rng: np.random.Generator, dtype: Any = np.float64) -> tuple[np.ndarray, list]:
    """x (2, 3, 6, 6) -> conv 4×3×3×3 pad 1 -> relu -> max pool 2 -> flatten -> linear 36×5."""

    def t(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(dtype)

    x = t(2, 3, 6, 6, scale=1.0)
    layers = [
        Conv2d(t(4, 3, 3, 3), t(4), padding=1),
        ReluSpec(),
        Pool2dSpec(kernel_size=2),
        FlattenSpec(),
        Linear(t(36, 5), t(5)),
    ]
    return x, layers


Y = np.array([1, 4])


def loss_of(x: np.ndarray, layers: list, loss: Any) -> float:
    return network_loss(network_forward(x, layers)[0], loss)[0]


def by_hand(x: np.ndarray, layers: list, y: np.ndarray) -> tuple[float, np.ndarray, list]:
    """The same network composed from the single operations."""
    conv, _, pool, _, lin = layers
    a1, c1 = cnncore.conv2d_forward(x, conv.w, conv.b, padding=1)
    a2, c2 = cnncore.relu_forward(a1)
    a3, c3 = cnncore.pool2d_forward(a2, kernel_size=pool.kernel_size)
    a4, c4 = cnncore.linear_forward(a3, lin.w, lin.b)  # flattens implicitly
    loss, d4 = cnncore.softmax_cross_entropy(a4, y)
    d3, dw4, db4 = cnncore.linear_backward(d4, c4)
    d2 = cnncore.pool2d_backward(d3, c3)
    d1 = cnncore.relu_backward(d2, c2)
    dx, dw1, db1 = cnncore.conv2d_backward(d1, c1)
    grads = [{"dw": dw1, "db": db1}, {}, {}, {}, {"dw": dw4, "db": db4}]
    return loss, dx, grads


# --------------------------------------------------------------------------- values


def test_forward_and_backward_match_the_single_ops_composed_by_hand(
    rng: np.random.Generator,
) -> None:
    x, layers = small_cnn(rng)
    out, cache = network_forward(x, layers)
    loss, dout = network_loss(out, SoftmaxCrossEntropy(Y))
    dx, grads = network_backward(dout, cache)
    loss_ref, dx_ref, grads_ref = by_hand(x, layers, Y)
    assert loss == pytest.approx(
        loss_ref, rel=1e-12
    )  # a mean of positive terms (no cancellation): a few eps relative; 1e-12 = 4500 eps
    assert_close(dx, dx_ref)
    assert [sorted(g) for g in grads] == [sorted(g) for g in grads_ref]
    for g, g_ref in zip(grads, grads_ref, strict=True):
        for name in g:
            assert_close(g[name], g_ref[name])


# (layer index, attribute) of every parameter of small_cnn, plus the input.
PARAMS = [(None, "x"), (0, "w"), (0, "b"), (4, "w"), (4, "b")]


@pytest.mark.parametrize(
    ("index", "name"), PARAMS, ids=[f"{'x' if i is None else f'layer{i}.{n}'}" for i, n in PARAMS]
)
@pytest.mark.parametrize(
    "make_loss",
    [
        pytest.param(lambda out_shape, rng: SoftmaxCrossEntropy(Y), id="softmax_ce"),
        pytest.param(
            lambda out_shape, rng: MeanSquaredError(rng.standard_normal(out_shape)), id="mse"
        ),
    ],
)
def test_every_gradient_matches_central_differences(
    rng: np.random.Generator, index: int | None, name: str, make_loss: Callable
) -> None:
    x, layers = small_cnn(rng)
    loss = make_loss((2, 5), rng)
    out, cache = network_forward(x, layers)
    _, dout = network_loss(out, loss)
    dx, grads = network_backward(dout, cache)
    analytic = dx if index is None else grads[index]["d" + name]
    target = x if index is None else getattr(layers[index], name)
    assert_gradient(lambda: loss_of(x, layers, loss), target, analytic)


def test_mse_is_the_mean_over_all_elements(rng: np.random.Generator) -> None:
    x, layers = small_cnn(rng)
    target = rng.standard_normal((2, 5))
    out, _ = network_forward(x, layers)
    loss, dout = network_loss(out, MeanSquaredError(target))
    assert loss == pytest.approx(
        np.mean((out - target) ** 2), rel=1e-12
    )  # a mean of positive terms (no cancellation): a few eps relative; 1e-12 = 4500 eps
    assert_close(dout, 2 * (out - target) / out.size)


def test_given_dout_is_backpropagated(rng: np.random.Generator) -> None:
    x, layers = small_cnn(rng)
    out, cache = network_forward(x, layers)
    dout = rng.standard_normal(out.shape)
    dx, _ = network_backward(dout, cache)
    assert_gradient(lambda: network_forward(x, layers)[0], x, dx, dout)


def test_a_linear_only_network_on_2d_input(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 4))
    layers = [Linear(rng.standard_normal((4, 6))), ReluSpec(), Linear(rng.standard_normal((6, 2)))]
    out, cache = network_forward(x, layers)
    assert_close(out, np.maximum(x @ layers[0].w, 0) @ layers[2].w)
    dx, grads = network_backward(np.ones_like(out), cache)
    assert grads[0]["db"] is None
    assert_gradient(lambda: network_forward(x, layers)[0], x, dx)


def test_activations_and_info_agree(rng: np.random.Generator) -> None:
    x, layers = small_cnn(rng)
    infos = network_info(x.shape, layers)
    _, cache = network_forward(x, layers)
    assert [a.shape for a in cache.activations] == [i.output_shape for i in infos]
    assert [i.input_shape for i in infos[1:]] == [i.output_shape for i in infos[:-1]]
    conv, lin = layers[0], layers[4]
    n_params = conv.w.size + conv.b.size + lin.w.size + lin.b.size
    assert sum(i.param_count for i in infos) == n_params


def test_float32_stays_float32(rng: np.random.Generator) -> None:
    x, layers = small_cnn(rng, np.float32)
    out, cache = network_forward(x, layers)
    dx, grads = network_backward(np.ones_like(out), cache)
    assert {out.dtype, dx.dtype, grads[0]["dw"].dtype, grads[4]["db"].dtype} == {
        np.dtype(np.float32)
    }


# --------------------------------------------------------------------------- errors


def _replace(index: int, **changes: Any) -> Callable[[list], list]:
    def edit(layers: list) -> list:
        layers = list(layers)
        layers[index] = type(layers[index])(**{**layers[index].__dict__, **changes})
        return layers

    return edit


LAYER_ERRORS = [
    pytest.param(
        _replace(4, w=np.zeros((37, 5))),
        4,
        "w",
        "layer 4 (linear) expects w of shape (36, 5), got (37, 5): layer 3 (flatten) gives "
        "shape (2, 36), 36 features per sample, but w has 37 rows",
        id="linear-w-rows",
    ),
    pytest.param(
        lambda layers: [*layers[:3], Linear(np.zeros((35, 5)))],
        3,
        "w",
        "layer 2 (pool2d) gives shape (2, 4, 3, 3), 4×3×3 = 36 features per sample, "
        "but w has 35 rows",
        id="linear-after-pool",
    ),
    pytest.param(
        _replace(0, w=np.zeros((4, 2, 3, 3))),
        0,
        "w",
        "3 channels / groups=1 = 3 input channels per filter, but w has 2",
        id="conv-w-channels",
    ),
    pytest.param(
        _replace(0, b=np.zeros(3)), 0, "b", "expects b of shape (4,) (one per filter)", id="conv-b"
    ),
    pytest.param(
        _replace(4, b=np.zeros(4)), 4, "b", "expects b of shape (5,) (one per output)", id="lin-b"
    ),
    pytest.param(
        _replace(0, w=np.zeros((4, 3, 3))), 0, "w", "w must be a non-empty 4-D array", id="w-3d"
    ),
    pytest.param(
        _replace(0, groups=3), 0, "w", "w has 4 filters, which groups=3 does not divide", id="F%g"
    ),
    pytest.param(
        _replace(0, w=np.zeros((4, 1, 3, 3)), groups=2),
        0,
        "groups",
        "the input has 3 channels, which groups=2 does not divide",
        id="C%g",
    ),
    pytest.param(
        _replace(2, kernel_size=7), 2, None, "layer 2 (pool2d): output height would be 0", id="pool"
    ),
    pytest.param(
        lambda layers: [*layers[:4], layers[0]],
        4,
        None,
        "layer 4 (conv2d) needs a 4-D input (N, C, H, W), got shape (2, 36)",
        id="conv-after-flatten",
    ),
    pytest.param(_replace(0, stride=0), 0, "stride", "stride must be >= 1", id="stride-0"),
]


@pytest.mark.parametrize(("edit", "index", "arg", "fragment"), LAYER_ERRORS)
def test_layer_errors_name_the_layer_and_the_field(
    rng: np.random.Generator, edit: Callable, index: int, arg: str | None, fragment: str
) -> None:
    x, layers = small_cnn(rng)
    layers = edit(layers)
    with pytest.raises(LayerError) as info:
        network_forward(x, layers)
    assert (info.value.index, info.value.arg) == (index, arg)
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"layer {index} (")


def test_the_input_shape_is_checked(rng: np.random.Generator) -> None:
    _, layers = small_cnn(rng)
    with pytest.raises(cnncore.ShapeError, match="x must have at least 2 dimensions") as info:
        network_info((5,), layers)
    assert info.value.arg == "x"


LOSS_ERRORS = [
    pytest.param(SoftmaxCrossEntropy(np.array([1, 5])), "y", "label 5", id="label"),
    pytest.param(SoftmaxCrossEntropy(np.array([1])), "y", "shape (2,)", id="y-shape"),
    pytest.param(SoftmaxCrossEntropy(np.array([0.5, 1.0])), "y", "integer", id="y-float"),
    pytest.param(MeanSquaredError(np.zeros((2, 4))), "target", "(2, 4)", id="target-shape"),
]


@pytest.mark.parametrize(("loss", "arg", "fragment"), LOSS_ERRORS)
def test_loss_errors(rng: np.random.Generator, loss: Any, arg: str, fragment: str) -> None:
    x, layers = small_cnn(rng)
    out, _ = network_forward(x, layers)
    with pytest.raises(cnncore.CnnError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        network_loss(out, loss)
    with pytest.raises(cnncore.CnnError) as info:
        cnncore.network.check_loss(loss, out.shape)
    assert info.value.arg == arg


def test_cross_entropy_needs_a_2d_output(rng: np.random.Generator) -> None:
    x, layers = small_cnn(rng)
    infos = network_info(x.shape, layers[:3])
    with pytest.raises(cnncore.ShapeError, match=r"2-D output .* shape \(2, 4, 3, 3\)"):
        cnncore.network.check_loss(SoftmaxCrossEntropy(Y), infos[-1].output_shape)


def test_dout_of_the_wrong_shape(rng: np.random.Generator) -> None:
    x, layers = small_cnn(rng)
    _, cache = network_forward(x, layers)
    with pytest.raises(cnncore.ShapeError, match=r"dout has shape \(2, 4\)") as info:
        network_backward(np.zeros((2, 4)), cache)
    assert info.value.arg == "dout"


def test_param_and_flop_counts(rng: np.random.Generator) -> None:
    x, layers = small_cnn(rng)
    infos = network_info(x.shape, layers)
    assert infos[0].param_count == 4 * 3 * 3 * 3 + 4
    assert infos[4].flops == 2 * 2 * 36 * 5
    assert math.prod(infos[-1].output_shape) == 10


def test_large_batches_split_onto_threads_like_any_graph(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # network_forward runs through Graph.forward, so the batch split applies. A part of
    # one sample computes its conv as a per-sample GEMM where the whole batch was one
    # GEMM: the same products summed in another order, at most K = 36 of them per sum
    # with magnitudes summing below ~20, within assert_close's small-sum allowance.
    from tests.cnncore.test_graph_parts import split_batches

    close = assert_close

    x, layers = small_cnn(rng)
    out, cache = network_forward(x, layers)
    dout = rng.standard_normal(out.shape)
    dx, grads = network_backward(dout, cache)
    assert cache.graph_cache.parts is None
    split_batches(monkeypatch)
    split_out, split_cache = network_forward(x, layers)
    assert split_cache.graph_cache.parts is not None
    close(split_out, out)
    for got, want in zip(split_cache.activations, cache.activations, strict=True):
        close(got, want)
    split_dx, split_grads = network_backward(dout, split_cache)
    close(split_dx, dx)
    for got_grads, want_grads in zip(split_grads, grads, strict=True):
        assert got_grads.keys() == want_grads.keys()
        for key, want_grad in want_grads.items():
            got_grad = got_grads[key]
            assert (got_grad is None) == (want_grad is None)
            if got_grad is not None and want_grad is not None:
                close(got_grad, want_grad)
