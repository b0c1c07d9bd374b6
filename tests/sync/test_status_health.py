"""Sync health has one owner (issue 17): rows in every state, and the view ``v_sync_health``,
its reader, ``sync status``, the engine's gauges, the panel's ``/api/sync`` and ``verify`` all
give the same pending, in flight, dead, retrying and lag."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from apex_metrics.ops.verify import VerifyOptions, _Context, _Failed
from apex_metrics.panel.app import PanelConfig, create_app
from apex_metrics.settings import Settings
from apex_metrics.sync.checks import execute, insert_rows
from apex_metrics.sync.queue import Failure, Queue, RunSummary
from apex_metrics.sync.status import get_status, read_health, retry_dead

FIGURES = ("pending", "in_flight", "dead", "retrying")
BACKLOG = re.compile(
    r"^(?P<pending>\d+) pending \((?P<retrying>\d+) retrying\), (?P<in_flight>\d+) in flight, "
    r"(?P<dead>\d+) dead; (?:oldest pending|the oldest pending waits) (?P<lag>[\d.]+) s"
)
LAG_SLACK = 30.0  # seconds the reads of one check may take, all together


@pytest.fixture
async def queue(database_url: str) -> AsyncIterator[Queue]:
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        await pool.open()
        yield Queue(pool)


def fail(row: dict[str, Any], *, dead: bool, delay: float = 0.0) -> Failure:
    return Failure(
        id=row["id"], version=row["version"], dead=dead, delay=delay, counted=True,
        code="0x80044331" if dead else "500", message="test",
    )  # fmt: skip


async def build_states(url: str, queue: Queue) -> None:
    """18 rows: 3 delivered, 4 in flight, 2 dead, 3 retrying, 1 changed after it went dead
    (pending again), 5 never tried. Their changes are 1000 s old (in flight), 5000 s (dead),
    200 s (retrying), 150 s (changed after dead) and 100 s (never tried)."""
    await insert_rows(url, 18)
    delivered = await queue.claim(owner="d/1", worker="d", limit=3, lease_seconds=60)
    assert delivered is not None
    done = [(r["id"], r["version"]) for r in delivered.rows]
    await queue.settle(delivered, done, [], RunSummary(created=3))
    in_flight = await queue.claim(owner="a/1", worker="a", limit=4, lease_seconds=3600)
    failing = await queue.claim(owner="f/1", worker="f", limit=5, lease_seconds=60)
    assert in_flight is not None and failing is not None
    rows = failing.rows
    failures = [fail(r, dead=True) for r in rows[:2]] + [
        fail(r, dead=False, delay=3600.0) for r in rows[2:]
    ]
    await queue.settle(failing, [], failures, RunSummary(failed=5))
    changed = await queue.claim(owner="g/1", worker="g", limit=1, lease_seconds=60)
    assert changed is not None
    await queue.settle(changed, [], [fail(changed.rows[0], dead=True)], RunSummary(failed=1))
    ids = {
        "in_flight": [r["id"] for r in in_flight.rows],
        "dead": [r["id"] for r in rows[:2]],
        "retrying": [r["id"] for r in rows[2:]],
        "changed": [changed.rows[0]["id"]],
    }
    async with await psycopg.AsyncConnection.connect(url) as conn:
        # a data column changed: a new version, no longer dead
        await conn.execute(
            "UPDATE campaign_metrics SET tokens_in = tokens_in + 1 WHERE id = ANY(%s)",
            [ids["changed"]],
        )
        await conn.execute(
            "UPDATE campaign_metrics SET updated_at = clock_timestamp() - make_interval(secs => "
            "CASE WHEN id = ANY(%(in_flight)s) THEN 1000 WHEN id = ANY(%(dead)s) THEN 5000"
            " WHEN id = ANY(%(retrying)s) THEN 200 WHEN id = ANY(%(changed)s) THEN 150"
            " ELSE 100 END)",
            ids,
        )
        await conn.commit()


async def from_view(url: str) -> dict[str, Any]:
    rows = await execute(
        url, "SELECT pending, in_flight, dead, retrying, lag_seconds FROM v_sync_health"
    )
    return dict(zip((*FIGURES, "lag_seconds"), rows[0], strict=True))


async def from_reader(url: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return (await read_health(conn)).to_dict()


async def from_status(url: str) -> dict[str, Any]:
    data = (await get_status(url)).to_dict()
    return {k: data[k] for k in (*FIGURES, "lag_seconds")}


async def from_panel(url: str) -> dict[str, Any]:
    app = create_app(PanelConfig(source="postgres", database_url=url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://panel.test") as c:
            answer = await c.get("/api/sync")
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    assert data["sync_engine"] is True
    return data


async def gate(url: str, name: str, **options: Any) -> tuple[bool, str]:
    """One of verify's gates against the database alone: (passed, figure)."""
    settings = Settings(_env_file=None, database_url=url)  # type: ignore[call-arg]
    ctx = _Context(settings, VerifyOptions(**options))
    ctx.db_ok = True  # gate 1 is not under test here
    try:
        return True, await getattr(ctx, name)()
    except _Failed as failed:
        return False, failed.figure


