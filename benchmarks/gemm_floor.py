"""The GEMM floor of a pass: every matrix product it calls, with the same shapes, strides,
dtypes and threads, timed alone on warm operands.

A pass's time over its floor is what the engine spends outside BLAS (column copies,
transposes, pooling, activations, Python): the part that is cnncore's own doing and does
not depend on the CPU's BLAS kernel (issue 20's target: the pass <= 1.25x its floor).

:func:`record` runs a pass with ``numpy.matmul`` wrapped (every cnncore product goes
through it), keeping each call's operand layouts and the thread that made it;
:func:`floor` replays the calls on fresh buffers with identical strides: the main
thread's calls one after the other with BLAS as the pass had it, and the calls made on
cnncore's worker threads (a batch split into parts) one list per thread, all threads at
once with BLAS on one thread each, as :mod:`cnncore.threads` runs them. Waits between
the parts are not replayed, so the floor is a lower bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cnncore.threads import blas_single_threaded


@dataclass(frozen=True)
class Layout:
    """An operand's shape, strides (bytes) and dtype."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype

    @classmethod
    def of(cls, a: np.ndarray) -> Layout:
        return cls(a.shape, a.strides, a.dtype)

    def fresh(self) -> np.ndarray:
        """A new array with this layout (its own buffer, random values)."""
        if any(s < 0 for s in self.strides):
            return np.random.default_rng(0).random(self.shape).astype(self.dtype)
        span = sum((n - 1) * s for n, s in zip(self.shape, self.strides, strict=True))
        count = (span // self.dtype.itemsize + 1) if all(self.shape) else 1
        buf = np.random.default_rng(0).random(count).astype(self.dtype)
        return np.lib.stride_tricks.as_strided(buf, self.shape, self.strides)


@dataclass(frozen=True)
class Call:
    """One ``np.matmul(a, b[, out=...])`` of the pass."""

    a: Layout
    b: Layout
    out: Layout | None
    thread: int
    main: bool

    @property
    def flops(self) -> int:
        m, k = self.a.shape[-2:] if len(self.a.shape) > 1 else (1, self.a.shape[0])
        n = self.b.shape[-1] if len(self.b.shape) > 1 else 1
        batch = int(np.prod(np.broadcast_shapes(self.a.shape[:-2], self.b.shape[:-2])))
        return 2 * batch * m * k * n


def record(run: Callable[[], object]) -> list[Call]:
    """The matrix products ``run()`` calls, in order (it runs once, with products wrapped)."""
    calls: list[Call] = []
    lock = threading.Lock()
    real = np.matmul
    main = threading.main_thread().ident

    def recording(a: np.ndarray, b: np.ndarray, /, *args: object, **kwargs: object) -> object:
        out = kwargs.get("out")
        a_, b_ = np.asanyarray(a), np.asanyarray(b)
        call = Call(
            Layout.of(a_),
            Layout.of(b_),
            Layout.of(out) if isinstance(out, np.ndarray) else None,
            threading.get_ident(),
            threading.get_ident() == main,
        )
        with lock:
            calls.append(call)
        return real(a, b, *args, **kwargs)

    np.matmul = recording  # type: ignore[assignment]
    try:
        run()
    finally:
        np.matmul = real
    return calls


def _replay(calls: Sequence[Call]) -> Callable[[], None]:
    operands = [(c.a.fresh(), c.b.fresh(), None if c.out is None else c.out.fresh()) for c in calls]

    def go() -> None:
        for a, b, out in operands:
            if out is None:
                np.matmul(a, b)
            else:
                np.matmul(a, b, out=out)

    return go


def floor(
    calls: Sequence[Call], repeat: int = 5, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds the products of ``calls`` take alone, as the pass ran them: the minimum of
    ``repeat`` replays on ``clock``."""
    serial = _replay([c for c in calls if c.main])
    workers: dict[int, list[Call]] = {}
    for c in calls:
        if not c.main:
            workers.setdefault(c.thread, []).append(c)
    parts = [_replay(cs) for cs in workers.values()]

    def parallel() -> None:
        if not parts:
            return
        with blas_single_threaded():
            threads = [threading.Thread(target=p) for p in parts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    serial()
    parallel()  # warm: operands in memory, BLAS buffers allocated
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        serial()
        parallel()
        best = min(best, clock() - t0)
    return best


def summary(calls: Sequence[Call]) -> str:
    """``N GEMMs, F GFLOP (P on worker threads)``."""
    flops = sum(c.flops for c in calls)
    on_workers = sum(1 for c in calls if not c.main)
    return f"{len(calls)} GEMMs, {flops / 1e9:.1f} GFLOP ({on_workers} on worker threads)"
