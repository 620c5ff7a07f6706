"""The GEMM floor of a pass: every matrix product it calls, with the same shapes, strides,
dtypes and threads, timed alone on warm operands.

A pass's time over its floor is what the engine spends outside BLAS (column copies,
transposes, pooling, activations, Python): the part that is cnncore's own doing and does
not depend on the CPU's BLAS kernel (issue 20's target: the pass <= 1.25x its floor).

:func:`record` runs a pass with ``numpy.matmul`` wrapped (every cnncore product goes
through it), keeping each call's operand layouts, the thread that made it and the
:func:`cnncore.threads.map_threads` section it ran in; :func:`floor` replays the calls on
fresh buffers with identical strides, in order: calls outside any section one after the
other with BLAS as the pass had it, and each section's calls one list per thread that ran
them, those threads at once, with BLAS on one thread when the section had it so (a graph's
batch parts). Only the products are timed, so the floor is a lower bound of the pass.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import cnncore.threads
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
        """A new array with this layout (random values) in memory of its own, mapped
        outside malloc's heap: a replay holds every operand of a pass at once (2.3 GB for
        ResNet-18's training step), and in the heap they would change how the pass timed
        next to it reuses its memory (it faulted 40,000 pages in again per step)."""
        if any(s < 0 for s in self.strides):
            values = np.random.default_rng(0).random(self.shape).astype(self.dtype)
            return _outside_heap(values)
        span = sum((n - 1) * s for n, s in zip(self.shape, self.strides, strict=True))
        count = (span // self.dtype.itemsize + 1) if all(self.shape) else 1
        buf = _outside_heap(np.random.default_rng(0).random(count).astype(self.dtype))
        return np.lib.stride_tricks.as_strided(buf, self.shape, self.strides)


def _outside_heap(values: np.ndarray) -> np.ndarray:
    """A copy of ``values`` in an anonymous memory map of its own."""
    region = mmap.mmap(-1, max(values.nbytes, 1))
    out = np.frombuffer(region, dtype=values.dtype, count=values.size).reshape(values.shape)
    out[...] = values
    return out


@dataclass(frozen=True)
class Call:
    """One ``np.matmul(a, b[, out=...])`` of the pass; ``section`` is the
    :func:`~cnncore.threads.map_threads` call it ran in (``None``: outside any), with BLAS
    on one thread when ``single_blas``."""

    a: Layout
    b: Layout
    out: Layout | None
    thread: int
    section: int | None = None
    single_blas: bool = False

    @property
    def flops(self) -> int:
        m, k = self.a.shape[-2:] if len(self.a.shape) > 1 else (1, self.a.shape[0])
        n = self.b.shape[-1] if len(self.b.shape) > 1 else 1
        batch = int(np.prod(np.broadcast_shapes(self.a.shape[:-2], self.b.shape[:-2])))
        return 2 * batch * m * k * n


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return min((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)


@contextlib.contextmanager
def _patched(attr: str, wrapper: Any, original: Any) -> Iterator[None]:
    """Replace ``original`` by ``wrapper`` wherever a cnncore module holds it as ``attr``."""
    holders = [
        m
        for name, m in list(sys.modules.items())
        if name.split(".")[0] == "cnncore" and getattr(m, attr, None) is original
    ]
    for m in holders:
        setattr(m, attr, wrapper)
    try:
        yield
    finally:
        for m in holders:
            setattr(m, attr, original)


def record(run: Callable[[], object]) -> list[Call]:
    """The matrix products ``run()`` calls, in order (it runs once, with products wrapped)."""
    calls: list[Call] = []
    lock = threading.Lock()
    local = threading.local()
    sections = itertools.count()
    real_matmul, real_map = np.matmul, cnncore.threads.map_threads

    def matmul(a: Any, b: Any, /, *args: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        where = getattr(local, "section", None)
        call = Call(
            Layout.of(np.asanyarray(a)),
            Layout.of(np.asanyarray(b)),
            Layout.of(out) if isinstance(out, np.ndarray) else None,
            threading.get_ident(),
            None if where is None else where[0],
            False if where is None else where[1],
        )
        with lock:
            calls.append(call)
        return real_matmul(a, b, *args, **kwargs)

    def map_threads(fn: Callable[[Any], Any], items: Sequence[Any], *args: Any) -> Any:
        if getattr(local, "section", None) is not None:  # nested: runs serially in its item
            return real_map(fn, items, *args)
        where = (next(sections), _blas_threads() == 1)

        def tagged(item: Any) -> Any:
            local.section = where
            try:
                return fn(item)
            finally:
                local.section = None

        return real_map(tagged, items, *args)

    np.matmul = matmul  # type: ignore[assignment]
    try:
        with _patched("map_threads", map_threads, real_map):
            run()
    finally:
        np.matmul = real_matmul
    return calls


def _products(calls: Sequence[Call]) -> Callable[[], None]:
    operands = [(c.a.fresh(), c.b.fresh(), None if c.out is None else c.out.fresh()) for c in calls]

    def go() -> None:
        for a, b, out in operands:
            if out is None:
                np.matmul(a, b)
            else:
                np.matmul(a, b, out=out)

    return go


def _concurrently(lists: Sequence[Callable[[], None]], single_blas: bool) -> Callable[[], None]:
    def go() -> None:
        with blas_single_threaded() if single_blas else contextlib.nullcontext():
            threads = [threading.Thread(target=fn) for fn in lists]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    return go


def _replay(calls: Sequence[Call]) -> list[Callable[[], None]]:
    """The calls as segments in order: runs of calls outside sections, and sections."""
    segments: list[Callable[[], None]] = []
    for section, group in itertools.groupby(calls, key=lambda c: c.section):
        part = list(group)
        if section is None:
            segments.append(_products(part))
            continue
        by_thread: dict[int, list[Call]] = {}
        for c in part:
            by_thread.setdefault(c.thread, []).append(c)
        lists = [_products(cs) for cs in by_thread.values()]
        segments.append(_concurrently(lists, part[0].single_blas))
    return segments


def replayer(calls: Sequence[Call]) -> Callable[[], None]:
    """A function that runs the products of ``calls`` once, as the pass ran them, on
    fresh operands of the same layouts (to time against the pass, alternating)."""
    segments = _replay(calls)

    def once() -> None:
        for seg in segments:
            seg()

    return once


def floor(
    calls: Sequence[Call], repeat: int = 5, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds the products of ``calls`` take alone, as the pass ran them: the minimum of
    ``repeat`` replays on ``clock``."""
    once = replayer(calls)
    once()  # warm: operands in memory, BLAS buffers and threads started
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        once()
        best = min(best, clock() - t0)
    return best


def summary(calls: Sequence[Call]) -> str:
    """``N GEMMs, F GFLOP (P on worker threads)``."""
    flops = sum(c.flops for c in calls)
    threaded = sum(1 for c in calls if c.section is not None)
    return f"{len(calls)} GEMMs, {flops / 1e9:.1f} GFLOP ({threaded} in threaded sections)"
