"""Admission and computation slots: how many requests compute at once.

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
from collections.abc import Iterator

from . import metrics
from .errors import OverloadedError


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
    def acquire(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold one slot for the duration of the ``with`` block, which gets ``True``.

        With ``wait=False`` (a caller on the event loop, which must not block), the block
        gets ``False`` at once when no slot is free, and holds nothing.

        Raises
        ------
        service.errors.OverloadedError
            503 with ``Retry-After`` when no slot frees up within the timeout.
        """
        if not wait:
            if not self._sem.acquire(blocking=False):
                yield False
                return
        elif not self._sem.acquire(timeout=self.timeout):
            raise self._overloaded(
                f"All {self.size} computation slots are busy; retry in {self.retry_after} s."
            )
        metrics.IN_FLIGHT.inc()
        try:
            yield True
        finally:
            metrics.IN_FLIGHT.dec()
            self._sem.release()
