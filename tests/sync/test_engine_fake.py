"""The engine against real PostgreSQL and a fake sink: claim, ack, retry, dead letters, fences."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from apex_metrics.dataverse.flow import Flow
from apex_metrics.dataverse.pacing import Pacer
from apex_metrics.dataverse.retry import RetryPolicy
from apex_metrics.sync.checks import compare, execute, insert_rows, pg_expected
from apex_metrics.sync.engine import Engine, EngineConfig
from apex_metrics.sync.fakes import FakeSink
from apex_metrics.sync.reconcile import reconcile
from apex_metrics.sync.status import get_status, replay, retry_dead
from apex_metrics.sync.worker import WorkerConfig

FAST = RetryPolicy(max_attempts=5, base_wait=0.01, max_wait=0.05)


def config(
    url: str,
    *,
    batch_size: int = 100,
    lease_seconds: float = 10,
    once: bool = True,
    workers: int = 1,
    retry: RetryPolicy = FAST,
    poll_interval: float = 0.05,
) -> EngineConfig:
    worker = WorkerConfig(
        batch_size=batch_size, poll_interval=poll_interval, lease_seconds=lease_seconds, once=once
    )
    return EngineConfig(database_url=url, workers=workers, worker=worker, retry=retry)


def engine(cfg: EngineConfig, sink: FakeSink, concurrency: int = 4) -> Engine:
    """The engine with the fake sink behind a flow (slots shared in PostgreSQL, no rest
    between requests: this tests the queue, not the pacing)."""
    pacer = Pacer(concurrency=concurrency, utilization=1.0, seconds_per_request=0.0)
    sink.flow = Flow(pacer, RetryPolicy(max_attempts=1))
    return Engine(cfg, sink, pacer)


async def run_once(url: str, sink: FakeSink, **kw: Any) -> Any:
    return await asyncio.wait_for(engine(config(url, **kw), sink).run(), 60)


async def scalar(url: str, query: str) -> Any:
    return (await execute(url, query))[0][0]


async def assert_converged(url: str, sink: FakeSink) -> None:
    verdict = compare(await pg_expected(url), sink.rows, sink.writes)
    assert (verdict.lost, verdict.stale, verdict.extra) == (0, 0, 0), verdict


async def test_once_drains_everything_in_batches(database_url: str) -> None:
    await insert_rows(database_url, 250)
    sink = FakeSink()
    stats = await run_once(database_url, sink)
    assert stats.created == 250 and stats.dead_lettered == 0
    assert [len(c) for c in sink.calls] == [100, 100, 50]
    assert await scalar(database_url, "SELECT count(*) FROM v_campaign_metrics_pending") == 0
    await assert_converged(database_url, sink)
    assert max(sink.writes.values()) == 1
    runs = await execute(
        database_url, "SELECT claimed, created, ended_at FROM sync_runs ORDER BY id"
    )
    assert [(r[0], r[1]) for r in runs] == [(100, 100), (100, 100), (50, 50)]
    assert all(r[2] is not None for r in runs)


async def test_changed_rows_are_sent_again_with_latest_values(database_url: str) -> None:
    await insert_rows(database_url, 20)
    sink = FakeSink()
    await run_once(database_url, sink)
    await execute(database_url, "UPDATE campaign_metrics SET tokens_in = 7 WHERE id <= 5")
    stats = await run_once(database_url, sink)
    assert (stats.claimed, stats.updated) == (5, 5)
    await assert_converged(database_url, sink)


async def test_transient_failures_are_retried_until_delivered(database_url: str) -> None:
    await insert_rows(database_url, 300)
    sink = FakeSink(fail_rate=0.3, batch_fail_rate=0.2, retry_after=0.01)
    stats = await run_once(database_url, sink, retry=RetryPolicy(20, 0.005, 0.02))
    assert stats.failed > 0 and stats.dead_lettered == 0
    await assert_converged(database_url, sink)


async def test_invalid_row_is_dead_lettered_at_once_and_others_delivered(
    database_url: str,
) -> None:
    await insert_rows(database_url, 50)
    sink = FakeSink(invalid={"run-7"})
    stats = await run_once(database_url, sink)
    assert stats.dead_lettered == 1 and stats.dead_keys == ["run-7"]
    assert stats.created == 49
    assert len(sink.calls) == 1  # dead at the first attempt: no retry
    row = (
        await execute(
            database_url,
            "SELECT sync_last_error_code, sync_last_error, l.attempts "
            "FROM campaign_metrics AS c JOIN sync_leases AS l ON l.id = c.id "
            "WHERE run_id = 'run-7'",
        )
    )[0]
    assert row == ("0x80044331", "A validation error occurred.", 1)
    status = await get_status(database_url)
    assert (status.dead, status.pending) == (1, 0)
    assert status.last_errors[0]["run_id"] == "run-7" and status.last_errors[0]["dead"]
    # A dead row stays dead across runs and never blocks the others.
    await insert_rows(database_url, 3, prefix="late-")
    stats = await run_once(database_url, sink)
    assert (stats.created, stats.claimed) == (3, 3)
    # Fixed at the source side, retry-dead delivers it.
    sink.invalid.clear()
    report = await retry_dead(database_url, ["run-7", "run-8", "nope"])
    assert report.requeued == ["run-7"]
    assert (report.not_dead, report.unknown) == (["run-8"], ["nope"])
    stats = await run_once(database_url, sink)
    assert stats.created == 1
    assert (await get_status(database_url)).dead == 0
    await assert_converged(database_url, sink)


async def test_row_dead_after_max_attempts(database_url: str) -> None:
    await insert_rows(database_url, 5)
    sink = FakeSink(fail_rate=1.0)
    stats = await run_once(database_url, sink, retry=RetryPolicy(3, 0.005, 0.01))
    assert stats.dead_lettered == 5 and stats.failed == 15
    assert sum(len(c) for c in sink.calls) == 15  # 3 attempts per row, then dead
    assert await scalar(database_url, "SELECT max(attempts) FROM sync_leases") == 3


async def test_429_pauses_and_does_not_count_as_attempt(database_url: str) -> None:
    await insert_rows(database_url, 10)
    sink = FakeSink(throttle_next=3, retry_after=0.4)
    stats = await run_once(database_url, sink, retry=RetryPolicy(2, 0.005, 0.01))
    assert stats.throttled == 3 and stats.dead_lettered == 0 and stats.created == 10
    await assert_converged(database_url, sink)
    gaps = [b - a for a, b in zip(sink.call_times, sink.call_times[1:], strict=False)]
    assert len(gaps) >= 3
    for gap in gaps[:3]:  # after each 429, nothing was sent for exactly Retry-After
        assert 0.39 <= gap < 0.4 + 0.25, gaps


async def test_row_changed_in_flight_stays_pending_and_ends_latest(database_url: str) -> None:
    await insert_rows(database_url, 10)
    changed = False

    async def change_during_send(keys: list[str]) -> None:
        nonlocal changed
        if not changed:
            changed = True
            await execute(
                database_url, "UPDATE campaign_metrics SET tokens_out = 1 WHERE run_id = 'run-3'"
            )

    sink = FakeSink(on_call=change_during_send)
    stats = await run_once(database_url, sink)
    assert stats.requeued == 1
    assert sink.writes["run-3"] == 2  # sent stale first, then the latest values
    await assert_converged(database_url, sink)


async def test_fenced_ack_ignores_a_claim_whose_lease_was_taken(database_url: str) -> None:
    await insert_rows(database_url, 3)
    first = FakeSink()
    # An expired lease (0.2 s) is taken over by a second engine while the first is still sending.
    first.delay = 1.0
    slow = asyncio.create_task(run_once(database_url, first, lease_seconds=0.2))
    await asyncio.sleep(0.5)
    second = FakeSink()
    stats2 = await run_once(database_url, second)
    stats1 = await slow
    assert stats2.created == 3
    assert stats1.lost_lease == 3 and stats1.created == 0  # its ack touched nothing
    await assert_converged(database_url, second)


async def test_replay_and_reconcile_repair(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await insert_rows(database_url, 30)
    sink = FakeSink()
    await run_once(database_url, sink)
    report = await reconcile(database_url, sink)
    assert report.clean and report.matching == 30
    # Damage Dataverse: one row lost, one changed, one unknown key.
    del sink.rows["run-1"]
    sink.rows["run-2"]["apex_tokensin"] = -1
    sink.rows["ghost"] = dict(sink.rows["run-3"])
    report = await reconcile(database_url, sink, repair=True)
    assert (report.missing, report.different, report.extra) == (1, 1, 1)
    assert report.samples["different"][0] == {"run_id": "run-2", "columns": ["tokens_in"]}
    assert report.requeued == 2
    await run_once(database_url, sink)
    assert not (await reconcile(database_url, sink, repair=True)).clean  # extras stay
    for n in range(3):
        sink.rows[f"ghost-{n}"] = dict(sink.rows["run-3"])
    monkeypatch.setattr("apex_metrics.sync.reconcile.CHUNK", 3)  # extra keys span two pages
    deleted = await reconcile(database_url, sink, delete_extra=True)
    assert (deleted.deleted, deleted.extra, deleted.dataverse_rows) == (4, 0, 30)
    assert "ghost" not in sink.rows and deleted.clean
    assert (await reconcile(database_url, sink)).clean
    assert await replay(database_url, datetime(2000, 1, 1, tzinfo=UTC)) == 30
    stats = await run_once(database_url, sink)
    assert stats.updated == 30


async def wait_until(predicate: Any, timeout: float = 15) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_notify_wakes_idle_workers_and_the_listener_reconnects(database_url: str) -> None:
    """Polling every 10 minutes: only NOTIFY can deliver these rows within the test's timeout."""
    sink = FakeSink()
    running = engine(config(database_url, once=False, workers=2, poll_interval=600), sink)
    task = asyncio.create_task(running.run())
    try:
        await asyncio.wait_for(running.listening.wait(), 15)
        await asyncio.sleep(0.2)  # let both workers finish their first (empty) drain
        await insert_rows(database_url, 1, prefix="lone-")
        await wait_until(lambda: "lone-1" in sink.rows)
        assert sink.calls[-1] == ["lone-1"]  # a lone row goes out alone, at once
        running.listening.clear()
        killed = await execute(
            database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'apex-metrics-sync-listener' "
            "AND datname = current_database()",
        )
        assert killed == [(True,)]
        await asyncio.wait_for(running.listening.wait(), 15)
        await asyncio.sleep(0.2)
        await insert_rows(database_url, 1, prefix="after-")
        await wait_until(lambda: "after-1" in sink.rows)
        alive = await execute(database_url, "SELECT id, workers FROM sync_processes")
        assert alive == [(running.id, 2)]  # the heartbeat of a live process
    finally:
        running.request_stop()
        stats = await asyncio.wait_for(task, 15)
    assert stats.created == 2 and stats.db_errors == 0
    assert await execute(database_url, "SELECT id FROM sync_processes") == []  # clean stop


