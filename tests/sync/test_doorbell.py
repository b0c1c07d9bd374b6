"""The doorbell (0010_sync_doorbell): writers NOTIFY only while an engine sleeps, and the fence
lets no row written during the arming wait for the next poll."""

from __future__ import annotations

import asyncio

import psycopg

from apex_metrics.sync.checks import execute, insert_rows
from apex_metrics.sync.fakes import FakeSink

from .test_engine_fake import config, engine, wait_until


async def asleep(url: str) -> list[tuple[object, ...]]:
    return await execute(url, "SELECT id FROM sync_processes WHERE asleep_since IS NOT NULL")


async def test_an_idle_engine_arms_and_a_full_claim_disarms(database_url: str) -> None:
    """Polling every 10 minutes: only the doorbell's NOTIFY brings the lone row in time."""
    sink = FakeSink()
    running = engine(config(database_url, once=False, batch_size=50, poll_interval=600), sink)
    task = asyncio.create_task(running.run())
    try:
        await asyncio.wait_for(running.listening.wait(), 15)
        await wait_until(lambda: running._workers and all(w.idle for w in running._workers))
        assert await asleep(database_url) == [(running.id,)]
        await insert_rows(database_url, 1, prefix="lone-")
        await wait_until(lambda: "lone-1" in sink.rows)
        # 120 rows at once: the first claim is full (50), so the engine is at work and
        # disarms; once drained it finds nothing and arms again.
        await insert_rows(database_url, 120, prefix="burst-")
        await wait_until(lambda: sum(k.startswith("burst-") for k in sink.rows) == 120)
        assert [len(c) for c in sink.calls[1:]][:2] == [50, 50]
        await wait_until(lambda: all(w.idle for w in running._workers))
        assert await asleep(database_url) == [(running.id,)]
    finally:
        running.request_stop()
        await asyncio.wait_for(task, 15)
    assert await execute(database_url, "SELECT id FROM sync_processes") == []


async def test_the_fence_waits_for_a_writer_that_read_the_doorbell_unarmed(
    database_url: str,
) -> None:
    """A writer inserts (its trigger finds no engine asleep: no NOTIFY) and commits only after
    the engine armed the doorbell and went to sleep with a 10-minute poll. The fence makes the
    engine wait for that writer's commit and claim once more: the row goes out at once."""
    sink = FakeSink()
    async with await psycopg.AsyncConnection.connect(database_url) as writer:
        await writer.execute(
            "INSERT INTO campaign_metrics (campaign_id, run_id) VALUES ('c', 'in-flight')"
        )
        running = engine(config(database_url, once=False, poll_interval=600), sink)
        task = asyncio.create_task(running.run())
        try:
            await asyncio.wait_for(running.listening.wait(), 15)
            await wait_until(lambda: bool(running._workers))
            await asyncio.sleep(0.3)  # the worker armed the doorbell and waits on the fence
            await writer.commit()
            await wait_until(lambda: "in-flight" in sink.rows, timeout=5)
        finally:
            running.request_stop()
            await asyncio.wait_for(task, 15)
