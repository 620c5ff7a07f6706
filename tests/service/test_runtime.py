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
