"""Speed of the cnncore layers, forward + backward, against the plain loops and PyTorch.

Each row of :data:`CASES` is one layer call on fixed shapes. For every case and
dtype the script times the fast path (median of ``--repeat`` runs), the plain-loop
reference from :mod:`cnncore.reference` once (only for rows marked affordable),
and PyTorch CPU at the same thread count as numpy's BLAS (when ``torch`` is
importable; it is never a dependency of the project), then prints a Markdown
table with the ratios and the peak memory (tracemalloc) of one fast call.

Usage::

    python -m benchmarks.bench_core                  # both dtypes, 7 repeats
    python benchmarks/bench_core.py --dtype float32 --repeat 11
    python -m benchmarks.bench_core --quick          # small cases, 3 repeats

Environment variables such as ``OPENBLAS_CORETYPE`` change which BLAS kernel runs;
the header reports the kernel in use (via threadpoolctl when installed).

To add a layer, write a ``*_case`` factory returning a :class:`Case` and append
rows to :data:`CASES`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `cnncore` importable from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnncore import conv2d_backward, conv2d_forward, reference

Runner = Callable[[], object]


@dataclass(frozen=True)
class Runners:
    """The three ways of running one case on one set of arrays."""

    fast: Runner
    reference: Runner | None
    torch: Runner | None


@dataclass(frozen=True)
class Case:
    """One benchmark row: a name, whether it is small, and how to build its runners."""

    name: str
    quick: bool
    setup: Callable[[np.random.Generator, np.dtype, Any], Runners]
    """``setup(rng, dtype, torch_or_None) -> Runners``."""


# --------------------------------------------------------------------------- convolution


def conv_case(
    x_shape: tuple[int, int, int, int],
    w_shape: tuple[int, int, int, int],
    *,
    stride: int = 1,
    pad: int = 0,
    with_reference: bool = False,
    quick: bool = False,
) -> Case:
    """A conv2d forward + backward row (with bias)."""
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
            reference=ref if with_reference else None,
            torch=None if torch is None else _torch_conv(torch, x, wt, b, dout, stride, pad),
        )

    return Case(name, quick, setup)


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


# --------------------------------------------------------------------------- the table

CASES: list[Case] = [
    conv_case((100, 3, 31, 31), (25, 3, 3, 3), stride=2, pad=1, with_reference=True, quick=True),
    conv_case((16, 32, 32, 32), (64, 32, 3, 3), stride=1, pad=1, quick=True),
    conv_case((8, 64, 56, 56), (64, 64, 3, 3), stride=1, pad=1),
    conv_case((8, 3, 224, 224), (64, 3, 7, 7), stride=2, pad=3),
]


# --------------------------------------------------------------------------- measurement


def median_ms(run: Runner, repeat: int) -> float:
    """Median wall time of ``repeat`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per case (median)")
    parser.add_argument(
        "--dtype", choices=["float32", "float64", "both"], default="both", help="dtypes to run"
    )
    parser.add_argument("--quick", action="store_true", help="small cases only, 3 repeats")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    args = parser.parse_args(argv)

    repeat = 3 if args.quick else args.repeat
    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
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
    print(f"median of {repeat} runs (forward + backward); reference timed once\n")
    header = [
        "case",
        "dtype",
        "fast ms",
        "reference ms",
        "torch ms",
        "fast/torch",
        "vs reference",
        "peak MB",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rng = np.random.default_rng(0)
    for case in cases:
        for dtype in dtypes:
            runners = case.setup(rng, np.dtype(dtype), torch)
            fast = median_ms(runners.fast, repeat)
            ref = None if runners.reference is None else once_ms(runners.reference)
            tor = None if runners.torch is None else median_ms(runners.torch, repeat)
            row = [
                case.name,
                dtype,
                fmt(fast),
                fmt(ref),
                fmt(tor),
                fmt(None if tor is None else fast / tor, ".2f"),
                "n/a" if ref is None else f"{ref / fast:.0f}x",
                fmt(peak_mb(runners.fast)),
            ]
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
