"""What the HTTP path costs: round-trip time of conv2d forward, list vs b64, next to compute.

Starts the real server (``python -m service``) on a free loopback port, or uses
``--url``. For each input size it times, median of ``--repeat`` runs:

- ``compute``: :func:`cnncore.conv2d_forward` in this process;
- ``list RTT``: :class:`service.client.Client` with ``encoding="list"`` (JSON numbers);
- ``b64 RTT``: the same with ``encoding="b64"`` (base64 of the raw bytes),

and counts the bytes on the wire (request body + response body) for one call of each.

Usage::

    python -m benchmarks.bench_http                 # float32, 5 repeats
    python -m benchmarks.bench_http --dtype float64 --repeat 9
    python -m benchmarks.bench_http --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np

if __package__ in (None, ""):  # run as a script: make the packages importable from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cnncore
from service.client import Client, Encoding
from service.testing import serve

#: Input shapes (N, C, H, W) of about 1e3, 1e5 and 1e6 elements; weights (8, C, 3, 3).
SHAPES = [(1, 10, 10, 10), (1, 10, 100, 100), (4, 10, 158, 158)]
FILTERS = 8


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of ``fn`` in ms, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


class WireCounter:
    """httpx event hooks adding up request and response body bytes."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    def on_request(self, request: httpx.Request) -> None:
        self.sent += len(request.content)

    def on_response(self, response: httpx.Response) -> None:
        response.read()
        self.received += len(response.content)

    def hooks(self) -> dict[str, list[Callable[..., None]]]:
        return {"request": [self.on_request], "response": [self.on_response]}


def fmt_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError


def bench_case(base_url: str, x: np.ndarray, w: np.ndarray, repeat: int) -> list[str]:
    """One table row: compute and round-trip times, ratios, bytes on the wire."""
    compute = median_ms(lambda: cnncore.conv2d_forward(x, w, padding=1), repeat)
    rtt: dict[Encoding, float] = {}
    wire: dict[Encoding, int] = {}
    for encoding in ("list", "b64"):
        with Client(base_url, encoding=encoding, timeout=300) as api:
            call = functools.partial(api.conv2d_forward, x, w, padding=1)
            rtt[encoding] = median_ms(call, repeat)
        counter = WireCounter()
        with Client(base_url, encoding=encoding, timeout=300, event_hooks=counter.hooks()) as api:
            api.conv2d_forward(x, w, padding=1)
        wire[encoding] = counter.sent + counter.received
    return [
        f"{x.size:,}",
        "×".join(map(str, x.shape)),
        f"{compute:.2f}",
        f"{rtt['list']:.1f}",
        f"{rtt['b64']:.1f}",
        f"{rtt['list'] / compute:.1f}",
        f"{rtt['b64'] / compute:.1f}",
        f"{rtt['list'] / rtt['b64']:.1f}",
        fmt_bytes(wire["list"]),
        fmt_bytes(wire["b64"]),
    ]


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with serve(env={"CNN_LOG_LEVEL": "warning"}) as base_url:
            yield base_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--url", help="an already running service (default: start one)")
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)

    with server(args.url) as base_url:
        info = httpx.get(f"{base_url}/v1/info", timeout=10).json()
        blas = ", ".join(f"{b['name']} {b.get('version', '')}".strip() for b in info["blas"])
        print(f"service {info['version']} at {base_url}; numpy {info['numpy']}, BLAS {blas}")
        print(
            f"conv2d forward, w ({FILTERS}, C, 3, 3), padding 1, {dtype.name}; "
            f"median of {args.repeat} runs; bytes = request + response body\n"
        )
        header = [
            "x elements",
            "x shape",
            "compute ms",
            "list RTT ms",
            "b64 RTT ms",
            "list / compute",
            "b64 / compute",
            "list / b64",
            "list bytes",
            "b64 bytes",
        ]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * 2 + "---:|" * (len(header) - 2))
        for shape in SHAPES:
            x = rng.standard_normal(shape).astype(dtype)
            w = rng.standard_normal((FILTERS, shape[1], 3, 3)).astype(dtype)
            row = bench_case(base_url, x, w, args.repeat)
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
