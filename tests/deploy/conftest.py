"""Reporting for tests/deploy: figures shown in the terminal summary, whether or not ``-s``."""

from __future__ import annotations

import pytest
from _pytest.terminal import TerminalReporter

#: Lines test_rolling.py adds for the terminal summary.
ROLLING_REPORT = pytest.StashKey[list[str]]()
#: Lines test_image.py adds: the image's size and build time.
IMAGE_REPORT = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    for key, title in ((ROLLING_REPORT, "rolling restarts behind nginx"), (IMAGE_REPORT, "image")):
        lines = config.stash.get(key, [])
        if lines:
            terminalreporter.section(title)
            for line in lines:
                terminalreporter.write_line(line)
