"""The peer of ``bench_wire``: KServe's Python model server serving the benchmark's conv.

Run by ``benchmarks/bench_wire.py --kserve-python PYTHON`` with a Python that has
``kserve`` installed (it is never a dependency of this project)::

    python3 -m venv /tmp/kserve-venv && /tmp/kserve-venv/bin/pip install 'kserve==0.21.*'
    PYTHONPATH=. /tmp/kserve-venv/bin/python benchmarks/kserve_peer.py \\
        --weights w.npy --http_port 8080 --grpc_port 8081

The model ``conv`` computes ``cnncore.conv2d_forward(x, w, padding=1)`` (the same code
as the service) and answers ``out`` as binary data when the request asks for it,
through KServe's own ``InferRequest`` / ``InferResponse``: what a user writing a
custom KServe predictor gets.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse

import cnncore


class ConvModel(kserve.Model):
    """``out = conv2d(x, w, padding)``; input ``x`` FP32 (N, C, H, W)."""

    def __init__(self, name: str, w: np.ndarray, padding: int) -> None:
        super().__init__(name)
        self.w = w
        self.padding = padding
        self.ready = True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None, **_: Any
    ) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        out, _cache = cnncore.conv2d_forward(x, self.w, padding=self.padding)
        output = InferOutput(name="out", shape=list(out.shape), datatype="FP32")
        output.set_data_from_numpy(out, binary_data=True)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[output],
            use_binary_outputs=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help=".npy file with w (F, C, KH, KW)")
    parser.add_argument("--padding", type=int, default=1)
    parser.add_argument("--name", default="conv")
    parser.add_argument("--http_port", type=int, required=True)
    parser.add_argument("--grpc_port", type=int, required=True)
    args, _ = parser.parse_known_args()
    model = ConvModel(args.name, np.load(args.weights), args.padding)
    server = kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=False, workers=1
    )
    server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
