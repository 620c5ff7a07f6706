"""POST /v1/check: right answers pass, a planted error is found at its index, a wrong
shape is a failed check (not a 422), tolerances by dtype, and every error path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import cnncore
from service.client import Client

from .wire import assert_problem, client, to_wire


@pytest.fixture(scope="module")
def api() -> TestClient:
    return client()


@dataclass(frozen=True)
class Op:
    """One op's request shapes and hyper-parameters."""

    name: str
    shapes: dict[str, tuple[int, ...]]
    params: dict[str, Any]

    def arrays(self, rng: np.random.Generator, dtype: Any = np.float64) -> dict[str, np.ndarray]:
        return {k: rng.standard_normal(s).astype(dtype) for k, s in self.shapes.items()}

    def answers(self, a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The right answers, from the single cnncore operations."""
        if self.name == "conv2d":
            out, cache = cnncore.conv2d_forward(a["x"], a["w"], a["b"], **self.params)
            dx, dw, db = cnncore.conv2d_backward(a["dout"], cache)
            return {"out": out, "dx": dx, "dw": dw, "db": db}
        if self.name == "pool2d":
            out, cache = cnncore.pool2d_forward(a["x"], **self.params)
            return {"out": out, "dx": cnncore.pool2d_backward(a["dout"], cache)}
        out, cache = cnncore.linear_forward(a["x"], a["w"], a["b"])
        dx, dw, db = cnncore.linear_backward(a["dout"], cache)
        return {"out": out, "dx": dx, "dw": dw, "db": db}

    def request(
        self, a: dict[str, np.ndarray], claimed: dict[str, np.ndarray], form: str = "b64"
    ) -> dict[str, Any]:
        return {
            "op": self.name,
            "params": self.params,
            **{k: to_wire(v, form) for k, v in a.items()},
            "claimed": {k: to_wire(v, form) for k, v in claimed.items()},
        }


CONV = Op(
    "conv2d",
    {"x": (2, 3, 7, 7), "w": (4, 3, 3, 3), "b": (4,), "dout": (2, 4, 4, 4)},
    {"stride": 2, "padding": 1},
)
POOL_MAX = Op("pool2d", {"x": (2, 3, 6, 6), "dout": (2, 3, 4, 4)}, {"kernel_size": 3, "stride": 1})
POOL_AVG = Op(
    "pool2d",
    {"x": (2, 3, 6, 6), "dout": (2, 3, 4, 4)},
    {"mode": "avg", "kernel_size": 2, "padding": 1, "stride": 2, "count_include_pad": False},
)
LINEAR = Op("linear", {"x": (3, 2, 2, 2), "w": (8, 5), "b": (5,), "dout": (3, 5)}, {})
OPS = [
    pytest.param(CONV, id="conv2d"),
    pytest.param(POOL_MAX, id="pool2d-max"),
    pytest.param(POOL_AVG, id="pool2d-avg"),
    pytest.param(LINEAR, id="linear"),
]


def check(api: TestClient, payload: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/v1/check", json=payload)
    assert r.status_code == 200, r.text[:500]
    return r.json()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("form", ["list", "b64"])
def test_right_answers_pass(api: TestClient, rng: np.random.Generator, op: Op, form: str) -> None:
    a = op.arrays(rng)
    res = check(api, op.request(a, op.answers(a), form))
    assert res["passed"] is True
    assert res["tolerance"] == 1e-7
    assert set(res["tensors"]) == set(op.answers(a))
    for verdict in res["tensors"].values():
        assert verdict["passed"] is True
        # The service runs the same cnncore call on the same inputs as op.answers: equal
        # up to summation order, far below the 1e-7 it is checked against.
        assert verdict["max_rel_error"] <= 1e-12
        assert verdict["expected_shape"] == verdict["got_shape"]


PLANTS = [
    pytest.param(CONV, "out", (1, 2, 3, 0), id="conv2d-out"),
    pytest.param(CONV, "dx", (0, 1, 6, 6), id="conv2d-dx-corner"),
    pytest.param(CONV, "dw", (3, 2, 0, 1), id="conv2d-dw"),
    pytest.param(CONV, "db", (2,), id="conv2d-db"),
    pytest.param(POOL_MAX, "dx", (1, 0, 2, 5), id="pool2d-dx"),
    pytest.param(LINEAR, "dx", (2, 1, 0, 1), id="linear-dx"),
    pytest.param(LINEAR, "dw", (7, 4), id="linear-dw"),
]


@pytest.mark.parametrize(("op", "name", "index"), PLANTS)
def test_a_planted_error_is_found_at_its_index(
    api: TestClient, rng: np.random.Generator, op: Op, name: str, index: tuple[int, ...]
) -> None:
    a = op.arrays(rng)
    claimed = op.answers(a)
    right = claimed[name][index]
    claimed[name] = claimed[name].copy()
    claimed[name][index] = right + 0.5 if right != 0 else 0.5  # a max pool's dx may be 0
    res = check(api, op.request(a, claimed))
    assert res["passed"] is False
    verdict = res["tensors"][name]
    assert verdict["passed"] is False
    assert verdict["worst_index"] == list(index)
    assert verdict["expected"] == right
    assert verdict["got"] == claimed[name][index]
    assert verdict["max_abs_error"] == pytest.approx(abs(claimed[name][index] - right))
    assert verdict["max_rel_error"] == pytest.approx(
        abs(claimed[name][index] - right) / max(1e-8, abs(right) + abs(claimed[name][index]))
    )
    others = {k: v["passed"] for k, v in res["tensors"].items() if k != name}
    assert all(others.values()), others


def test_a_claim_of_the_wrong_shape_is_a_failed_check(
    api: TestClient, rng: np.random.Generator
) -> None:
    a = CONV.arrays(rng)
    answers = CONV.answers(a)
    claimed = {"out": answers["out"][:, :, :3, :], "dw": answers["dw"]}
    res = check(api, CONV.request(a, claimed))
    assert res["passed"] is False
    out = res["tensors"]["out"]
    assert out["passed"] is False
    assert out["expected_shape"] == [2, 4, 4, 4]
    assert out["got_shape"] == [2, 4, 3, 4]
    assert "expected shape (2, 4, 4, 4)" in out["message"]
    assert out["worst_index"] is None
    assert res["tensors"]["dw"]["passed"] is True


def test_float32_gets_the_float32_tolerance(api: TestClient, rng: np.random.Generator) -> None:
    a = CONV.arrays(rng, np.float32)
    claimed = CONV.answers({k: v.astype(np.float64) for k, v in a.items()})  # float64 maths
    claimed = {k: v.astype(np.float32) for k, v in claimed.items()}
    res = check(api, CONV.request(a, claimed))
    assert res["tolerance"] == 1e-3
    assert res["passed"] is True
    # float32 rounding (about 1e-7 relative) fails a tolerance the request sets tighter.
    strict = check(api, {**CONV.request(a, claimed), "tolerance": 1e-12})
    assert strict["tolerance"] == 1e-12
    assert strict["passed"] is False


def test_nested_lists_are_float32_when_the_request_says_so(
    api: TestClient, rng: np.random.Generator
) -> None:
    a = LINEAR.arrays(rng, np.float32)
    res = check(api, {**LINEAR.request(a, LINEAR.answers(a), "list"), "dtype": "float32"})
    assert res["tolerance"] == 1e-3
    assert res["passed"] is True


def test_tolerance_is_settable(api: TestClient, rng: np.random.Generator) -> None:
    a = LINEAR.arrays(rng)
    claimed = {"out": LINEAR.answers(a)["out"] * (1 + 1e-4)}
    assert check(api, LINEAR.request(a, claimed))["passed"] is False
    loose = check(api, {**LINEAR.request(a, claimed), "tolerance": 1e-3})
    assert loose["passed"] is True
    assert loose["tolerance"] == 1e-3


def test_the_documented_example_finds_its_planted_error(api: TestClient) -> None:
    from service.routes.check import EXAMPLE

    res = check(api, EXAMPLE)
    assert res["passed"] is False
    assert res["tensors"]["dw"]["worst_index"] == [0, 0, 1, 1]
    assert (res["tensors"]["dw"]["expected"], res["tensors"]["dw"]["got"]) == (77.0, 76.0)
    assert res["tensors"]["out"]["passed"]
    assert res["tensors"]["db"]["passed"]


# --------------------------------------------------------------------------- errors


def _conv_request(rng: np.random.Generator, **changes: Any) -> dict[str, Any]:
    a = CONV.arrays(rng)
    payload = CONV.request(a, {"out": CONV.answers(a)["out"]}, "list")
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


ERRORS = [
    pytest.param({"claimed": {}}, ["claimed"], "at least one", id="nothing-claimed"),
    pytest.param(
        {"claimed": {"dx": [[0.0]]}, "dout": ...}, ["dout"], "dout is needed", id="no-dout"
    ),
    pytest.param(
        {"claimed": {"dx": [[0.0]]}, "dout": [[0.0]]}, ["dout"], "(2, 4, 4, 4)", id="dout-shape"
    ),
    pytest.param({"claimed": {"db": [0.0]}, "b": None}, ["claimed", "db"], "b is null", id="db"),
    pytest.param({"claimed": {"out": [1.0], "extra": [1.0]}}, ["claimed", "extra"], "", id="key"),
    pytest.param({"w": ...}, ["w"], "conv2d needs w", id="no-w"),
    pytest.param(
        {"w": np.zeros((4, 2, 3, 3)).tolist()},
        ["w"],
        "conv2d expects w of shape (4, 3, 3, 3), got (4, 2, 3, 3)",
        id="w-channels",
    ),
    pytest.param({"b": [0.0] * 3}, ["b"], "expects b of shape (4,)", id="b-shape"),
    pytest.param({"params": {"stride": True}}, ["params", "stride"], "", id="bool-stride"),
    pytest.param({"params": {"strides": 2}}, ["params", "strides"], "Extra", id="typo"),
    pytest.param(
        {"params": {"groups": 2}}, ["params", "groups"], "groups=2 does not divide", id="groups"
    ),
    pytest.param(
        {"params": {"padding": "same", "stride": 2}},
        ["params", "padding"],
        "stride 1",
        id="same-stride",
    ),
    pytest.param({"op": "conv3d"}, ["op"], "", id="unknown-op"),
    pytest.param({"op": "pool2d", "params": {}}, ["params", "kernel_size"], "", id="pool-k"),
    pytest.param(
        {"op": "pool2d", "params": {"kernel_size": 2}}, ["w"], "pool2d has no", id="pool-w"
    ),
    pytest.param(
        {"op": "linear", "params": {"stride": 1}}, ["params", "stride"], "Extra", id="lin-params"
    ),
    pytest.param(
        {"params": None}, ["params"], "object of conv2d's hyper-parameters", id="params-null"
    ),
    pytest.param({"params": [1]}, ["params"], "object of conv2d's", id="params-list"),
    pytest.param({"tolerance": True}, ["tolerance"], "", id="bool-tolerance"),
    pytest.param({"tolerance": 0}, ["tolerance"], "", id="zero-tolerance"),
    pytest.param({"x": [[1.0, 2.0]]}, ["x"], "4-D", id="x-2d"),
]


@pytest.mark.parametrize(("changes", "loc", "fragment"), ERRORS)
def test_errors_point_at_the_field(
    api: TestClient, rng: np.random.Generator, changes: dict, loc: list, fragment: str
) -> None:
    problem = assert_problem(api.post("/v1/check", json=_conv_request(rng, **changes)), 422, loc)
    msgs = [e["msg"] for e in problem["errors"] if e["loc"] == loc]
    assert any(fragment in m for m in msgs), msgs


def test_pool_gradients_of_parameters_are_refused(
    api: TestClient, rng: np.random.Generator
) -> None:
    a = POOL_MAX.arrays(rng)
    payload = POOL_MAX.request(a, {"dw": np.zeros((1,))})
    assert_problem(api.post("/v1/check", json=payload), 422, ["claimed", "dw"])


def test_the_flop_budget_applies(rng: np.random.Generator) -> None:
    payload = _conv_request(rng)
    problem = assert_problem(client(max_flops=100).post("/v1/check", json=payload), 413)
    assert "CNN_MAX_FLOPS" in problem["detail"]


# --------------------------------------------------------------------------- client


def test_client_check(api: TestClient, rng: np.random.Generator) -> None:
    a = CONV.arrays(rng, np.float32)
    answers = CONV.answers(a)
    answers["dx"][0, 0, 0, 0] += 1
    res = Client(http=api).check(
        "conv2d",
        a["x"],
        {"dx": answers["dx"], "db": answers["db"]},
        w=a["w"],
        b=a["b"],
        dout=a["dout"],
        params=CONV.params,
    )
    assert res["tolerance"] == 1e-3
    assert res["passed"] is False
    assert res["tensors"]["dx"]["worst_index"] == [0, 0, 0, 0]
    assert res["tensors"]["db"]["passed"] is True
