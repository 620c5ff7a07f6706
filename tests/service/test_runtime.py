"""Allocator tuning applied by the service at start-up."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from service.runtime import (
    BLAS_THREAD_TIMEOUT,
    BLAS_THREAD_TIMEOUT_ENV,
    quiet_blas_threads,
    tune_malloc,
)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_tune_malloc_applies_on_glibc_and_is_idempotent() -> None:
    assert tune_malloc() is True
    assert tune_malloc() is True


WORKER_FAULTS = """
import resource, threading
import numpy as np
from service.runtime import tune_malloc
assert tune_malloc()
faults = []
def work():
    for _ in range(4):
        start = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        # 90 MiB at once, more than one 64 MiB heap of a thread's arena; written
        parts = [np.ones(30 << 18, np.float32) for _ in range(3)]
        del parts
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - start)
t = threading.Thread(target=work)
t.start(); t.join()
print(sum(faults[1:]))
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_a_worker_thread_reuses_freed_memory_without_faulting_it_in() -> None:
    # A batch part runs on a worker thread: its buffers, freed after each pass, must come
    # back from the heap, not as fresh pages the kernel zeroes (4,096 faults per 16 MiB).
    # The first round may fault: the heap grows once. In an arena of the thread's own,
    # glibc unmaps an emptied 64 MiB heap (not the first) whatever the trim threshold:
    # 527 faults a round here with 8 arenas, none with one.
    run = [sys.executable, "-c", WORKER_FAULTS]
    assert int(subprocess.run(run, check=True, capture_output=True, text=True).stdout) < 64


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, BLAS_THREAD_TIMEOUT), ({BLAS_THREAD_TIMEOUT_ENV: "12"}, "12")],
    ids=["default", "kept"],
)
def test_quiet_blas_threads_sets_a_default_and_keeps_an_operators_value(
    environ: dict[str, str], expected: str
) -> None:
    quiet_blas_threads(environ)
    assert environ == {BLAS_THREAD_TIMEOUT_ENV: expected}


def test_the_cli_sets_it_before_numpy_is_loaded() -> None:
    # OpenBLAS reads the variable when numpy loads it: the CLI must not import numpy first.
    code = "import sys, service.cli; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
