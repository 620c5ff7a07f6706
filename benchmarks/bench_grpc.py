"""The Open Inference Protocol over gRPC against its floor, with REST V2 beside it.

Rows (issue 19), each the median over ``--rounds`` interleaved rounds (tiny rows: the
median of ``TINY_CALLS`` calls a round), every call checked once against the answer
computed in this process:

- ``gRPC big``: ``ModelInfer`` of conv x (4,16,128,128) float32 ⋆ w (16,16,3,3), padding
  1, through ``tritonclient.grpc`` with raw contents; floor: the same serialized request
  through a bare ``grpc.aio`` echo (a generic handler that answers the request's bytes,
  no protobuf on its side) **plus** the same conv in this process. Target <= 1.5x.
- ``gRPC tiny``: a 1×1×8×8 infer of a digits-sized network; floor: the echo of its
  request. Target <= 2.0x.
- ``REST big``, ``REST tiny``: the same two over REST V2 with binary tensors, against
  bench_wire's ASGI echo (+ the conv): reported beside.

Usage::

    python -m benchmarks.bench_grpc             # 15 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

if __package__ in (None, ""):  # run as a script: make the packages importable from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cnncore
from benchmarks.bench_wire import (
    BIG_MODEL,
    PADDING,
    ROOT,
    TINY_MODEL,
    decode_v2,
    echo_server,
    machine_state,
    model_repository,
    v2_binary_request,
    workload,
)
from service.runtime import tune_malloc
from service.testing import free_port, serve_process

TINY_CALLS = 5
ECHO_METHOD = "/bench.Echo/Echo"


# --------------------------------------------------------------------------- the floor


def run_grpc_echo(port: int) -> None:
    """A bare grpc.aio server answering every ``/bench.Echo/Echo`` call with its request's
    bytes (no (de)serialization), with the service's message size limits."""
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", -1),
            ]
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


@contextlib.contextmanager
def grpc_echo() -> Iterator[str]:
    import grpc

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_grpc", "--serve-echo", str(port)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        address = f"127.0.0.1:{port}"
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------- rows


def median_ms(call: Callable[[], Any], calls: int = 1) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (%(default)s)")
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_echo:
        run_grpc_echo(args.serve_echo)
        return 0

    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2

    tune_malloc()
    x, w, expect, tiny_x, tiny, tiny_expect = workload()
    print(machine_state())

    def raw_request(model: str, arr: np.ndarray) -> bytes:
        """The bytes tritonclient.grpc sends for one raw FP32 input named x."""
        req = service_pb2.ModelInferRequest(model_name=model)
        req.inputs.add(name="x", datatype="FP32", shape=list(arr.shape))
        req.raw_input_contents.append(arr.tobytes())
        return req.SerializeToString()

    with contextlib.ExitStack() as stack:
        repo = model_repository(Path(stack.enter_context(tempfile.TemporaryDirectory())), w, tiny)
        grpc_port = free_port()
        env = {
            "CNN_LOG_LEVEL": "warning",
            "CNN_MODEL_REPOSITORY": str(repo),
            "CNN_ENABLE_GRPC": "true",
            "CNN_GRPC_PORT": str(grpc_port),
        }
        url, _ = stack.enter_context(serve_process(env=env))
        rest_echo, _ = stack.enter_context(echo_server())
        echo_address = stack.enter_context(grpc_echo())
        options = [("grpc.max_receive_message_length", -1)]
        triton = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}", channel_args=options)
        channel = stack.enter_context(grpc.insecure_channel(echo_address, options=options))
        echo_call = channel.unary_unary(ECHO_METHOD)
        http = stack.enter_context(httpx.Client(base_url=url, timeout=300))
        echo_http = stack.enter_context(httpx.Client(base_url=rest_echo, timeout=300))

        def grpc_infer(model: str, arr: np.ndarray) -> Callable[[], np.ndarray]:
            tensor = grpcclient.InferInput("x", list(arr.shape), "FP32")
            tensor.set_data_from_numpy(arr)
            return lambda: triton.infer(model, [tensor]).as_numpy("out")

        def rest_infer(model: str, arr: np.ndarray) -> Callable[[], np.ndarray]:
            body, headers = v2_binary_request(arr)
            path = f"/v2/models/{model}/infer"
            return lambda: decode_v2(http.post(path, content=body, headers=headers))

        big_bytes, tiny_bytes = raw_request(BIG_MODEL, x), raw_request(TINY_MODEL, tiny_x)
        big_body, big_headers = v2_binary_request(x)
        tiny_body, tiny_headers = v2_binary_request(tiny_x)
        calls: dict[str, tuple[Callable[[], Any], int]] = {
            "gRPC big": (grpc_infer(BIG_MODEL, x), 1),
            "gRPC echo big": (lambda: echo_call(big_bytes), 1),
            "compute": (lambda: cnncore.conv2d_forward(x, w, padding=PADDING), 1),
            "gRPC tiny": (grpc_infer(TINY_MODEL, tiny_x), TINY_CALLS),
            "gRPC echo tiny": (lambda: echo_call(tiny_bytes), TINY_CALLS),
            "REST big": (rest_infer(BIG_MODEL, x), 1),
            "REST echo big": (
                lambda: echo_http.post("/", content=big_body, headers=big_headers),
                1,
            ),
            "REST tiny": (rest_infer(TINY_MODEL, tiny_x), TINY_CALLS),
            "REST echo tiny": (
                lambda: echo_http.post("/", content=tiny_body, headers=tiny_headers),
                TINY_CALLS,
            ),
        }
        # Checked once, then warm.
        for name, want in (("gRPC big", expect), ("REST big", expect)):
            np.testing.assert_allclose(calls[name][0](), want, rtol=1e-5, atol=1e-4)
        for name in ("gRPC tiny", "REST tiny"):
            np.testing.assert_allclose(calls[name][0](), tiny_expect, rtol=1e-5, atol=1e-5)
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, (call, n) in calls.items():
                samples[name].append(median_ms(call, n))
        triton.close()
    med = {name: statistics.median(v) for name, v in samples.items()}
    span = {name: (min(v), max(v)) for name, v in samples.items()}
    rows = [
        ("gRPC ModelInfer, conv 4x16x128x128, raw", "gRPC big", ["gRPC echo big", "compute"], 1.5),
        ("gRPC ModelInfer, tiny 1x1x8x8", "gRPC tiny", ["gRPC echo tiny"], 2.0),
        ("REST V2 binary, the same conv", "REST big", ["REST echo big", "compute"], None),
        ("REST V2 binary, tiny", "REST tiny", ["REST echo tiny"], None),
    ]
    print(f"\nmedians of {args.rounds} rounds, ms (range over rounds)\n")
    print("| request | median ms | floor | floor ms | ratio | target |")
    print("|---|---:|---|---:|---:|---|")
    for label, name, floor_parts, target in rows:
        floor = sum(med[p] for p in floor_parts)
        ratio = med[name] / floor
        verdict = "report" if target is None else ("PASS" if ratio <= target else "FAIL")
        lo, hi = span[name]
        print(
            f"| {label} | {med[name]:.2f} ({lo:.2f}-{hi:.2f}) | {' + '.join(floor_parts)} | "
            f"{floor:.2f} | {ratio:.2f} | {'-' if target is None else f'<= {target:g}'} "
            f"{verdict} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
