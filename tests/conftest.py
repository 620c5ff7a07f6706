"""Fixtures shared by every test."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# gRPC is on by default on port 8081; the tests' apps and servers leave it off unless a
# test asks for it on a free port (tests/service/test_grpc.py).
os.environ.setdefault("CNN_ENABLE_GRPC", "false")
from _pytest.mark.expression import Expression

import cnncore.gradcheck
from tests import tolerance_log


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: every test sees the same numbers on every run."""
    return np.random.default_rng(20261126)


#: Test modules marked slow as a whole whose collection itself is expensive: schemathesis
#: builds its coverage-phase cases for every operation while test_fuzz.py is collected.
EXPENSIVE_SLOW_MODULES = {"test_fuzz.py"}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skip collecting :data:`EXPENSIVE_SLOW_MODULES` when ``-m`` deselects slow tests."""
    markexpr = config.option.markexpr
    if collection_path.name in EXPENSIVE_SLOW_MODULES and markexpr:
        slow_selected = Expression.compile(markexpr).evaluate(lambda name, **_: name == "slow")
        if not slow_selected:
            return True
    return None


def _recording(check: Any) -> Any:
    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any) -> cnncore.gradcheck.GradientCheck:
        result = check(*args, **kwargs)
        if result.passed:  # a failing check fails its test; test_gradcheck plants some
            tolerance_log.record("gradient", result.error, result.bound)
        return result

    return wrapper


if os.environ.get(tolerance_log.VARIABLE):
    # The kernel audit: assert_gradient calls check_gradient through the module, so every
    # gradient check in the suite is recorded (tests/tolerance_log.py).
    cnncore.gradcheck.check_gradient = _recording(cnncore.gradcheck.check_gradient)
