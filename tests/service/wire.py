"""Test helpers for the HTTP API: an app per settings, tensors to and from the wire."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

FORMS = ("list", "data", "b64")


def client(**limits: Any) -> TestClient:
    """A TestClient over a fresh app whose settings are the defaults plus ``limits``."""
    return TestClient(create_app(Settings(**limits)), raise_server_exceptions=False)


def to_wire(arr: np.ndarray, form: str) -> Any:
    """``arr`` in one of the three wire forms (``list`` loses the dtype: the request sets it)."""
    if form == "list":
        return arr.tolist()
    if form == "data":
        return {"shape": list(arr.shape), "dtype": arr.dtype.name, "data": arr.ravel().tolist()}
    le = arr.astype(arr.dtype.newbyteorder("<"))
    return {
        "shape": list(arr.shape),
        "dtype": arr.dtype.name,
        "b64": base64.b64encode(le.tobytes()).decode(),
    }


def from_wire(value: Any) -> np.ndarray:
    """A response tensor (nested list or b64 object) as an array; b64 keeps its dtype."""
    if isinstance(value, dict):
        raw = base64.b64decode(value["b64"])
        return np.frombuffer(raw, dtype=np.dtype(value["dtype"]).newbyteorder("<")).reshape(
            value["shape"]
        )
    return np.asarray(value, dtype=np.float64)


def assert_problem(response: Any, status: int, loc: list | None = None) -> dict:
    """``response`` is a problem details document with ``status``; ``loc`` among its errors."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail", "errors"}
    assert body["status"] == status
    assert all(set(e) == {"loc", "msg"} for e in body["errors"])
    if loc is not None:
        assert loc in [e["loc"] for e in body["errors"]], body["errors"]
    return body


def in_flight(base_url: str) -> float:
    """The ``cnn_computations_in_flight`` gauge of the server at ``base_url``."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    found = re.search(r"^cnn_computations_in_flight (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0
