"""Process-wide settings the service applies at start-up (it owns its process; cnncore,
a library, never changes them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import MutableMapping

log = logging.getLogger("service")

MMAP_THRESHOLD = 64 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024
ARENA_MAX = 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt numbers


def tune_malloc() -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the OS each call.

    By default glibc returns blocks above 128 KiB-32 MiB to the OS on ``free``, so every
    layer call faults its multi-MB temporaries in again (2.4× slower on a conv; see
    docs/decisions/2026-12-05-service-runtime.md). Memory above 256 MiB is still returned.
    And every thread shares the main arena: glibc gives other threads arenas of their own
    whose emptied heaps it unmaps whatever the trim threshold, so a graph's batch part on
    a worker thread faulted its buffers in again on every pass (6,400 page faults and 5%
    of a ResNet-18 training step; same record).

    Returns whether the settings were applied (``False`` off glibc, e.g. on musl or macOS).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    applied = all(
        mallopt(option, value)
        for option, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_ARENA_MAX, ARENA_MAX),
        )
    )
    if not applied:
        log.warning("could not tune glibc malloc thresholds; layer calls may be slower")
    return applied


#: OpenBLAS reads this when it loads: its idle worker threads spin for 2**n cycles
#: before they sleep (default n = 28, about a tenth of a second); 4 is its minimum.
BLAS_THREAD_TIMEOUT_ENV = "OPENBLAS_THREAD_TIMEOUT"
BLAS_THREAD_TIMEOUT = "4"


def quiet_blas_threads(environ: MutableMapping[str, str] = os.environ) -> None:
    """Let OpenBLAS's worker threads sleep as soon as a call ends instead of spinning.

    After each GEMM OpenBLAS keeps its other thread spinning for about 0.1 s, a core
    taken from the event loop and the client (measurements:
    docs/decisions/2026-12-05-service-runtime.md).

    Must run before numpy is imported (the CLI calls it first); a value the
    environment already sets is kept.
    """
    environ.setdefault(BLAS_THREAD_TIMEOUT_ENV, BLAS_THREAD_TIMEOUT)
