"""Threads of cnncore: how many, one shared pool, and BLAS kept to one thread meanwhile.

Two places run work on several threads at once (numpy releases the GIL inside
``matmul``, copies and ufunc loops):

- :func:`cnncore.conv` runs the chunks of the batch of a layer whose GEMMs are too
  small for BLAS's own threads (:attr:`cnncore.conv.ConvPlan.forward_workers`);
- :meth:`cnncore.graph.Graph.forward` runs a large graph on parts of the batch, one
  thread each, when every node treats samples independently (``Graph._parts``).

Both go through :func:`map_threads`. A call made from a thread that is already one of
its workers runs serially, so the two never nest (and never wait on a pool whose
threads are all waiting).

The graph's parts call large GEMMs, for which OpenBLAS would start its own threads and
oversubscribe the cores (``docs/decisions/2026-12-02-graph-batch-split.md``):
:func:`blas_single_threaded` keeps BLAS to one thread for the duration of the parts, through
``threadpoolctl`` (imported lazily, so that ``cnncore`` itself needs only numpy;
without it the graph does not split, see :func:`can_limit_blas`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["WORKERS", "blas_single_threaded", "can_limit_blas", "map_threads"]

T = TypeVar("T")
S = TypeVar("S")

_MAX_WORKERS = 4
"""Cap on the threads :func:`map_threads` uses, whatever the machine has."""


def _worker_count() -> int:
    """The BLAS thread count numpy would use, without asking the BLAS library.

    ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` when set (so that a process
    limited to one BLAS thread gets no extra threads here either), else the CPUs this
    process may run on; at most :data:`_MAX_WORKERS`.
    """
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return min(int(value), _MAX_WORKERS)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, _MAX_WORKERS))


WORKERS = _worker_count()
"""Threads of :func:`map_threads` (read at import, as OpenBLAS reads its variables)."""

_executor: ThreadPoolExecutor | None = None
_pool_size = 0
_executor_lock = threading.Lock()
_local = threading.local()


def _pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool of ``workers - 1`` threads (the calling thread is the last worker),
    created on first use, and replaced by a larger one if a call wants more."""
    global _executor, _pool_size
    with _executor_lock:
        if _executor is None or _pool_size < workers - 1:
            if _executor is not None:
                _executor.shutdown(wait=False)  # its threads end once idle
            _pool_size = max(1, workers - 1)
            _executor = ThreadPoolExecutor(_pool_size, thread_name_prefix="cnncore")
        return _executor


def _forget_pool() -> None:
    """In a forked child the parent's pool threads do not exist: start a new pool."""
    global _executor, _executor_lock, _pool_size, _blas_lock, _blas_users, _blas_limit
    _executor, _executor_lock, _pool_size = None, threading.Lock(), 0
    _blas_lock, _blas_users, _blas_limit = threading.Lock(), 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def in_worker() -> bool:
    """Whether this thread is running an item of :func:`map_threads` right now."""
    return getattr(_local, "depth", 0) > 0


def map_threads(run: Callable[[S], T], items: Sequence[S], workers: int | None = None) -> list[T]:
    """``[run(item) for item in items]`` on up to ``workers`` threads (default :data:`WORKERS`).

    The calling thread works too, next to pool threads; each takes the next unclaimed
    item until none is left, so a thread that gets less of the CPU just does fewer
    items. The results come back in the items' order, and the first error (in item
    order) is raised once every thread has stopped, so nothing still writes into the
    caller's arrays when this returns. Called from inside another ``map_threads``, or
    with one worker or one item, it runs serially on the calling thread.
    """
    workers = WORKERS if workers is None else workers
    if workers <= 1 or len(items) <= 1 or in_worker():
        return [run(item) for item in items]
    results: dict[int, T] = {}
    errors: dict[int, BaseException] = {}
    unclaimed = iter(range(len(items)))
    lock = threading.Lock()

    def work() -> None:
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            while True:
                with lock:
                    i = next(unclaimed, None)
                if i is None:
                    return
                try:
                    results[i] = run(items[i])
                except BaseException as exc:  # re-raised below, in item order
                    errors[i] = exc
        finally:
            _local.depth -= 1

    pool = _pool(workers)
    helpers = [pool.submit(work) for _ in range(min(workers, len(items)) - 1)]
    try:
        work()
    finally:
        wait(helpers)
    if errors:
        raise errors[min(errors)]
    return [results[i] for i in range(len(items))]


# --------------------------------------------------------------------------- BLAS threads

_blas_lock = threading.Lock()
_blas_users = 0
_blas_limit: Any = None


def _controller() -> Any:
    """threadpoolctl's controller of the loaded BLAS libraries, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


def _release_openblas() -> None:
    """Let the next thread that sets OpenBLAS's thread count do so.

    threadpoolctl 3.8 lets only one Python thread (the first to set it, until it clears
    that) change the thread count of an OpenBLAS built with pthreads, and silently
    ignores the others. Here the thread that limits BLAS and the one that restores it
    can differ (concurrent requests), and both hold :data:`_blas_lock` while setting.
    """
    try:
        from threadpoolctl import OpenBLASController
    except ImportError:  # threadpoolctl before 3.8 has no controlling thread
        return
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


_CONTROLLER: Any = None
_CONTROLLER_READY = False


def _blas() -> Any:
    global _CONTROLLER, _CONTROLLER_READY
    if not _CONTROLLER_READY:
        _CONTROLLER, _CONTROLLER_READY = _controller(), True
    return _CONTROLLER


def can_limit_blas() -> bool:
    """Whether :func:`blas_single_threaded` can act: threadpoolctl imports and finds a BLAS."""
    controller = _blas()
    return controller is not None and len(controller.lib_controllers) > 0


@contextmanager
def blas_single_threaded() -> Iterator[None]:
    """Keep the BLAS library to one thread while the block runs, in this whole process.

    The limit is a process-wide setting of the BLAS library, so concurrent blocks
    share one: the first to enter sets it, the last to leave restores the thread
    count found then. A GEMM of another thread meanwhile runs on one BLAS thread,
    with the same result (OpenBLAS splits a GEMM's rows and columns between its
    threads, never the sum over the inner dimension).
    """
    global _blas_users, _blas_limit
    controller = _blas()
    if controller is None:
        yield
        return
    with _blas_lock:
        if _blas_users == 0:
            _release_openblas()
            _blas_limit = controller.limit(limits=1)
            _release_openblas()
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _release_openblas()
                _blas_limit.restore_original_limits()
                _release_openblas()
                _blas_limit = None
