"""Real exporter output: PyTorch's legacy (opset 17) and dynamo (opset 18) exports of six
CNNs, imported with cnncore.load_onnx and checked against torch's own outputs and
gradients (tests/fixtures/onnx, made by make_fixtures.py; torch is not needed here).

Tolerances: tests/fixtures/onnx/reference.py derives them (``K·eps·T`` per side, ``K``
the terms summed along the whole pass, ``T`` the magnitude twin of each element).
"""

from __future__ import annotations

import numpy as np
import pytest

from cnncore import load_onnx
from tests.fixtures.onnx.reference import EPS, Fixture, as_dtype, fixtures, magnitudes, sum_terms

FIXTURES = fixtures()


def within(got: np.ndarray, want: np.ndarray, bound: np.ndarray, what: str) -> None:
    err = np.abs(got.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (
        f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {list(worst)} "
        f"(got {got[worst]!r}, torch {want[worst]!r})"
    )


def test_fixture_set_is_complete() -> None:
    models = {f.model for f in FIXTURES}
    assert len(models) == 11
    for model in models:
        assert {f.exporter for f in FIXTURES if f.model == model} == {"legacy", "dynamo"}
    assert {f.opset for f in FIXTURES if f.exporter == "legacy"} == {17}
    assert {f.opset for f in FIXTURES if f.exporter == "dynamo"} == {18}
    total = sum(
        p.stat().st_size for p in FIXTURES[0].path.parent.iterdir() if p.suffix in (".onnx", ".npz")
    )
    assert total < 2 * 2**20


@pytest.mark.parametrize("fx", FIXTURES, ids=[f.id for f in FIXTURES])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_matches_torch(fx: Fixture, dtype: type) -> None:
    ref = fx.reference()
    g = load_onnx(fx.path)
    assert g.input == "x"
    assert g.output == "out"
    assert g.input_shape is not None
    assert g.input_shape[0] == -1  # exported with a free batch
    if fx.param_grads:
        assert set(g.params) == set(fx.params)  # every parameter is a torch parameter
    else:
        assert set(fx.params) <= set(g.params)
    g = as_dtype(g, dtype)
    x, dout = ref["x"], ref["out_grad"]
    out, cache = g.forward(x.astype(dtype))
    grads = g.backward(dout.astype(dtype), cache)
    assert out.dtype == dtype

    t_out, t_grads = magnitudes(g, x, dout)
    k = sum_terms(g, x.shape)
    # float64: both sides' bound. float32: ours in float32, torch's in float64. Weights the
    # exporter folded (BatchNorm into Conv) were rounded to float32 after a few operations
    # (relative error <= 4·eps32 each): to first order that adds at most 4·eps32·T per
    # folded layer, far less than the float32 term K·eps32·T, which then covers it.
    eps64, eps32 = EPS[np.dtype(np.float64)], EPS[np.dtype(np.float32)]
    # Constants the exporter rounded to float32 (fx.float32_constants) are within eps32 of
    # torch's, relative: to first order K·eps32·T covers them as it covers folded weights.
    exact = dtype == np.float64 and fx.param_grads and not fx.float32_constants
    scale = 2 * k * eps64 if exact else k * (eps32 + eps64)
    within(out, ref["out"], scale * t_out, "out")
    within(grads["x"], ref["grad/x"], scale * t_grads["x"], "grad/x")
    if fx.param_grads:
        for init, torch_name in fx.params.items():
            within(grads[init], ref[f"grad/{torch_name}"], scale * t_grads[init], f"grad/{init}")
