"""Fuzzing from the OpenAPI document (schemathesis 4), over every route, in-process.

The app runs with small limits (``CNN_MAX_ELEMENTS`` = 64): its OpenAPI document
bounds every request tensor by them, so generated tensors are small enough to be
computed, not only refused.

Checks: ``not_a_server_error``, ``status_code_conformance``,
``content_type_conformance``, ``response_schema_conformance``,
``negative_data_rejection`` and ``positive_data_acceptance``. Two of them are told
what the contract answers:

- schema-valid data may still get a 422 or 413: JSON Schema cannot state that
  shapes fit together (x's channels and w's), that nested lists are not ragged,
  that b64 text is as long as its shape says, or that the product of the
  dimensions (elements, FLOPs, working memory) stays within the limits;
- schema-violating data may be refused with a 413 (too large) as well as a 422.

Every other answer to valid data (400, 404, 405, 408, 415, 500, 503) still fails
``positive_data_acceptance``.

The Open Inference Protocol routes (``/v2``) are fuzzed separately with fewer examples,
with model control explicit: there a request valid by the schema may not fit the model
(a 400) or name no model (a 404), so instead of ``positive_data_acceptance`` every error
must carry the protocol's ``"error"`` member (what V2 clients read); data the schema
rejects (``"outputs": null``, a list where an object is documented) gets a 4xx.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.settings import Settings

# An operation's cases took up to 340 s on a 2-core machine at load 12: the suite-wide
# 300 s timeout is a safety net against hangs, not a speed target, so it is wider here.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

#: Examples per operation and generation mode in the fuzzing phase, after the coverage
#: phase's systematic cases (boundaries, missing and mistyped fields), which cost more:
#: 30 examples instead of 15 added only 20% to the /v1 operations' time (2006 s against
#: 1670 s summed, at load 12). CNN_FUZZ_EXAMPLES=100 runs deeper than CI.
MAX_EXAMPLES = int(os.environ.get("CNN_FUZZ_EXAMPLES", "15"))

APP = create_app(Settings(max_elements=64, max_concurrency=2, queue_timeout=5.0))
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
SCHEMA.config.generation.update(
    modes=["positive", "negative"], max_examples=MAX_EXAMPLES, database="none", deterministic=True
)
SCHEMA.config.checks.positive_data_acceptance.expected_statuses = ["2xx", "413", "422"]
SCHEMA.config.checks.negative_data_rejection.expected_statuses = ["400", "413", "422"]
V1_SCHEMA = SCHEMA.exclude(path_regex="^/v2")
#: The coverage phase's systematic cases (every boundary, missing and mistyped field of
#: every operation) are built at collection and cost about 4 minutes of one core for /v1
#: alone: more than the whole suite's 5-minute budget. CI runs the examples and fuzzing
#: phases (positive and negative data, every check); CNN_FUZZ_COVERAGE=1 adds the
#: coverage phase, as before a release or after changing a schema.
V1_SCHEMA.config.phases.coverage.enabled = os.environ.get("CNN_FUZZ_COVERAGE") == "1"
#: Model control explicit, so that load and unload bodies are checked (not refused first).
V2_APP = create_app(
    Settings(max_elements=64, max_concurrency=2, queue_timeout=5.0, model_control_mode="explicit")
)
V2_SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", V2_APP).include(path_regex="^/v2")
V2_SCHEMA.config.generation.update(
    modes=["positive", "negative"], max_examples=8, database="none", deterministic=True
)
# Data the schema rejects gets a 4xx: a 400 (V2's status for a request that does not fit
# the protocol), 404 for a model name no model has, or 413 over a limit.
V2_SCHEMA.config.checks.negative_data_rejection.expected_statuses = ["400", "404", "413", "422"]
# The coverage phase enumerates variants of the inference request's free-form `data`
# arrays for minutes; the examples and fuzzing phases still run.
V2_SCHEMA.config.phases.coverage.enabled = False

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]


@V1_SCHEMA.parametrize()
# Tensors nest up to 8 levels: some draws are big, and a shared CI machine is slow at times.
@settings(suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow])
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)


@schemathesis.check
def v2_errors_carry_error(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """Every error answer on /v2 is JSON with a string ``error`` member."""
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), str), body
    return None


V2_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    v2_errors_carry_error,
]


@V2_SCHEMA.parametrize()
@settings(suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow])
def test_v2_routes_conform_and_errors_carry_error(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=V2_CHECKS)


# --------------------------------------------------------------------------- gRPC


def _grpc_requests() -> Any:
    """``ModelInferRequest``s of every shape: names, datatypes, shapes (negative and huge
    dims included), raw and typed contents of any length, parameters, outputs."""
    from hypothesis import strategies as st

    from service.grpc import inference_pb2 as pb

    datatypes = st.sampled_from(["FP32", "FP64", "INT64", "INT32", "BOOL", "BYTES", "FP16", "x"])
    dims = st.lists(
        st.one_of(st.integers(-2, 10), st.sampled_from([0, 1 << 31, 1 << 62])), max_size=5
    )
    params = st.dictionaries(
        st.sampled_from(["binary_data_output", "binary_data_size", "x"]),
        st.one_of(
            st.builds(pb.InferParameter, bool_param=st.booleans()),
            st.builds(pb.InferParameter, int64_param=st.integers(-5, 1 << 40)),
            st.builds(pb.InferParameter, string_param=st.text(max_size=5)),
        ),
        max_size=2,
    )
    contents = st.one_of(
        st.none(),
        st.builds(pb.InferTensorContents, fp32_contents=st.lists(st.floats(width=32), max_size=70)),
        st.builds(pb.InferTensorContents, fp64_contents=st.lists(st.floats(), max_size=70)),
        st.builds(pb.InferTensorContents, int64_contents=st.lists(st.integers(-9, 9), max_size=8)),
        st.builds(pb.InferTensorContents, bool_contents=st.lists(st.booleans(), max_size=8)),
    )

    @st.composite
    def tensor(draw: Any) -> Any:
        t = pb.ModelInferRequest.InferInputTensor(
            name=draw(st.sampled_from(["x", "labels", "target", "out_grad", "y", ""])),
            datatype=draw(datatypes),
            shape=draw(st.one_of(dims, st.just([1, 1, 8, 8]))),
        )
        for k, v in draw(params).items():
            t.parameters[k].CopyFrom(v)
        c = draw(contents)
        if c is not None:
            t.contents.CopyFrom(c)
        return t

    @st.composite
    def request(draw: Any) -> Any:
        req = pb.ModelInferRequest(
            model_name=draw(st.sampled_from(["digits", "nope", "", "../x"])),
            model_version=draw(st.sampled_from(["", "1", "2"])),
            id=draw(st.text(max_size=4)),
            inputs=draw(st.lists(tensor(), max_size=3)),
        )
        for name in draw(st.lists(st.sampled_from(["out", "grad/x", "grad/*", "loss", "z"]))):
            req.outputs.add(name=name)
        req.raw_input_contents.extend(draw(st.lists(st.binary(max_size=300), max_size=3)))
        return req

    @st.composite
    def valid(draw: Any) -> Any:
        """A digits request that fits, raw or typed, with or without a signal."""
        n = 1  # one 8x8 image: 64 elements, CNN_MAX_ELEMENTS here
        pixels = draw(st.lists(st.floats(0, 1, width=32), min_size=64, max_size=64))
        req = pb.ModelInferRequest(model_name="digits")
        x = req.inputs.add(name="x", datatype="FP32", shape=[n, 1, 8, 8])
        raw = draw(st.booleans())
        if raw:
            req.raw_input_contents.append(np.asarray(pixels, "<f4").tobytes())
        else:
            x.contents.fp32_contents.extend(pixels)
        if draw(st.booleans()):
            labels = req.inputs.add(name="labels", datatype="INT64", shape=[n])
            label = draw(st.integers(-1, 10))
            if raw:
                req.raw_input_contents.append(np.asarray([label] * n, "<i8").tobytes())
            else:
                labels.contents.int64_contents.extend([label] * n)
        for name in draw(
            st.lists(st.sampled_from(["out", "grad/x", "probabilities"]), unique=True)
        ):
            req.outputs.add(name=name)
        return req

    return st.one_of(request(), valid())


@pytest.fixture(scope="module")
def grpc_stub() -> Any:
    import grpc
    from fastapi.testclient import TestClient

    from service.grpc import inference_pb2_grpc as pb_grpc
    from service.testing import free_port

    port = free_port()
    settings = Settings(max_elements=64, enable_grpc=True, grpc_port=port, queue_timeout=5.0)
    with TestClient(create_app(settings)), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@settings(max_examples=4 * MAX_EXAMPLES, deadline=None, derandomize=True, database=None)
@given(request=_grpc_requests())
def test_grpc_model_infer_never_fails_internally(grpc_stub: Any, request: Any) -> None:
    """Whatever parses as a ModelInferRequest gets an answer or a status that names the
    fault, never UNKNOWN or INTERNAL; the server keeps serving."""
    import grpc

    from service.grpc import inference_pb2 as pb

    code, details = grpc.StatusCode.OK, "answered"
    try:
        grpc_stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), details
    assert details
    assert grpc_stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
