"""Every computing endpoint, over every input form and response encoding, against cnncore."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import cnncore
from tests.helpers import assert_close

from .wire import FORMS, client, from_wire, to_wire

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    path: str
    shapes: dict[str, tuple[int, ...]]
    params: dict[str, Any]
    expected: Callable[[Arrays, dict[str, Any]], Arrays]


def _conv_fwd(a: Arrays, p: dict[str, Any]) -> Arrays:
    return {"out": cnncore.conv2d_forward(a["x"], a["w"], a.get("b"), **p)[0]}


def _conv_bwd(a: Arrays, p: dict[str, Any]) -> Arrays:
    _, cache = cnncore.conv2d_forward(a["x"], a["w"], a.get("b"), **p)
    return dict(zip(("dx", "dw", "db"), cnncore.conv2d_backward(a["dout"], cache), strict=True))


def _pool_fwd(a: Arrays, p: dict[str, Any]) -> Arrays:
    return {"out": cnncore.pool2d_forward(a["x"], **p)[0]}


def _pool_bwd(a: Arrays, p: dict[str, Any]) -> Arrays:
    _, cache = cnncore.pool2d_forward(a["x"], **p)
    return {"dx": cnncore.pool2d_backward(a["dout"], cache)}


def _linear_fwd(a: Arrays, p: dict[str, Any]) -> Arrays:
    return {"out": cnncore.linear_forward(a["x"], a["w"], a.get("b"))[0]}


def _linear_bwd(a: Arrays, p: dict[str, Any]) -> Arrays:
    _, cache = cnncore.linear_forward(a["x"], a["w"], a.get("b"))
    return dict(zip(("dx", "dw", "db"), cnncore.linear_backward(a["dout"], cache), strict=True))


CONV = {"x": (2, 3, 7, 7), "w": (4, 3, 3, 3), "b": (4,)}
POOL_MAX = {"kernel_size": 3, "stride": 1, "mode": "max"}  # overlapping windows
POOL_AVG = {
    "kernel_size": [3, 2],
    "stride": 2,
    "padding": [1, 1],
    "mode": "avg",
    "ceil_mode": True,
    "count_include_pad": False,
}
LINEAR = {"x": (3, 2, 2, 2), "w": (8, 5), "b": (5,)}

CASES = {
    "conv2d-forward": Case("/v1/conv2d/forward", CONV, {"stride": 2, "padding": 1}, _conv_fwd),
    "conv2d-backward": Case(
        "/v1/conv2d/backward",
        {**CONV, "dout": (2, 4, 4, 4)},
        {"stride": 2, "padding": 1},
        _conv_bwd,
    ),
    "conv2d-backward-groups-no-bias": Case(
        "/v1/conv2d/backward",
        {"x": (1, 4, 5, 5), "w": (2, 2, 3, 3), "dout": (1, 2, 5, 5)},
        {"padding": "same", "groups": 2},
        _conv_bwd,
    ),
    "pool2d-max-forward": Case("/v1/pool2d/forward", {"x": (2, 3, 5, 5)}, POOL_MAX, _pool_fwd),
    "pool2d-max-backward": Case(
        "/v1/pool2d/backward", {"x": (2, 3, 5, 5), "dout": (2, 3, 3, 3)}, POOL_MAX, _pool_bwd
    ),
    "pool2d-avg-forward": Case("/v1/pool2d/forward", {"x": (1, 2, 6, 5)}, POOL_AVG, _pool_fwd),
    "pool2d-avg-backward": Case(
        "/v1/pool2d/backward", {"x": (1, 2, 6, 5), "dout": (1, 2, 4, 3)}, POOL_AVG, _pool_bwd
    ),
    "linear-forward": Case("/v1/linear/forward", LINEAR, {}, _linear_fwd),
    "linear-backward": Case("/v1/linear/backward", {**LINEAR, "dout": (3, 5)}, {}, _linear_bwd),
    "linear-backward-no-bias": Case(
        "/v1/linear/backward", {"x": (2, 3), "w": (3, 4), "dout": (2, 4)}, {}, _linear_bwd
    ),
}


@pytest.fixture(scope="module")
def api():
    return client()


def _arrays(rng: np.random.Generator, case: Case, dtype: str) -> Arrays:
    return {k: rng.standard_normal(s).astype(dtype) for k, s in case.shapes.items()}


def _body(arrays: Arrays, case: Case, form: str, encoding: str) -> dict[str, Any]:
    body = {**case.params, **{k: to_wire(v, form) for k, v in arrays.items()}}
    body["encoding"] = encoding
    if form == "list":
        body["dtype"] = next(iter(arrays.values())).dtype.name
    return body


@pytest.mark.parametrize("encoding", ["list", "b64"], ids=lambda e: f"out-{e}")
@pytest.mark.parametrize("form", FORMS, ids=lambda f: f"in-{f}")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_cnncore(api, rng, case: Case, dtype: str, form: str, encoding: str) -> None:
    arrays = _arrays(rng, case, dtype)
    response = api.post(case.path, json=_body(arrays, case, form, encoding))
    assert response.status_code == 200, response.text[:500]
    got = response.json()
    expected = case.expected(arrays, case.params)
    assert set(got) == {*expected, "meta"}
    for name, want in expected.items():
        if want is None:
            assert got[name] is None
            continue
        arr = from_wire(got[name])
        if encoding == "b64":
            assert arr.dtype == np.dtype(dtype)  # float32 stays float32
        assert arr.shape == want.shape
        assert_close(arr.astype(want.dtype), want, dtype)
    assert got["meta"]["dtype"] == dtype


@pytest.mark.parametrize(
    ("path", "body", "info"),
    [
        pytest.param(
            "/v1/conv2d/forward",
            {
                "x": np.zeros((2, 3, 8, 7)),
                "w": np.zeros((4, 3, 3, 3)),
                "b": np.zeros(4),
                "stride": 2,
            },
            cnncore.conv2d_geometry((2, 3, 8, 7), (4, 3, 3, 3), stride=2).info,
            id="conv2d",
        ),
        pytest.param(
            "/v1/pool2d/forward",
            {"x": np.zeros((1, 2, 7, 7)), "kernel_size": 2},
            cnncore.pool2d_geometry((1, 2, 7, 7), kernel_size=2).info,
            id="pool2d",
        ),
        pytest.param(
            "/v1/linear/forward",
            {"x": np.zeros((3, 2, 2)), "w": np.zeros((4, 6))},
            cnncore.linear_info((3, 2, 2), (4, 6), bias=False),
            id="linear",
        ),
    ],
)
def test_meta(api, path: str, body: dict[str, Any], info: cnncore.LayerInfo) -> None:
    wire = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in body.items()}
    meta = api.post(path, json=wire).json()["meta"]
    assert meta["compute_ms"] >= 0
    assert {k: meta[k] for k in info.as_dict()} == info.as_dict()
    assert meta["dtype"] == "float64"


def test_meta_reports_inexact_division(api) -> None:
    # (8 - 3) / 2 is not exact: the last input row and column are not used.
    body = {"x": np.zeros((1, 1, 8, 8)).tolist(), "w": np.zeros((1, 1, 3, 3)).tolist(), "stride": 2}
    meta = api.post("/v1/conv2d/forward", json=body).json()["meta"]
    assert (meta["exact"], meta["unused"], meta["output_shape"]) == (False, [1, 1], [1, 1, 3, 3])


def test_backward_meta_counts_forward_and_backward_flops(api) -> None:
    body = {"x": [[1.0, 2.0]], "w": [[1.0], [1.0]], "dout": [[1.0]]}
    meta = api.post("/v1/linear/backward", json=body).json()["meta"]
    assert meta["flops"] == 3 * cnncore.linear_info((1, 2), (2, 1), bias=False).flops


def test_request_dtype_applies_to_nested_lists_only(api, rng) -> None:
    w = rng.standard_normal((3, 2))
    body = {"x": [[1.0, 2.0, 3.0]], "w": to_wire(w, "b64"), "dtype": "float32", "encoding": "b64"}
    out = api.post("/v1/linear/forward", json=body).json()["out"]
    # x became float32, w stayed float64: the computation runs in float64.
    assert out["dtype"] == "float64"


def test_b64_response_keeps_float32(api) -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    body = {"x": to_wire(x, "b64"), "kernel_size": 2, "encoding": "b64"}
    out = from_wire(api.post("/v1/pool2d/forward", json=body).json()["out"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[[5, 7], [13, 15]]]])
