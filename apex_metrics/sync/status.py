"""Sync health, ``sync status``, ``sync retry-dead`` and ``sync replay``: read and re-queue, no
HTTP.

The sync health figures have one definition, the view ``v_sync_health`` (migration 0011), and
one reader, :func:`read_health`: ``sync status``, the panel's ``/api/sync``, ``verify`` and the
engine's gauges all go through it. Over the rows not delivered at their current version:

pending      waiting to be sent: neither in flight nor dead (retrying rows included)
in_flight    leased now by a worker (a lease that has not expired)
dead         dead-lettered at the row's current version (``sync retry-dead`` re-queues them)
retrying     pending rows whose next attempt is scheduled later (a part of pending)
lag_seconds  age of the oldest pending row's change, by the database clock; 0.0 when nothing
             is pending

pending + in_flight + dead is every undelivered row. docs/operations.md, "Sync health figures",
says the same for operators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from apex_metrics import db
from apex_metrics.sql import load_queries
from apex_metrics.sync.errors import SyncError

Q = load_queries("sync.sql")


@dataclass(frozen=True, slots=True)
class Health:
    """The sync health figures (see the module docstring for what each one counts)."""

    pending: int
    in_flight: int
    dead: int
    retrying: int
    lag_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "in_flight": self.in_flight,
            "dead": self.dead,
            "retrying": self.retrying,
            "lag_seconds": round(self.lag_seconds, 3),
        }


async def read_health(conn: AsyncConnection[Any]) -> Health:
    """The sync health figures from ``v_sync_health``: the one reader of that view."""
    cur = await conn.execute(Q["sync_health"])
    row = await cur.fetchone()
    assert row is not None  # an aggregate: always one row
    pending, in_flight, dead, retrying, lag = row
    return Health(int(pending), int(in_flight), int(dead), int(retrying), float(lag))


async def health_installed(conn: AsyncConnection[Any]) -> bool:
    """Whether the database has ``v_sync_health`` and the run history (for readers, such as
    the panel, that do not require the latest schema)."""
    cur = await conn.execute(Q["sync_health_installed"])
    row = await cur.fetchone()
    return bool(row and row[0])


async def read_runs(conn: AsyncConnection[Any], limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` sync runs, newest first (rows of ``sync_runs``, values as stored)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(Q["last_runs"], {"limit": limit})
    return await cur.fetchall()


@dataclass(frozen=True, slots=True)
class Status:
    """What ``sync status`` shows: the health figures, throughput, last errors and runs."""

    health: Health
    delivered_last_minute: int
    delivered_last_hour: int
    last_errors: list[dict[str, Any]] = field(default_factory=list)
    last_runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.health.pending

    @property
    def in_flight(self) -> int:
        return self.health.in_flight

    @property
    def dead(self) -> int:
        return self.health.dead

    @property
    def retrying(self) -> int:
        return self.health.retrying

    @property
    def lag_seconds(self) -> float:
        return self.health.lag_seconds

    @property
    def rows_per_second(self) -> float:
        return self.delivered_last_minute / 60

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.health.to_dict(),
            "throughput": {
                "delivered_last_minute": self.delivered_last_minute,
                "delivered_last_hour": self.delivered_last_hour,
                "rows_per_second": round(self.rows_per_second, 2),
            },
            "last_errors": self.last_errors,
            "last_runs": self.last_runs,
        }


async def get_status(url: str | None, *, errors: int = 10, runs: int = 10) -> Status:
    async with await db.connect(url) as conn:
        await db.ensure_migrated(conn)
        health = await read_health(conn)
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(Q["throughput"], {"seconds": 60})
        minute = await cur.fetchone()
        await cur.execute(Q["throughput"], {"seconds": 3600})
        hour = await cur.fetchone()
        await cur.execute(Q["last_errors"], {"limit": errors})
        last_errors = [_plain(r) for r in await cur.fetchall()]
        last_runs = [_plain(r) for r in await read_runs(conn, runs)]
    assert minute is not None and hour is not None
    return Status(
        health=health,
        delivered_last_minute=int(minute["delivered"]),
        delivered_last_hour=int(hour["delivered"]),
        last_errors=last_errors,
        last_runs=last_runs,
    )


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


@dataclass(frozen=True, slots=True)
class RequeueReport:
    requeued: list[str]  # run ids now pending again
    not_dead: list[str] = field(default_factory=list)  # asked for, exist, but are not dead
    unknown: list[str] = field(default_factory=list)  # asked for, no such run id

    def to_dict(self) -> dict[str, Any]:
        return {
            "requeued": len(self.requeued),
            "run_ids": self.requeued[:1000],
            "not_dead": self.not_dead,
            "unknown": self.unknown,
        }


async def retry_dead(url: str | None, run_ids: list[str] | None = None) -> RequeueReport:
    """Re-queue dead rows (all of them, or those of the given run ids) with fresh attempts."""
    async with await db.connect(url) as conn:
        await db.ensure_migrated(conn)
        async with conn.transaction():
            if run_ids:
                cur = await conn.execute(Q["dead_run_ids"], {"run_ids": run_ids})
                state = {str(r[0]): bool(r[1]) for r in await cur.fetchall()}
                cur = await conn.execute(Q["retry_dead_runs"], {"run_ids": run_ids})
            else:
                state = {}
                cur = await conn.execute(Q["retry_dead_all"])
            requeued = sorted(str(r[0]) for r in await cur.fetchall())
            if requeued:
                await conn.execute(Q["notify_pending"])
    asked = list(dict.fromkeys(run_ids or []))
    return RequeueReport(
        requeued=requeued,
        not_dead=[r for r in asked if r in state and not state[r]],
        unknown=[r for r in asked if r not in state],
    )


async def replay(url: str | None, since: datetime) -> int:
    """Send again every row changed at or after ``since``. Returns how many were re-queued."""
    if since.tzinfo is None:
        raise SyncError(
            f"--since {since.isoformat()}: must carry a time zone",
            hint="e.g. 2026-01-31T00:00:00Z",
        )
    async with await db.connect(url) as conn:
        await db.ensure_migrated(conn)
        async with conn.transaction():
            cur = await conn.execute(Q["replay_since"], {"since": since})
            count = cur.rowcount
            if count:
                await conn.execute(Q["notify_pending"])
    return int(count)
