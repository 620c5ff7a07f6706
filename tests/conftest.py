"""Fixtures shared by every test."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import pytest

import cnncore.gradcheck
from tests import tolerance_log


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: every test sees the same numbers on every run."""
    return np.random.default_rng(20261126)


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
