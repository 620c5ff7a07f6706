"""The committed gRPC modules are what ``python -m service.grpc.generate`` writes from
``service/grpc/inference.proto``, and the interface keeps the protocol's names and field
numbers (what tritonclient and KServe's clients send)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.grpc import inference_pb2 as pb

pytest.importorskip("grpc_tools")

HERE = Path(__file__).resolve().parents[2] / "service" / "grpc"


def test_generated_modules_are_current() -> None:
    from service.grpc.generate import generated

    for name, text in generated().items():
        assert (HERE / name).read_text() == text, f"{name}: run python -m service.grpc.generate"


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        ("ModelInferRequest", {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
                               "inputs": 5, "outputs": 6, "raw_input_contents": 7}),
        ("ModelInferResponse", {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
                                "outputs": 5, "raw_output_contents": 6}),
        ("InferTensorContents", {"bool_contents": 1, "int_contents": 2, "int64_contents": 3,
                                 "uint_contents": 4, "uint64_contents": 5, "fp32_contents": 6,
                                 "fp64_contents": 7, "bytes_contents": 8}),
        ("RepositoryModelLoadRequest", {"repository_name": 1, "model_name": 2, "parameters": 3}),
        ("RepositoryIndexRequest", {"repository_name": 1, "ready": 2}),
    ],
)  # fmt: skip
def test_field_numbers_are_the_protocols(message: str, fields: dict[str, int]) -> None:
    descriptor = pb.DESCRIPTOR.message_types_by_name[message]
    assert {f.name: f.number for f in descriptor.fields} == fields


def test_service_name_and_methods() -> None:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    ]