async def from_verify(url: str) -> dict[str, Any]:
    ok, figure = await gate(url, "backlog", backlog_threshold=86_400)
    assert ok, figure
    match = BACKLOG.match(figure)
    assert match is not None, figure
    return {k: int(match[k]) for k in FIGURES} | {"lag_seconds": float(match["lag"])}


async def every_reading(url: str, queue: Queue) -> dict[str, dict[str, Any]]:
    return {
        "view": await from_view(url),
        "reader": await from_reader(url),
        "sync status": await from_status(url),
        "gauges": (await queue.health()).to_dict(),
        "panel": await from_panel(url),
        "verify": await from_verify(url),
    }


def assert_agree(readings: dict[str, dict[str, Any]], expected: dict[str, int], lag: float) -> None:
    for where, figures in readings.items():
        assert {k: figures[k] for k in FIGURES} == expected, (where, figures)
        assert lag <= figures["lag_seconds"] <= lag + LAG_SLACK, (where, figures)


async def test_every_reader_agrees_on_every_figure(database_url: str, queue: Queue) -> None:
    await build_states(database_url, queue)
    # pending: 3 retrying + 1 changed after it went dead + 5 never tried; the lag is the oldest
    # of them (retrying, 200 s): neither the rows in flight (1000 s) nor the dead (5000 s)
    expected = {"pending": 9, "in_flight": 4, "dead": 2, "retrying": 3}
    assert_agree(await every_reading(database_url, queue), expected, 200)
    # the three states split the undelivered rows between them
    undelivered = await execute(database_url, "SELECT count(*) FROM v_campaign_metrics_pending")
    assert undelivered[0][0] == 9 + 4 + 2

    # A lease that expired is no longer in flight: its rows are pending (and the oldest now).
    await execute(
        database_url,
        "UPDATE sync_leases SET lease_until = clock_timestamp() - interval '1 s'"
        " WHERE lease_owner = 'a/1'",
    )
    expected = {"pending": 13, "in_flight": 0, "dead": 2, "retrying": 3}
    assert_agree(await every_reading(database_url, queue), expected, 1000)


async def test_verify_judges_dead_rows_apart_from_the_backlog(
    database_url: str, queue: Queue
) -> None:
    await build_states(database_url, queue)
    # the dead rows are 5000 s old, in flight 1000 s: neither makes the backlog late
    ok, figure = await gate(database_url, "backlog", backlog_threshold=300)
    assert ok, figure
    assert figure.startswith("9 pending (3 retrying), 4 in flight, 2 dead; oldest pending 2")
    ok, figure = await gate(database_url, "backlog", backlog_threshold=150)
    assert not ok and "the oldest pending waits 200 s (threshold 150 s)" in figure, figure
    ok, figure = await gate(database_url, "dead")
    assert (ok, figure) == (False, "2 row(s) dead-lettered")
    report = await retry_dead(database_url)
    assert len(report.requeued) == 2
    ok, figure = await gate(database_url, "dead")
    assert (ok, figure) == (True, "0 rows dead-lettered")
    # re-queued rows are pending again, and the oldest of them sets the lag
    ok, figure = await gate(database_url, "backlog", backlog_threshold=86_400)
    assert ok and figure.startswith(
        "11 pending (3 retrying), 4 in flight, 0 dead; oldest pending 5"
    )


async def test_nothing_waiting_reads_zero_everywhere(database_url: str, queue: Queue) -> None:
    zero = {"pending": 0, "in_flight": 0, "dead": 0, "retrying": 0}
    readings = await every_reading(database_url, queue)
    assert_agree(readings, zero, 0.0)
    assert all(r["lag_seconds"] == 0.0 for r in readings.values()), readings
