"""One real server for the examples' tests (started once, on a free loopback port)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.client import Client
from service.testing import serve


@pytest.fixture(scope="package")
def base_url() -> Iterator[str]:
    with serve() as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[Client]:
    with Client(base_url) as api:
        yield api
