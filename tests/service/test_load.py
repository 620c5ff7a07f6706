"""The load harness's behaviour in CI: one worker, short phases; no time or rate asserted.

Latency and throughput depend on the machine and on what else it runs, so they are
measured and reported by ``python -m benchmarks.bench_load`` (figures in the README),
not asserted here. What must hold on any machine, however busy, is asserted.
"""

from __future__ import annotations

import pytest

from benchmarks import bench_load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run() -> bench_load.Run:
    # Mixed load at 4 concurrent requests, then overload at 4x the slots with a health probe.
    (result,) = bench_load.measure(
        ["--workers", "1", "--concurrency", "4", "--duration", "2", "--warmup", "1"]
    )
    return result


def test_only_200_and_503_under_load_and_overload(run: bench_load.Run) -> None:
    for phase, conc, stats in run.phases:
        assert stats.statuses, f"{phase} c={conc} sent nothing"
        assert not stats.unexpected, f"{phase} c={conc}: {dict(stats.unexpected)}"


def test_overload_is_shed_with_503_and_retry_after(run: bench_load.Run) -> None:
    overload = run.phase("overload")
    assert overload.by_status["503"] > 0
    assert all(stats.missing_retry_after == 0 for _, _, stats in run.phases)


def test_liveness_answers_while_every_slot_is_busy(run: bench_load.Run) -> None:
    health = run.phase("  health")
    assert health.statuses
    assert set(health.statuses) == {"200"}


def test_slots_are_free_and_memory_bounded_afterwards(run: bench_load.Run) -> None:
    assert run.in_flight_after == 0
    # Start plus 3x what the admitted requests hold at once (bench_load.MEMORY_FACTOR):
    # generous, but holding on to every request's body or columns exceeds it.
    assert run.rss_overload <= run.memory_limit


def test_the_benchmark_reports_the_figures(run: bench_load.Run) -> None:
    lines, failed, _ = bench_load.verdicts(run)
    assert failed == 0, lines
    report = "\n".join(lines)
    assert "/health/live p95" in report
    assert "503 p95 under overload" in report
    assert "p95 ms" in bench_load.HEADER
    assert "req/s" in bench_load.HEADER
    assert bench_load.row(1, "load", 4, run.phase("load")).split()[:3] == ["1", "load", "4"]
