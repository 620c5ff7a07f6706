"""The dataplane's shape-keyed budget memos (the same numbers as computing them afresh,
and an unloaded model is not kept alive by them), and where its work runs: small work on
the event loop in a slot it holds, anything else on a worker thread."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import numpy as np

import cnncore
from service.app import open_repository
from service.compute import ComputeSlots
from service.dataplane import INLINE_FLOPS, DataPlane, model_budget, network_budget
from service.settings import Settings


def test_model_budget_is_graph_infer_and_holds_the_model_weakly() -> None:
    model = open_repository(Settings()).entry("digits").model
    assert model is not None
    for backward in (False, True):
        info = model.graph.infer((3, 1, 8, 8))
        expected = (
            tuple(info.output_shape),
            info.total_flops,
            info.working_bytes(4, backward=backward),
        )
        assert model_budget(model, (3, 1, 8, 8), 4, backward) == expected
        assert model_budget(model, (3, 1, 8, 8), 4, backward) == expected  # remembered
    ref = weakref.ref(model)
    del model, info
    gc.collect()
    assert ref() is None


def test_network_budget_depends_on_shapes_not_values() -> None:
    w = np.ones((4, 2, 3, 3))
    first = network_budget([cnncore.Conv2d(w, None, padding=1)], (2, 2, 9, 9), 8, True)
    again = network_budget([cnncore.Conv2d(-w, None, padding=1)], (2, 2, 9, 9), 8, True)
    other = network_budget([cnncore.Conv2d(w, None, padding=0)], (2, 2, 9, 9), 8, True)
    assert first == again
    assert first != other
    info = cnncore.network.network_graph([cnncore.Conv2d(w, None, padding=0)]).infer((2, 2, 9, 9))
    assert other == (3 * info.total_flops, info.working_bytes(8, backward=True) + w.nbytes)


# --------------------------------------------------------------------------- run_async


def _plane(slots: int = 1) -> DataPlane:
    settings = Settings(max_concurrency=slots, queue_timeout=5)
    compute = ComputeSlots(slots, settings.queue_timeout, settings.retry_after)
    return DataPlane(settings, open_repository(settings), compute, None)


def test_small_work_runs_on_the_loop_holding_the_only_slot() -> None:
    plane = _plane(slots=1)

    async def main() -> tuple[threading.Thread, threading.Thread]:
        # run() inside must not take a second slot: with one slot it would wait, then 503.
        small = await plane.run_async(INLINE_FLOPS, lambda: plane.run(threading.current_thread))
        big = await plane.run_async(INLINE_FLOPS + 1, lambda: threading.current_thread())
        return small[0], big

    small, big = asyncio.run(main())
    assert small is threading.current_thread()  # asyncio.run's loop runs on this thread
    assert big is not threading.current_thread()


def test_small_work_waits_on_a_worker_thread_when_no_slot_is_free() -> None:
    plane = _plane(slots=1)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with plane.slots.acquire():
            held.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(timeout=30)

    async def main() -> tuple[threading.Thread, list[str]]:
        events: list[str] = []

        async def meanwhile() -> None:
            await asyncio.sleep(0.05)
            events.append("the loop ran")  # not blocked by the waiting computation
            release.set()

        task = asyncio.create_task(meanwhile())
        ran = await plane.run_async(10, lambda: plane.run(threading.current_thread))
        await task
        return ran[0], events

    try:
        ran, events = asyncio.run(main())
    finally:
        release.set()
        holder.join()
    assert ran is not threading.current_thread()
    assert events == ["the loop ran"]
