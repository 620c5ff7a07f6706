"""Run the real server in a child process, for end-to-end tests and benchmarks.

>>> with serve() as base_url:                     # doctest: +SKIP
...     Client(base_url).info()
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO

import httpx


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(
    argv: Sequence[str] | None = None,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[str]:
    """Start the server, wait until ``/health/ready`` answers 200, yield its base URL,
    and stop it (SIGTERM, then SIGKILL after 10 s) on exit. The arguments are those
    of :func:`serve_process`."""
    with serve_process(argv, port=port, env=env, timeout=timeout) as (base_url, _):
        yield base_url


@contextlib.contextmanager
def serve_process(
    argv: Sequence[str] | None = None,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    base_url: str | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like :func:`serve`, but yield the base URL and the server process (to signal it).

    Parameters
    ----------
    argv
        The command to run; default ``python -m service --port <port>``. A custom
        command must make the server listen on ``127.0.0.1:<port>`` (or ``base_url``).
    port
        Loopback port; a free one when omitted.
    env
        Extra environment variables for the server process.
    timeout
        Seconds to wait for readiness.
    base_url
        Where a custom command serves, when not on loopback (a container's address).

    Raises
    ------
    RuntimeError
        If the server exits or is not ready in time; the message ends with its log.
    """
    port = port or free_port()
    argv = list(argv) if argv else [sys.executable, "-m", "service", "--port", str(port)]
    base_url = base_url or f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            argv, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_ready(base_url, proc, timeout, log)
            yield base_url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(
    base_url: str, proc: subprocess.Popen[bytes], timeout: float, log: IO[bytes]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(f"{base_url}/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server not ready within {timeout:g} s:\n{_tail(log)}")


def _tail(log: IO[bytes], chars: int = 4000) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-chars:]
