"""OpenAPI descriptions of the V2 routes: the inference request's JSON, the binary
alternative, error bodies with ``error``, and the repository routes' optional bodies.
Documentation only: requests are framed by :mod:`service.wire.v2` and checked by
:mod:`service.dataplane`, never by these schemas."""

from __future__ import annotations

from typing import Any

from ..wire.v2 import HEADER_LENGTH

#: An error on /v2: problem details with the protocol's ``error`` member.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}
TENSOR_PARAMETERS = {
    "type": "object",
    "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
}
#: The JSON part of an inference request (the protocol's $inference_request).
INFERENCE_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "examples": [
        {
            "inputs": [
                {"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64},
                {"name": "labels", "shape": [1], "datatype": "INT64", "data": [3]},
            ],
            "outputs": [{"name": "out"}, {"name": "loss"}, {"name": "grad/x"}],
        }
    ],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_output": {"type": "boolean"}},
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string", "examples": ["x", "labels", "target", "out_grad"]},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": ["FP32", "FP64", "INT64", "INT32"]},
                    "parameters": TENSOR_PARAMETERS,
                    "data": {"type": "array"},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "examples": ["out", "loss", "grad/x", "grad/*"]},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data": {"type": "boolean"}},
                    },
                },
            },
        },
    },
}

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": text,
        "content": {"application/problem+json": {"schema": ERROR_SCHEMA}},
    }
    for status, text in {
        400: "The request does not fit the protocol or the model; `error` says why.",
        404: "Unknown model or version.",
        413: "Body, tensor, compute or memory budget too large.",
        503: "Overloaded; retry after `Retry-After` seconds.",
    }.items()
}
#: The load and unload routes' errors: also 403 while model control is not `explicit`.
CONTROL_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    403: {
        "description": "Model control is disabled (`--model-control-mode none`).",
        "content": {"application/problem+json": {"schema": ERROR_SCHEMA}},
    },
}


INFER_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": INFERENCE_REQUEST_SCHEMA},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
            },
        },
        "description": "The JSON inference request, followed by binary tensor data when "
        f"the {HEADER_LENGTH} header gives the JSON part's length.",
    }
}


INFER_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The inference response; with binary outputs, its JSON header "
        f"({HEADER_LENGTH} bytes) followed by the outputs' bytes.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def optional_body(schema: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI of an optional JSON body (the repository routes accept none at all)."""
    return {
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": {**schema, "examples": [example]}}},
        }
    }


PARAMETERS_BODY = {
    "type": "object",
    "properties": {"parameters": {"type": "object"}},
}
