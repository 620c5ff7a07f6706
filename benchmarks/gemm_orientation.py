"""Each GEMM of a pass in the orientation cnncore uses and transposed, side by side.

``C = A @ B`` can also be computed as ``Cᵀ = Bᵀ @ Aᵀ``: for a convolution, filters-major
``W (F, K) @ cols (K, P)`` or pixels-major ``colsᵀ (P, K) @ Wᵀ (K, F)``. BLAS kernels
block the two differently, and issue 20 measured up to 1.5x between them on an AVX-512
machine. This records every product of a pass (:func:`benchmarks.gemm_floor.record`),
and times each distinct shape both ways on C-contiguous operands, alone, on the thread
count the pass gave it (one BLAS thread inside the graph's batch parts); the table shows
the shapes that take most of the pass and what choosing the faster orientation for every
product would save. The operands' own layout in the pass is not kept: this compares the
orientations, not the copies a layout would need.

Usage::

    python -m benchmarks.gemm_orientation               # ResNet-18, forward + backward
    python -m benchmarks.gemm_orientation --pass forward
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the packages importable from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cnncore
from benchmarks import gemm_floor
from benchmarks.bench_onnx import BATCH, SHAPE, build_model, export, set_threads
from cnncore.threads import blas_single_threaded
from service.runtime import tune_malloc


def best_time(fn: object, repeat: int) -> float:
    assert callable(fn)
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@dataclass(frozen=True)
class Row:
    """One distinct product shape ``(m, k, n)`` of a pass, ``count`` times (batched
    products counted per matrix), timed as used and transposed (seconds)."""

    m: int
    k: int
    n: int
    single_blas: bool
    count: int
    used: float
    transposed: float


def orientations(calls: Sequence[gemm_floor.Call], threads: int, repeat: int) -> list[Row]:
    """Every distinct 2-D product of ``calls``, timed both ways, most time first."""
    shapes: Counter[tuple[int, int, int, bool]] = Counter()
    for c in calls:
        m, k = c.a.shape[-2:]
        n = c.b.shape[-1]
        batch = int(np.prod(np.broadcast_shapes(c.a.shape[:-2], c.b.shape[:-2])))
        shapes[(m, k, n, c.single_blas or threads == 1)] += batch
    rng = np.random.default_rng(0)
    rows = []
    for (m, k, n, single), count in shapes.items():
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        at, bt = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
        with blas_single_threaded() if single else contextlib.nullcontext():
            used = best_time(lambda a=a, b=b: np.matmul(a, b), repeat)
            flipped = best_time(lambda at=at, bt=bt: np.matmul(bt, at), repeat)
        rows.append(Row(m, k, n, single, count, used, flipped))
    rows.sort(key=lambda r: r.count * r.used, reverse=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, help="an exported model (default: ResNet-18)")
    parser.add_argument("--pass", dest="which", choices=["forward", "both"], default="both")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=12, help="shapes shown")
    args = parser.parse_args(argv)

    tune_malloc()
    print(set_threads(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx
        if path is None:
            path = Path(tmp) / "resnet18.onnx"
            export(build_model("resnet18"), path)
        graph = cnncore.load_onnx(path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *SHAPE)).astype(np.float32)
    dout = rng.standard_normal(graph.infer(x.shape).output_shape).astype(np.float32)

    def run() -> object:
        if args.which == "forward":
            return graph.forward(x, backward=False)
        _, cache = graph.forward(x)
        return graph.backward(dout, cache)

    calls = gemm_floor.record(run)
    print(gemm_floor.summary(calls))
    rows = orientations(calls, args.threads, args.repeat)
    total = sum(r.count * r.used for r in rows)
    best = sum(r.count * min(r.used, r.transposed) for r in rows)
    print(f"\n{len(rows)} distinct shapes; {args.repeat} repeats, minimum; float32\n")
    print("| M×K×N (as used) | count | threads | as used ms | transposed ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows[: args.rows]:
        threads = 1 if r.single_blas else args.threads
        print(
            f"| {r.m}×{r.k}×{r.n} | {r.count} | {threads} | {r.used * 1e3:.2f} "
            f"| {r.transposed * 1e3:.2f} | {r.transposed / r.used:.2f} |"
        )
    print(
        f"\nall products as used: {total * 1e3:.0f} ms of one thread's time; each in its "
        f"faster orientation: {best * 1e3:.0f} ms ({best / total:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
