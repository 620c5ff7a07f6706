"""The OpenAPI document is valid, and every example it documents actually runs."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from .wire import client

API = client(model_control_mode="explicit")  # the load and unload examples run too
SPEC: dict[str, Any] = API.get("/openapi.json").json()


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = SPEC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _examples() -> list[Any]:
    """Every requestBody example: (path, example), with an id naming the route."""
    found = []
    for path, methods in SPEC["paths"].items():
        for method, op in methods.items():
            content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            examples = list(content.get("examples", {}).values())
            examples = [e["value"] for e in examples] + _resolve(content.get("schema", {})).get(
                "examples", []
            )
            found += [
                pytest.param(method, path, ex, id=f"{path}-{i}") for i, ex in enumerate(examples)
            ]
    return found


EXAMPLES = _examples()


def test_openapi_document_is_valid() -> None:
    validate(SPEC)


def test_every_post_route_documents_an_example() -> None:
    posts = {p for p, methods in SPEC["paths"].items() if "post" in methods}
    assert posts <= {p.values[1] for p in EXAMPLES}


def _filled(path: str, method: str) -> str:
    """``path`` with each path parameter replaced by its documented example
    (``/v2/models/{model}/infer`` -> ``/v2/models/digits/infer``)."""
    for param in SPEC["paths"][path][method].get("parameters", []):
        if param["in"] == "path":
            example = param.get("examples", param["schema"].get("examples", [None]))
            value = example[0] if isinstance(example, list) else next(iter(example.values()))
            value = value["value"] if isinstance(value, dict) else value
            path = path.replace("{" + param["name"] + "}", str(value))
    return path


@pytest.mark.parametrize(("method", "path", "example"), EXAMPLES)
def test_documented_example_runs(method: str, path: str, example: Any) -> None:
    response = API.request(method, _filled(path, method), json=example)
    assert response.status_code == 200, response.text[:500]


@pytest.mark.parametrize(
    "path", ["/v1/conv2d/forward", "/v1/pool2d/backward", "/v1/linear/forward", "/v1/shapes"]
)
def test_error_responses_are_documented_as_problem_details(path: str) -> None:
    responses = SPEC["paths"][path]["post"]["responses"]
    for status in ("400", "413", "415", "422"):
        assert "application/problem+json" in responses[status]["content"]