async def test_workers_survive_terminated_backends(database_url: str) -> None:
    await insert_rows(database_url, 400)
    calls = killed = 0

    async def kill_pool_backends(keys: list[str]) -> None:
        nonlocal calls, killed
        if calls < 3:
            calls += 1
            rows = await execute(
                database_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'apex-metrics-sync' AND datname = current_database()",
            )
            killed += sum(1 for r in rows if r[0])

    sink = FakeSink(on_call=kill_pool_backends)
    stats = await run_once(database_url, sink, batch_size=50, workers=2, lease_seconds=5)
    assert killed >= 3  # the pool's connections died under the workers, which went on
    assert stats.delivered >= 400
    await assert_converged(database_url, sink)
    assert await scalar(database_url, "SELECT count(*) FROM v_campaign_metrics_pending") == 0


async def test_a_value_python_cannot_load_does_not_block_the_queue(database_url: str) -> None:
    await insert_rows(database_url, 5)
    # The schema refuses years past 9999 since migration 0004; a database altered by hand (or
    # migrated before it) may still hold one, and the engine must not choke on it.
    await execute(
        database_url,
        "ALTER TABLE campaign_metrics DROP CONSTRAINT campaign_metrics_created_at_check",
    )
    await execute(
        database_url,
        "UPDATE campaign_metrics SET created_at = '12000-01-01 00:00:00+00' WHERE run_id = 'run-2'",
    )
    sink = FakeSink()
    stats = await run_once(database_url, sink)
    assert stats.created == 5  # the fake accepts it; Dataverse would dead-letter it (400)
    assert sink.rows["run-2"]["apex_createdat"] == "12000-01-01T00:00:00Z"
    assert sink.rows["run-1"]["apex_createdat"] == "2026-01-01T00:00:01Z"


async def test_run_history_keeps_the_retention_window(database_url: str) -> None:
    await execute(
        database_url,
        "INSERT INTO sync_runs (worker, started_at, ended_at) VALUES "
        "('old', now() - interval '40 days', now() - interval '40 days'), "
        "('recent', now() - interval '2 days', now() - interval '2 days')",
    )
    await insert_rows(database_url, 3)
    await run_once(database_url, FakeSink())  # retention 30 days (default)
    workers = [r[0] for r in await execute(database_url, "SELECT worker FROM sync_runs")]
    assert "old" not in workers and "recent" in workers and len(workers) == 2
