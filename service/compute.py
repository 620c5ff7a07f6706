"""Running a computation: budget checks, a bounded number of slots, timing.

Handlers are plain ``def`` (FastAPI runs them in its thread pool, so the event
loop keeps answering ``/health/live`` while numpy computes). Each computation
takes one of ``CNN_MAX_CONCURRENCY`` slots; a request that cannot get one within
``CNN_QUEUE_TIMEOUT`` seconds is shed with a 503 and ``Retry-After``.

Before that, admission bounds how many computing requests the process holds at
all (running, waiting, or still uploading and parsing their bodies): beyond
``CNN_MAX_CONCURRENCY + CNN_MAX_QUEUE`` a request is refused at once, before its
body is read, so overload costs neither time nor memory.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

from cnncore import CnnError

from . import metrics
from .errors import Loc, OverloadedError, TooLargeError
from .problems import from_cnn_error
from .settings import Settings

T = TypeVar("T")


class ComputeSlots:
    """At most ``size`` computations at once; waiting is bounded by ``timeout`` seconds,
    and at most ``size + queue`` requests are admitted at once."""

    def __init__(self, size: int, timeout: float, retry_after: int, queue: int = 0) -> None:
        self.size = size
        self.timeout = timeout
        self.retry_after = retry_after
        self.capacity = size + queue
        self._sem = threading.BoundedSemaphore(size)
        self.admitted = 0  # touched only on the event loop: no lock needed

    def _overloaded(self, detail: str) -> OverloadedError:
        metrics.REJECTED.labels(limit="concurrency").inc()
        return OverloadedError(detail, headers={"Retry-After": str(self.retry_after)})

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count a computing request from before its body is read until its response.

        Raises
        ------
        service.errors.OverloadedError
            503 with ``Retry-After``, at once, when ``size + queue`` are already admitted.
        """
        if self.admitted >= self.capacity:
            raise self._overloaded(
                f"The service is at capacity ({self.capacity} computing requests); "
                f"retry in {self.retry_after} s."
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @contextlib.contextmanager
    def acquire(self) -> Iterator[None]:
        """Hold one slot for the duration of the ``with`` block.

        Raises
        ------
        service.errors.OverloadedError
            503 with ``Retry-After`` when no slot frees up within the timeout.
        """
        if not self._sem.acquire(timeout=self.timeout):
            raise self._overloaded(
                f"All {self.size} computation slots are busy; retry in {self.retry_after} s."
            )
        metrics.IN_FLIGHT.inc()
        try:
            yield
        finally:
            metrics.IN_FLIGHT.dec()
            self._sem.release()


def check_budget(settings: Settings, flops: int, work_bytes: int, loc: Loc = ()) -> None:
    """Refuse (413) a request whose FLOPs or working memory exceed the configured limits.

    Both numbers come from shapes alone, so nothing has been computed or allocated yet.
    """
    if flops > settings.max_flops:
        metrics.REJECTED.labels(limit="flops").inc()
        raise TooLargeError(
            f"this request needs {flops:.3g} FLOPs; the limit is {settings.max_flops:.3g} "
            "(CNN_MAX_FLOPS)",
            [(list(loc), f"{flops:.3g} FLOPs exceeds the limit of {settings.max_flops:.3g}")],
        )
    if work_bytes > settings.max_request_bytes:
        metrics.REJECTED.labels(limit="memory").inc()
        raise TooLargeError(
            f"this request needs about {work_bytes / 2**20:.1f} MiB of working memory; the limit "
            f"is {settings.max_request_bytes / 2**20:.1f} MiB (CNN_MAX_REQUEST_BYTES)",
            [(list(loc), "working memory exceeds the limit")],
        )


def run(slots: ComputeSlots, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """Call ``fn`` in a computation slot; return its result and the time taken in ms.

    Core errors (:class:`cnncore.CnnError`) become 422 problems naming the argument.
    """
    with slots.acquire():
        start = time.perf_counter()
        try:
            # Overflow is not a warning to log: a non-finite result is refused when encoded.
            with np.errstate(all="ignore"):
                result = fn(*args, **kwargs)
        except CnnError as exc:
            raise from_cnn_error(exc) from None
        return result, (time.perf_counter() - start) * 1e3
