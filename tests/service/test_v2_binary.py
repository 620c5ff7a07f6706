"""Malformed binary bodies: every lie about sizes is a 400 with ``"error"`` naming the
fault, never a 5xx, and the server stays ready. Raw bytes through TestClient, since no
well-behaved client sends them."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

from .v2_models import model_doc, tiny_cnn_layers, write_model

HEADER = "Inference-Header-Content-Length"
X = np.arange(36, dtype="<f4").reshape(1, 1, 6, 6)
RAW = X.tobytes()
NBYTES = len(RAW)  # 144


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root: Path = tmp_path_factory.mktemp("repo")
    layers = tiny_cnn_layers(np.random.default_rng(3))
    write_model(root, "m", model_doc(layers, [-1, 1, 6, 6], "FP32"))
    with TestClient(create_app(Settings(model_repository=root, max_elements=1000))) as c:
        yield c


def head(size: Any = NBYTES, shape: Any = None, **extra: Any) -> bytes:
    spec = {
        "name": "x",
        "shape": [1, 1, 6, 6] if shape is None else shape,
        "datatype": "FP32",
        "parameters": {"binary_data_size": size},
    }
    return orjson.dumps({"inputs": [spec], **extra})


def good() -> tuple[bytes, str]:
    h = head()
    return h + RAW, str(len(h))


# (id, body, header length, message in "error")
CASES: list[tuple[str, bytes, str | None, str]] = [
    ("size-says-more", head(len(RAW) + 4) + RAW, None, "binary_data_size is 148 bytes"),
    ("size-says-less", head(len(RAW) - 4) + RAW, None, "binary_data_size is 140 bytes"),
    ("truncated", head() + RAW[:100], None, "needs 144 bytes of binary data, but only 100 remain"),
    ("extra-bytes", head() + RAW + b"\0" * 8, None, "8 bytes after the binary inputs"),
    ("no-binary-at-all", head(), None, "only 0 remain"),
    ("header-length-0", head() + RAW, "0", "is 0, but the JSON header must be"),
    ("header-length-beyond", head() + RAW, "100000", "is 100000, but the JSON header must be"),
    ("header-length-text", head() + RAW, "abc", "must be the JSON header's length"),
    ("header-length-negative", head() + RAW, "-5", "must be the JSON header's length"),
    ("header-length-float", head() + RAW, "12.5", "must be the JSON header's length"),
    ("header-cuts-json", head() + RAW, "10", "are not valid JSON"),
    ("header-not-object", b"[1, 2]" + RAW, "6", "must be a JSON object"),
    ("header-null", b"null" + RAW, "4", "must be a JSON object"),
    ("size-negative", head(-144) + RAW, None, "non-negative integer"),
    ("size-bool", head(True) + RAW, None, "non-negative integer"),
    ("size-string", head("144") + RAW, None, "non-negative integer"),
    ("size-huge", head(2**62) + RAW, None, "binary_data_size is 4611686018427387904 bytes"),
    ("shape-negative", head(shape=[1, 1, -6, 6]) + RAW, None, "non-negative integers"),
    ("shape-lies-small", head(shape=[1, 1, 3, 6]) + RAW, None, "takes 72"),
    ("shape-huge", head(shape=[2**40, 1, 6, 6]) + RAW, None, "the limit is 1000"),
    ("shape-not-list", head(shape="1,1,6,6") + RAW, None, "shape must be a list"),
    (
        "data-and-binary",
        orjson.dumps({"inputs": [{**orjson.loads(head())["inputs"][0], "data": [0] * 36}]}) + RAW,
        None,
        "both data and binary_data_size",
    ),
    ("empty-body", b"", None, "body is empty"),
    ("not-json", b"\xff\xfe garbage", None, "not valid JSON"),
    ("inputs-not-list", b'{"inputs": {"x": 1}}', None, "inputs must be a non-empty list"),
    ("input-not-object", b'{"inputs": [5]}', None, "inputs[0] must be an object"),
]


@pytest.mark.parametrize(
    ("body", "length", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_body_is_a_400_naming_the_fault(
    client: TestClient, body: bytes, length: str | None, message: str
) -> None:
    if length is None and body.startswith(b'{"inputs":[{'):
        length = str(body.index(b"}]}") + 3)  # the real header length: the lie is elsewhere
    headers = {HEADER: length} if length is not None else {}
    r = client.post("/v2/models/m/infer", content=body, headers=headers)
    expected = 413 if "limit" in message else 400
    assert r.status_code == expected, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert message in r.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200
    body, length = good()  # and the next, honest request is answered
    assert (
        client.post("/v2/models/m/infer", content=body, headers={HEADER: length}).status_code == 200
    )


def test_two_binary_inputs_are_read_in_order(client: TestClient) -> None:
    target = np.full((1, 3), 0.5, dtype="<f4")
    specs = [
        orjson.loads(head())["inputs"][0],
        {
            "name": "target",
            "shape": [1, 3],
            "datatype": "FP32",
            "parameters": {"binary_data_size": 12},
        },
    ]
    h = orjson.dumps({"inputs": specs, "outputs": [{"name": "loss"}]})
    r = client.post(
        "/v2/models/m/infer", content=h + RAW + target.tobytes(), headers={HEADER: str(len(h))}
    )
    assert r.status_code == 200, r.text
    as_json = {
        "inputs": [
            {"name": "x", "shape": [1, 1, 6, 6], "datatype": "FP32", "data": X.ravel().tolist()},
            {"name": "target", "shape": [1, 3], "datatype": "FP32", "data": [0.5] * 3},
        ],
        "outputs": [{"name": "loss"}],
    }
    expected = client.post("/v2/models/m/infer", content=orjson.dumps(as_json))
    assert r.json()["outputs"] == expected.json()["outputs"]


def test_unaligned_binary_input_is_read_exactly(client: TestClient) -> None:
    h = head() + b" "  # JSON allows trailing space: the tensor now starts at an odd offset
    good_h = head()
    assert len(h) % 4 != len(good_h) % 4
    results = []
    for header in (h, good_h):
        r = client.post(
            "/v2/models/m/infer",
            content=header + RAW,
            headers={HEADER: str(len(header)), "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 200, r.text
        results.append(r.json()["outputs"][0]["data"])
    assert results[0] == results[1]


def test_all_json_body_with_its_length_in_the_header(client: TestClient) -> None:
    """A header length equal to the whole body (no binary part) is a JSON request."""
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 1, 6, 6], "datatype": "FP32", "data": [0.0] * 36}]}
    )
    r = client.post("/v2/models/m/infer", content=body, headers={HEADER: str(len(body))})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert HEADER.lower() not in r.headers  # no binary outputs: no framing in the answer


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_inflate_within_the_body_limit(client: TestClient, encoding: str) -> None:
    body, length = good()
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    headers = {HEADER: length, "Content-Encoding": encoding}
    r = client.post("/v2/models/m/infer", content=packed, headers=headers)
    assert r.status_code == 200, r.text
    bomb = gzip.compress(b" " * (70 << 20))  # 70 MiB of spaces in about 70 KB
    r = client.post("/v2/models/m/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert "inflates to more than" in r.json()["error"]
    r = client.post("/v2/models/m/infer", content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400
    r = client.post("/v2/models/m/infer", content=body, headers={"Content-Encoding": "br"})
    assert r.status_code == 400
