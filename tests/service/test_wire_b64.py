"""Long base64 strings decoded straight from the body (tensors.parse_json_body): the same
documents, tensors and errors as parsing the whole body with orjson."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import numpy as np
import orjson
import pytest

from service.client import loads
from service.wire.v1 import LONG_B64, parse_json_body

from .wire import assert_problem, client, from_wire

# x (1, 1, 96, 96) float32 is 36,864 bytes: 49,152 base64 characters, under LONG_B64;
# (1, 1, 128, 128) is 65,536 bytes, 87,384 characters, over it.
BIG = (1, 1, 128, 128)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def b64(arr: np.ndarray) -> str:
    return base64.b64encode(arr.astype("<f4").tobytes()).decode()


def conv_body(x: np.ndarray, *, sep: str = ": ", **extra: object) -> bytes:
    """A /v1/conv2d/forward body with x as b64, spelled with ``sep`` after each key."""
    x_json = f'{{"shape"{sep}{list(x.shape)}, "dtype"{sep}"float32", "b64"{sep}"{b64(x)}"}}'
    rest = orjson.dumps({"w": [[[[1.0]]]], "dtype": "float32", "encoding": "b64", **extra})
    return f'{{"x"{sep}{x_json}, '.encode() + rest[1:]


def post(body: bytes) -> httpx.Response:
    return client().post(
        "/v1/conv2d/forward", content=body, headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize(
    "sep", [": ", ":", " :\n\t", "\r\n:\r\n"], ids=["space", "tight", "ws", "crlf"]
)
def test_long_b64_answers_as_before(rng: np.random.Generator, sep: str) -> None:
    x = rng.standard_normal(BIG).astype(np.float32)
    assert len(b64(x)) > LONG_B64
    response = post(conv_body(x, sep=sep))
    assert response.status_code == 200, response.text[:300]
    np.testing.assert_array_equal(from_wire(response.json()["out"]), x)  # w = [[[[1]]]]: exact


def test_document_equals_orjson_apart_from_taken_strings(rng: np.random.Generator) -> None:
    x = rng.standard_normal(BIG).astype(np.float32)
    long_other = "A" * (LONG_B64 + 4)  # valid base64, but not under a "b64" key: kept
    body = conv_body(x, note=long_other)
    doc, plain = parse_json_body(body), orjson.loads(body)
    assert doc["x"]["b64"] != plain["x"]["b64"]  # taken out, resolved by decode_tensor
    doc["x"]["b64"] = plain["x"]["b64"]
    assert doc == plain


@pytest.mark.parametrize(
    ("mutate", "status", "detail"),
    [
        (lambda t: t[:-4] + "A!==", 422, "b64 is not valid base64"),  # left in, judged as before
        (lambda t: t[:999] + "\u00e9" + t[1000:], 422, "b64 is not valid base64"),
        (lambda t: t[:-4], 422, "as 87384 base64 characters"),  # taken, but its length is told
        (lambda t: t[:999] + "\x01" + t[1000:], 400, "not valid JSON"),  # control character
    ],
    ids=["bad-char", "non-ascii", "short", "control-char"],
)
def test_bad_long_b64_is_refused_as_before(
    rng: np.random.Generator, mutate: Callable[[str], str], status: int, detail: str
) -> None:
    x = rng.standard_normal(BIG).astype(np.float32)
    text = b64(x)
    body = conv_body(x).replace(text.encode(), mutate(text).encode())
    assert detail in assert_problem(post(body), status)["detail"]


def test_truncated_body_is_a_400(rng: np.random.Generator) -> None:
    body = conv_body(rng.standard_normal(BIG).astype(np.float32))
    assert_problem(post(body[:-20]), 400)


def test_placeholder_spelled_by_a_client_is_not_resolved(rng: np.random.Generator) -> None:
    # A client's "\u0000b64:0" has a backslash, so nothing is taken from that body.
    x = rng.standard_normal(BIG).astype(np.float32)
    body = conv_body(x).replace(b64(x).encode(), b"\\u0000b64:0")
    assert_problem(post(body), 422, ["x"])


def test_client_loads_gives_long_b64_as_bytes(rng: np.random.Generator) -> None:
    big = rng.standard_normal(BIG).astype(np.float32)
    small = rng.standard_normal((2, 3)).astype(np.float32)
    doc = {
        "dx": {"shape": list(BIG), "dtype": "float32", "b64": b64(big)},
        "grads": [{"dw": {"shape": [2, 3], "dtype": "float32", "b64": b64(small)}}, {}],
        "meta": {"input_shape": list(BIG)},
    }
    got = loads(orjson.dumps(doc))
    assert got["dx"]["b64"] == big.astype("<f4").tobytes()  # decoded from the body
    assert got["grads"][0]["dw"]["b64"] == b64(small)  # short: a str, as orjson gives it
    got["dx"]["b64"] = doc["dx"]["b64"]
    assert got == doc
