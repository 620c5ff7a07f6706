"""Regenerate ``inference_pb2.py`` (with its ``.pyi``) and ``inference_pb2_grpc.py`` from
``inference.proto``.

``python -m service.grpc.generate`` (needs ``grpcio-tools``, in the dev extra). The
generated modules are committed, as KServe and MLServer do, so that the service needs
only ``grpcio`` and ``protobuf`` at run time; tests/service/test_grpc_proto.py checks
that they are what this script writes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTO = HERE / "inference.proto"
OUTPUTS = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Write the modules for ``inference.proto`` under ``out_dir`` (as ``service/grpc/...``,
    so that the service module imports the message module by its package path)."""
    from grpc_tools import protoc

    rel = PROTO.relative_to(ROOT)
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",  # the messages' types, for mypy
            f"--grpc_python_out={out_dir}",
            str(rel),
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed with status {code}")


def generated() -> dict[str, str]:
    """The text of each generated module, freshly generated."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        where = Path(tmp) / PROTO.relative_to(ROOT).parent
        return {name: (where / name).read_text() for name in OUTPUTS}


def main() -> int:
    for name, text in generated().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
