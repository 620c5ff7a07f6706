"""Load, overload and soak harness for the real server (loopback only, bounded in time).

Starts ``python -m service`` on a free loopback port (1 and 2 workers by default),
drives mixed concurrent traffic with an async httpx client and prints, per phase:
throughput, p50/p95/p99 latency, outcomes by status, connection errors, and the
server's resident memory (all processes) before and after.

Phases, for each worker count:

``load``      mixed traffic (conv/pool/linear forward+backward, shapes, health) at
              several concurrency levels;
``overload``  heavy convolutions at 4x the computation slots, while a probe polls
              ``/health/live``: excess work must be shed with fast 503s, and the
              probe must stay under 100 ms p95;
``soak``      (``--soak SECONDS``) mixed traffic for a long stretch; resident memory
              after warm-up must grow by less than 10%, and afterwards every
              computation slot must be free (``cnn_computations_in_flight`` = 0).

Usage::

    python -m benchmarks.bench_load                      # 1 and 2 workers, ~1 minute
    python -m benchmarks.bench_load --soak 60            # plus a 60 s soak for each
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import orjson

from service.tensors import encode_tensor
from service.testing import serve_process

try:
    import psutil  # type: ignore[import-untyped]
except ImportError:  # psutil is in the dev extra
    psutil = None


# --------------------------------------------------------------------------- server


def rss_mib(proc: subprocess.Popen[bytes]) -> float:
    """Resident memory of the server: the process and all its workers, in MiB."""
    if psutil is None:
        return float("nan")
    root = psutil.Process(proc.pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


# --------------------------------------------------------------------------- traffic


Request = tuple[str, str, bytes | None]


def make_requests(rng: np.random.Generator) -> list[Request]:
    """(method, path, JSON body) of the mixed traffic, repeated to weight them."""
    x_small = rng.standard_normal((4, 3, 16, 16))
    w_small = rng.standard_normal((8, 3, 3, 3))
    x_med = rng.standard_normal((8, 16, 32, 32))
    w_med = rng.standard_normal((16, 16, 3, 3))
    dout_med = rng.standard_normal((8, 16, 32, 32))
    lin_x = rng.standard_normal((32, 256))
    lin_w = rng.standard_normal((256, 64))
    conv_small = {"x": x_small.tolist(), "w": w_small.tolist(), "padding": 1}
    conv_back = {
        "x": encode_tensor(x_med, "b64"),
        "w": encode_tensor(w_med, "b64"),
        "dout": encode_tensor(dout_med, "b64"),
        "padding": 1,
        "encoding": "b64",
    }
    pool = {"x": encode_tensor(x_med, "b64"), "kernel_size": 2, "mode": "max", "encoding": "b64"}
    linear = {"x": lin_x.tolist(), "w": lin_w.tolist(), "b": [0.0] * 64}
    shapes = {
        "input_shape": [1, 1, 32, 32],
        "layers": [
            {"type": "conv2d", "out_channels": 6, "kernel_size": 5},
            {"type": "relu"},
            {"type": "pool2d", "kernel_size": 2},
            {"type": "flatten"},
            {"type": "linear", "out_features": 10},
        ],
    }
    posts = [
        ("/v1/conv2d/forward", conv_small),
        ("/v1/conv2d/forward", conv_small),
        ("/v1/conv2d/backward", conv_back),
        ("/v1/pool2d/forward", pool),
        ("/v1/linear/forward", linear),
        ("/v1/shapes", shapes),
    ]
    return [("POST", path, orjson.dumps(body)) for path, body in posts] + [
        ("GET", "/health/live", None)
    ]


def heavy_request(rng: np.random.Generator) -> Request:
    """A float32 convolution (about 1.3e9 FLOPs, a 2.5 MB body) that keeps a slot busy."""
    x = rng.standard_normal((4, 64, 32, 32)).astype(np.float32)
    w = rng.standard_normal((128, 64, 5, 5)).astype(np.float32)
    body = {"x": encode_tensor(x, "b64"), "w": encode_tensor(w, "b64"), "encoding": "b64"}
    return ("POST", "/v1/conv2d/forward", orjson.dumps(body))


@dataclass
class Stats:
    """Outcomes of one phase."""

    latencies: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, status: str, seconds: float) -> None:
        self.latencies.append(seconds)
        self.statuses.append(status)

    @property
    def by_status(self) -> Counter[str]:
        return Counter(self.statuses)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1e3 if self.latencies else float("nan")

    def pct_of(self, status: str, q: float) -> float:
        """Latency percentile of the requests answered ``status``, in ms."""
        picked = [t for t, s in zip(self.latencies, self.statuses, strict=True) if s == status]
        return float(np.percentile(picked, q)) * 1e3 if picked else float("nan")

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.by_status.items() if s.startswith("5") and s != "503")

    @property
    def connection_errors(self) -> int:
        return sum(n for s, n in self.by_status.items() if not s[0].isdigit())


JSON = {"content-type": "application/json"}


async def _one(
    client: httpx.AsyncClient, method: str, path: str, body: bytes | None, stats: Stats
) -> None:
    t0 = time.perf_counter()
    try:
        r = await client.request(method, path, content=body, headers=JSON if body else None)
        status = str(r.status_code)
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    stats.add(status, time.perf_counter() - t0)


async def drive(
    url: str,
    concurrency: int,
    duration: float,
    pick: Callable[[], Request],
) -> Stats:
    """``concurrency`` workers send requests back to back for ``duration`` seconds."""
    stats = Stats()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        deadline = time.monotonic() + duration

        async def worker() -> None:
            while time.monotonic() < deadline:
                await _one(client, *pick(), stats)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        stats.elapsed = time.perf_counter() - t0
    return stats


def probe(url: str, stop: threading.Event, interval: float = 0.02) -> Stats:
    """Poll ``/health/live`` every ``interval`` seconds until ``stop`` is set (in a thread,
    on its own connection, so the load generator's event loop does not delay it)."""
    stats = Stats()
    with httpx.Client(base_url=url, timeout=10) as client:
        t0 = time.perf_counter()
        while not stop.is_set():
            start = time.perf_counter()
            try:
                status = str(client.get("/health/live").status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            stats.add(status, time.perf_counter() - start)
            stop.wait(interval)
        stats.elapsed = time.perf_counter() - t0
    return stats


async def in_flight(url: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("cnn_computations_in_flight"):
            return float(line.split()[-1])
    return float("nan")


# --------------------------------------------------------------------------- report

HEADER = (
    f"{'workers':>7} {'phase':<10} {'conc':>5} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
    f"{'p99 ms':>8} {'5xx':>4} {'conn err':>8}  statuses"
)


def row(workers: int, phase: str, conc: int, s: Stats) -> str:
    rps = len(s.latencies) / s.elapsed if s.elapsed else float("nan")
    statuses = " ".join(f"{k}:{v}" for k, v in sorted(s.by_status.items()))
    return (
        f"{workers:>7} {phase:<10} {conc:>5} {rps:>8.1f} {s.pct(50):>8.1f} {s.pct(95):>8.1f} "
        f"{s.pct(99):>8.1f} {s.server_errors:>4} {s.connection_errors:>8}  {statuses}"
    )


def check(ok: bool, text: str, failures: list[str]) -> None:
    print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    if not ok:
        failures.append(text)


async def run_workers(workers: int, args: argparse.Namespace, failures: list[str]) -> None:
    slots = args.slots
    env = {
        "CNN_WORKERS": str(workers),
        "CNN_LOG_LEVEL": "warning",
        "CNN_MAX_CONCURRENCY": str(slots),
        "CNN_MAX_QUEUE": str(args.queue),
        "CNN_QUEUE_TIMEOUT": str(args.queue_timeout),
    }
    rng = np.random.default_rng(0)
    templates = make_requests(rng)
    heavy = heavy_request(rng)
    random.seed(0)

    def mixed() -> Request:
        return random.choice(templates)

    with serve_process(env=env) as (url, proc):
        print(
            f"\n== {workers} worker(s), {slots} slot(s) and {args.queue} queue place(s) per worker"
        )
        print(HEADER)
        rss_start = rss_mib(proc)
        await drive(url, 4, 2.0, mixed)  # warm-up
        for conc in args.concurrency:
            s = await drive(url, conc, args.duration, mixed)
            print(row(workers, "load", conc, s))
            check(
                s.server_errors == 0 and s.connection_errors == 0,
                f"load c={conc}: no 5xx other than 503 and no connection errors",
                failures,
            )

        overload_conc = 4 * slots * workers
        stop = threading.Event()
        health_result: list[Stats] = []
        prober = threading.Thread(target=lambda: health_result.append(probe(url, stop)))
        load = asyncio.create_task(drive(url, overload_conc, args.duration, lambda: heavy))
        await asyncio.sleep(0.5)  # let the slots fill up
        prober.start()
        s = await load
        stop.set()
        prober.join(timeout=30)
        health = health_result[0]
        rss_overload = rss_mib(proc)
        print(row(workers, "overload", overload_conc, s))
        print(row(workers, "  health", 1, health))
        shed = s.by_status.get("503", 0)
        shed_ms = s.pct_of("503", 95)
        check(
            s.server_errors == 0 and s.connection_errors == 0, "overload: no 5xx but 503", failures
        )
        check(
            shed > 0,
            f"overload: excess work shed with 503 ({shed}, p95 {shed_ms:.0f} ms)",
            failures,
        )
        check(health.pct(95) < 100, f"/health/live p95 {health.pct(95):.1f} ms < 100 ms", failures)

        if args.soak:
            await drive(url, 8, 5.0, mixed)
            rss_warm = rss_mib(proc)
            s = await drive(url, 8, args.soak, mixed)
            rss_end = rss_mib(proc)
            print(row(workers, "soak", 8, s))
            growth = (rss_end - rss_warm) / rss_warm * 100
            print(
                f"  RSS after warm-up {rss_warm:.1f} MiB, "
                f"after {args.soak:g} s soak {rss_end:.1f} MiB"
            )
            check(s.server_errors == 0 and s.connection_errors == 0, "soak: no 5xx", failures)
            check(growth < 10, f"soak: RSS grew {growth:+.1f}% (< 10%)", failures)
        await asyncio.sleep(0.5)
        busy = await in_flight(url)
        check(busy == 0, f"computation slots all free afterwards (in flight: {busy:g})", failures)
        print(
            f"  RSS: start {rss_start:.1f} MiB, after overload {rss_overload:.1f} MiB, "
            f"end {rss_mib(proc):.1f} MiB"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--soak", type=float, default=0.0, help="soak seconds (0: skip)")
    parser.add_argument("--slots", type=int, default=2, help="CNN_MAX_CONCURRENCY")
    parser.add_argument("--queue", type=int, default=2, help="CNN_MAX_QUEUE")
    parser.add_argument("--queue-timeout", type=float, default=0.1, help="CNN_QUEUE_TIMEOUT")
    args = parser.parse_args(argv)
    failures: list[str] = []
    for workers in args.workers:
        asyncio.run(run_workers(workers, args, failures))
    print(f"\n{len(failures)} target(s) missed" if failures else "\nall targets met")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
