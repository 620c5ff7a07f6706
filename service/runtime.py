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
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def tune_malloc() -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the OS each call.

    By default glibc serves blocks above a dynamic threshold (128 KiB to 32 MiB) with
    ``mmap`` and gives them back on ``free``, so every layer call faults its multi-MB
    temporaries in page by page again: a conv forward + backward on
    x(100,3,31,31)·w(25,3,3,3) took 7.5 ms in a fresh process instead of 3.1 ms.
    Raising the mmap threshold to 64 MiB and the trim threshold to 256 MiB keeps such
    blocks on the heap; memory is still returned above that, so resident memory stays
    bounded (see the soak figures in the README).

    Returns whether the settings were applied (``False`` off glibc, e.g. on musl or macOS).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
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

    After each GEMM of a convolution, OpenBLAS keeps its other thread spinning for
    about 0.1 s; in a server that core is then taken from the event loop sending the
    response and from the client on the same machine. Measured on the 2-core machine
    (busy), one service with the default and one with this setting, requests
    alternating: V2 binary conv x(4,16,128,128) median 322 -> 229 ms, /v1 b64 401 ->
    297 ms; server CPU time per V2 request 126 -> 81 ms.

    Must run before numpy is imported (the CLI calls it first); a value the
    environment already sets is kept.
    """
    environ.setdefault(BLAS_THREAD_TIMEOUT_ENV, BLAS_THREAD_TIMEOUT)
