"""The engine against real PostgreSQL and a fake sink: claim, ack, retry, dead letters."""

from __future__ import annotations

import asyncio

from apex_metrics.sync.checks import compare, execute, insert_rows, pg_expected
from apex_metrics.sync.engine import Engine, EngineConfig
from apex_metrics.sync.fakes import FakeSink
from apex_metrics.sync.policy import RetryPolicy
from apex_metrics.sync.worker import WorkerConfig

FAST = RetryPolicy(max_attempts=5, base_wait=0.01, max_wait=0.05)


def config(url: str, **kw: object) -> EngineConfig:
    worker = WorkerConfig(
        batch_size=int(kw.pop("batch_size", 100)),  # type: ignore[call-overload]
        poll_interval=0.05,
        lease_seconds=float(kw.pop("lease_seconds", 10)),  # type: ignore[arg-type]
        once=bool(kw.pop("once", True)),
    )
    return EngineConfig(database_url=url, worker=worker, retry=FAST, **kw)  # type: ignore[arg-type]


async def pending(url: str) -> int:
    rows = await execute(url, "SELECT count(*) FROM v_campaign_metrics_pending")
    return int(rows[0][0])


async def test_once_drains_everything_in_batches(database_url: str) -> None:
    await insert_rows(database_url, 250)
    sink = FakeSink()
    stats = await asyncio.wait_for(Engine(config(database_url), sink).run(), 30)
    assert stats.created == 250 and stats.dead_lettered == 0
    assert [len(c) for c in sink.calls] == [100, 100, 50]
    assert await pending(database_url) == 0
    verdict = compare(await pg_expected(database_url), sink.rows, sink.writes)
    assert (verdict.lost, verdict.duplicated, verdict.stale) == (0, 0, 0)
    runs = await execute(
        database_url, "SELECT claimed, created, ended_at FROM sync_runs ORDER BY id"
    )
    assert [(r[0], r[1]) for r in runs] == [(100, 100), (100, 100), (50, 50)]
    assert all(r[2] is not None for r in runs)
