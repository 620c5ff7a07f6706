"""Admission control: beyond CNN_MAX_CONCURRENCY + CNN_MAX_QUEUE, an immediate 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from service.app import create_app
from service.settings import Settings

BODY_HEAD = b'{"x": [[[[1, 2], [3, 4]]]], "kernel_size": 2'


def test_request_over_capacity_is_refused_before_its_body_is_read() -> None:
    # A queue timeout far beyond the test's safety net: a refusal that waited for it (instead
    # of coming at once) fails the wait_for below rather than passing slowly.
    app = create_app(Settings(max_concurrency=1, max_queue=0, queue_timeout=3600))
    release = asyncio.Event()
    pulled = []

    async def slow_body() -> AsyncIterator[bytes]:
        yield BODY_HEAD
        await release.wait()
        yield b"}"

    async def refused_body() -> AsyncIterator[bytes]:
        pulled.append(True)  # never reached: the 503 comes before the body is read
        yield BODY_HEAD + b"}"

    async def scenario() -> tuple[httpx.Response, httpx.Response, bool]:
        transport = httpx.ASGITransport(app=app)
        headers = {"content-type": "application/json"}
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            first = asyncio.create_task(
                http.post("/v1/pool2d/forward", content=slow_body(), headers=headers)
            )
            while app.state.slots.admitted == 0:  # the first request is now uploading
                await asyncio.sleep(0.01)
            refused = http.post("/v1/pool2d/forward", content=refused_body(), headers=headers)
            second = await asyncio.wait_for(refused, timeout=60)  # a safety net, not a target
            first_still_running = not first.done()
            release.set()
            return await first, second, first_still_running

    first, second, first_still_running = asyncio.run(scenario())
    assert first.status_code == 200
    assert second.status_code == 503
    assert second.headers["content-type"] == "application/problem+json"
    assert second.headers["retry-after"] == "1"
    assert "capacity" in second.json()["detail"]
    assert first_still_running  # refused while the slot was taken, not after it came free
    assert not pulled
    assert app.state.slots.admitted == 0


def test_gets_are_not_admission_controlled() -> None:
    app = create_app(Settings(max_concurrency=1, max_queue=0))
    app.state.slots.admitted = app.state.slots.capacity  # as if saturated

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get("/health/live")

    assert asyncio.run(scenario()).status_code == 200


@pytest.mark.parametrize(
    ("concurrency", "queue", "expected"), [(2, None, 10), (3, 0, 3), (1, 5, 6)]
)
def test_capacity_is_slots_plus_queue(concurrency: int, queue: int | None, expected: int) -> None:
    settings = Settings(max_concurrency=concurrency, max_queue=queue)
    assert create_app(settings).state.slots.capacity == expected
    assert settings.limits()["max_queue"] == expected - concurrency
