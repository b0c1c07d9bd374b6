"""The broadcaster and the watcher without HTTP."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from apex_metrics.panel.live import Broadcaster, Watcher


async def test_broadcaster_fans_out_and_drops_the_oldest_for_slow_subscribers() -> None:
    hub = Broadcaster(queue_size=2)
    async with hub.subscribe() as fast, hub.subscribe() as slow:
        assert hub.subscribers == 2
        hub.publish({"n": 1})
        assert (await asyncio.wait_for(fast.get(), 1)) == {"n": 1}
        hub.publish({"n": 2})
        hub.publish({"n": 3})
        assert [slow.get_nowait()["n"] for _ in range(slow.qsize())] == [2, 3]
    assert hub.subscribers == 0
    hub.publish({"n": 4})  # nobody listening: no error
    assert hub.last == {"n": 4}


async def test_watcher_publishes_only_when_the_watermark_moves() -> None:
    marks = iter(["1", "1", "2", "2", "2", "3"])
    seen = datetime(2026, 1, 1, tzinfo=UTC)

    async def watermark() -> str:
        return next(marks)

    async def last_run_at() -> datetime:
        return seen

    hub = Broadcaster()
    watcher = Watcher(watermark, last_run_at, hub, interval=0.01)
    async with hub.subscribe() as queue:
        moved = [await watcher.check() for _ in range(6)]
        assert moved == [True, False, True, False, False, True]
        events = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [e["watermark"] for e in events] == ["1", "2", "3"]
    assert all(e["type"] == "change" and e["last_run_at"] == seen.isoformat() for e in events)


async def test_watcher_survives_source_errors_and_wakes_early() -> None:
    calls = 0

    async def watermark() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("source down")
        return str(calls)

    async def last_run_at() -> None:
        return None

    hub = Broadcaster()
    wake = asyncio.Event()
    watcher = Watcher(watermark, last_run_at, hub, interval=30, wake=wake)
    async with hub.subscribe() as queue:
        task = asyncio.create_task(watcher.run())
        try:
            await asyncio.sleep(0.05)
            assert watcher.errors == 1 and queue.empty()
            wake.set()  # a NOTIFY: no 30 s wait
            event = await asyncio.wait_for(queue.get(), 5)
            assert event["watermark"] == "2" and watcher.errors == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
