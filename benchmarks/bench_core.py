"""Speed of the cnncore layers, forward + backward, against the plain loops and PyTorch.

Each row of :data:`CASES` is one layer call (conv2d or pool2d) on fixed shapes,
with the issue's targets. For every case and dtype the script times the fast
path and PyTorch CPU (at numpy's BLAS thread count, when ``torch`` is importable;
it is never a dependency of the project) in alternating blocks of calls, each
after a short pause (so both see the same load and neither runs next to the
other's still-spinning worker threads), and keeps the minimum of ``--repeat``
runs of each (the least disturbed one, on a shared machine). The plain-loop
reference from :mod:`cnncore.reference` runs once, on rows where that is
affordable. It prints a Markdown table with the ratios, the peak memory
(tracemalloc) of one fast call, and PASS/FAIL against each row's target. With
``--service-malloc`` the process first raises glibc's malloc thresholds as the
service does (:func:`service.runtime.tune_malloc`), which speeds up both libraries.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_core
    python -m benchmarks.bench_core --quick          # small cases, 5 repeats
    python benchmarks/bench_core.py --filter pool --repeat 30

Environment variables such as ``OPENBLAS_CORETYPE`` change which BLAS kernel runs;
the header reports the kernel in use (via threadpoolctl when installed).

To add a layer, write a ``*_case`` factory returning a :class:`Case` and append
rows to :data:`CASES`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `cnncore` importable from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnncore import conv2d_backward, conv2d_forward, pool2d_backward, pool2d_forward, reference
from service.runtime import tune_malloc

Runner = Callable[[], object]


@dataclass(frozen=True)
class Runners:
    """The three ways of running one case on one set of arrays."""

    fast: Runner
    reference: Runner | None
    torch: Runner | None


@dataclass(frozen=True)
class Target:
    """What a row must reach: fast/torch at most ``max_vs_torch`` (per dtype), and
    fast at least ``min_vs_reference`` times faster than the reference, if set."""

    max_vs_torch: dict[str, float]
    min_vs_reference: float | None = None

    def describe(self, dtype: str) -> str:
        parts = [f"<={self.max_vs_torch[dtype]:g}x torch"]
        if self.min_vs_reference is not None:
            parts.append(f">={self.min_vs_reference:g}x ref")
        return ", ".join(parts)

    def verdict(self, dtype: str, vs_torch: float | None, vs_reference: float | None) -> str:
        if vs_torch is None or (self.min_vs_reference is not None and vs_reference is None):
            return "n/a"
        ok = vs_torch <= self.max_vs_torch[dtype]
        if self.min_vs_reference is not None and vs_reference is not None:
            ok = ok and vs_reference >= self.min_vs_reference
        return "PASS" if ok else "FAIL"


@dataclass(frozen=True)
class Case:
    """One benchmark row per dtype: a name, its target, and how to build its runners."""

    name: str
    quick: bool
    target: Target
    setup: Callable[[np.random.Generator, np.dtype, Any], Runners]
    """``setup(rng, dtype, torch_or_None) -> Runners``."""

    @property
    def dtypes(self) -> list[str]:
        return list(self.target.max_vs_torch)


# --------------------------------------------------------------------------- convolution

CONV_TARGET = {"float64": 1.0, "float32": 2.0}


def conv_case(
    x_shape: tuple[int, int, int, int],
    w_shape: tuple[int, int, int, int],
    *,
    stride: int = 1,
    pad: int = 0,
    min_vs_reference: float | None = None,
    quick: bool = False,
) -> Case:
    """A conv2d forward + backward row (with bias); the reference runs when a
    ``min_vs_reference`` target is set."""
    n, c, h, w = x_shape
    f, _, kh, kw = w_shape
    name = f"conv x({n},{c},{h},{w}) w({f},{c},{kh},{kw}) s{stride} p{pad}"

    def setup(rng: np.random.Generator, dtype: np.dtype, torch: Any) -> Runners:
        x = rng.standard_normal(x_shape).astype(dtype)
        wt = rng.standard_normal(w_shape).astype(dtype)
        b = rng.standard_normal(f).astype(dtype)
        out, _ = conv2d_forward(x, wt, b, stride=stride, padding=pad)
        dout = rng.standard_normal(out.shape).astype(dtype)

        def fast() -> object:
            _, cache = conv2d_forward(x, wt, b, stride=stride, padding=pad)
            return conv2d_backward(dout, cache)

        def ref() -> object:
            _, cache = reference.conv_forward_naive(x, wt, b, {"stride": stride, "pad": pad})
            return reference.conv_backward_naive(dout, cache)

        return Runners(
            fast=fast,
            reference=None if min_vs_reference is None else ref,
            torch=None if torch is None else _torch_conv(torch, x, wt, b, dout, stride, pad),
        )

    return Case(name, quick, Target(CONV_TARGET, min_vs_reference), setup)


def _torch_conv(
    torch: Any, x: np.ndarray, w: np.ndarray, b: np.ndarray, dout: np.ndarray, stride: int, pad: int
) -> Runner:
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
    tdout = torch.from_numpy(dout)

    def run() -> object:
        for t in (tx, tw, tb):
            t.grad = None
        out = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=pad)
        out.backward(tdout)
        return tx.grad, tw.grad, tb.grad

    return run


# --------------------------------------------------------------------------- pooling

POOL_TARGET = {"float64": 3.0}


def pool_case(
    x_shape: tuple[int, int, int, int], kernel: int, stride: int, mode: str, *, quick: bool = False
) -> Case:
    """A pool2d forward + backward row (float64), with the reference loops."""
    n, c, h, w = x_shape
    name = f"pool {mode} {kernel}x{kernel} s{stride} x({n},{c},{h},{w})"
    param = {"pool_height": kernel, "pool_width": kernel, "stride": stride}
    naive_forward = getattr(reference, f"{mode}_pool_forward_naive")
    naive_backward = getattr(reference, f"{mode}_pool_backward_naive")

    def setup(rng: np.random.Generator, dtype: np.dtype, torch: Any) -> Runners:
        x = rng.standard_normal(x_shape).astype(dtype)
        out, _ = pool2d_forward(x, kernel_size=kernel, stride=stride, mode=mode)
        dout = rng.standard_normal(out.shape).astype(dtype)

        def fast() -> object:
            _, cache = pool2d_forward(x, kernel_size=kernel, stride=stride, mode=mode)
            return pool2d_backward(dout, cache)

        def ref() -> object:
            _, cache = naive_forward(x, param)
            return naive_backward(dout, cache)

        return Runners(
            fast=fast,
            reference=ref,
            torch=None if torch is None else _torch_pool(torch, x, dout, kernel, stride, mode),
        )

    return Case(name, quick, Target(POOL_TARGET), setup)


def _torch_pool(
    torch: Any, x: np.ndarray, dout: np.ndarray, kernel: int, stride: int, mode: str
) -> Runner:
    tx = torch.from_numpy(x.copy()).requires_grad_()
    tdout = torch.from_numpy(dout)
    pool = getattr(torch.nn.functional, f"{mode}_pool2d")

    def run() -> object:
        tx.grad = None
        pool(tx, kernel, stride).backward(tdout)
        return tx.grad

    return run


# --------------------------------------------------------------------------- the table

CASES: list[Case] = [
    conv_case((100, 3, 31, 31), (25, 3, 3, 3), stride=2, pad=1, min_vs_reference=100, quick=True),
    conv_case((16, 32, 32, 32), (64, 32, 3, 3), stride=1, pad=1, quick=True),
    conv_case((8, 64, 56, 56), (64, 64, 3, 3), stride=1, pad=1),
    conv_case((8, 3, 224, 224), (64, 3, 7, 7), stride=2, pad=3),
    pool_case((100, 3, 32, 32), 2, 2, "max", quick=True),
    pool_case((32, 64, 56, 56), 3, 2, "max"),
    pool_case((32, 64, 56, 56), 2, 2, "avg"),
]


# --------------------------------------------------------------------------- measurement


BLOCK = 5
"""Calls of one runner in a row, before the next runner takes its turn."""

SETTLE_S = 0.5
"""Pause before each turn: OpenMP and BLAS worker threads keep spinning on the cores
for a while after a call returns, and would slow whichever library runs next."""


def min_ms(runs: list[Runner], repeat: int) -> list[float]:
    """Minimum wall time of ``repeat`` calls of each runner, in ms.

    One warm-up call each, then the runners take turns in blocks of :data:`BLOCK`
    calls (a×5, b×5, a×5, ...), each turn after a :data:`SETTLE_S` pause, so that
    all of them see the same load and none runs next to the other's spinning
    threads; the minimum is the least disturbed run.
    """
    for run in runs:
        run()
    best = [float("inf")] * len(runs)
    for _ in range(-(-repeat // BLOCK)):
        for i, run in enumerate(runs):
            time.sleep(SETTLE_S)
            for _ in range(BLOCK):
                start = time.perf_counter()
                run()
                best[i] = min(best[i], time.perf_counter() - start)
    return [t * 1e3 for t in best]


def once_ms(run: Runner) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1e3


def peak_mb(run: Runner) -> float:
    """Peak memory numpy allocates during one call, in MB (tracemalloc)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def blas_info() -> tuple[str, int]:
    """A one-line description of numpy's BLAS and its thread count."""
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-untyped]
    except ImportError:
        return "unknown (threadpoolctl not installed)", os.cpu_count() or 1
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            text = (
                f"{pool.get('internal_api')} {pool.get('version')}, "
                f"kernel {pool.get('architecture')}, {pool.get('num_threads')} threads"
            )
            return text, int(pool.get("num_threads") or 1)
    return "unknown", os.cpu_count() or 1


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per case (minimum)")
    parser.add_argument(
        "--dtype", choices=["float32", "float64", "both"], default="both", help="dtypes to run"
    )
    parser.add_argument("--quick", action="store_true", help="small cases only, 5 repeats")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--no-reference", action="store_true", help="skip the plain loops")
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument(
        "--service-malloc",
        action="store_true",
        help="raise glibc's malloc thresholds as the service does at start-up (for the "
        "fast path and torch alike); default: glibc's defaults",
    )
    args = parser.parse_args(argv)
    malloc = "as the service" if args.service_malloc and tune_malloc() else "glibc defaults"

    repeat = 5 if args.quick else args.repeat
    cases = [c for c in CASES if (c.quick or not args.quick) and args.filter in c.name]

    blas, threads = blas_info()
    torch: Any = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
        else:
            torch.set_num_threads(threads)

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, BLAS: {blas}")
    print(
        "torch: "
        + ("not installed" if torch is None else f"{torch.__version__}, {threads} threads")
    )
    print(f"malloc thresholds: {malloc}")
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average at start (1/5/15 min): {load}")
    print(
        f"minimum of {repeat} runs (forward + backward), fast and torch in alternating "
        f"blocks of {BLOCK} after a {SETTLE_S} s pause; reference timed once\n"
    )
    header = [
        "case",
        "dtype",
        "fast ms",
        "reference ms",
        "torch ms",
        "fast/torch",
        "vs reference",
        "peak MB",
        "target",
        "result",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rng = np.random.default_rng(0)
    for case in cases:
        for dtype in case.dtypes:
            if args.dtype not in ("both", dtype):
                continue
            runners = case.setup(rng, np.dtype(dtype), torch)
            timed = [runners.fast] + ([] if runners.torch is None else [runners.torch])
            fast, *rest = min_ms(timed, repeat)
            tor = rest[0] if rest else None
            ref = None
            if runners.reference is not None and not args.no_reference:
                ref = once_ms(runners.reference)
            vs_torch = None if tor is None else fast / tor
            vs_ref = None if ref is None else ref / fast
            row = [
                case.name,
                dtype,
                fmt(fast),
                fmt(ref),
                fmt(tor),
                fmt(vs_torch, ".2f"),
                "n/a" if vs_ref is None else f"{vs_ref:.0f}x",
                fmt(peak_mb(runners.fast)),
                case.target.describe(dtype),
                case.target.verdict(dtype, vs_torch, vs_ref),
            ]
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
