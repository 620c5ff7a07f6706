"""The fast part of the load harness in CI: one worker, short phases, every target checked."""

from __future__ import annotations

import pytest

from benchmarks import bench_load

pytestmark = pytest.mark.slow


def test_load_and_overload_meet_their_targets(capsys: pytest.CaptureFixture[str]) -> None:
    # Mixed load at 4 concurrent requests, then overload at 4x the slots with a health probe:
    # no 5xx but 503, no connection errors, /health/live p95 < 100 ms, slots free afterwards.
    status = bench_load.main(["--workers", "1", "--concurrency", "4", "--duration", "3"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "all targets met" in out
