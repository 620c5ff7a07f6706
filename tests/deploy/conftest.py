"""Reporting for tests/deploy: the rolling-restart figures, shown whether or not ``-s``."""

from __future__ import annotations

import pytest
from _pytest.terminal import TerminalReporter

#: Lines test_rolling.py adds for the terminal summary.
ROLLING_REPORT = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(ROLLING_REPORT, [])
    if lines:
        terminalreporter.section("rolling restarts behind nginx")
        for line in lines:
            terminalreporter.write_line(line)
