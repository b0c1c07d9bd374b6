"""Where the panel reads runs from: the :class:`Source` protocol and the PostgreSQL source.

A source answers with sums (:class:`~apex_metrics.panel.kpis.Totals`); the API derives the KPIs.
``PostgresSource`` reads the daily and hourly rollups for full days and hours, and raw rows for
the partial edge hours and for hours the rollup refresher has not folded yet, in one snapshot
(:mod:`apex_metrics.rollup`; ``use_rollup=False`` reads raw rows only: the benchmark's
baseline). The Dataverse source is in ``dataverse_source.py``. Sync health always comes from
PostgreSQL, through the sync engine's one reader (:class:`SyncHealthReader`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Final, LiteralString, Protocol

from psycopg import AsyncConnection, conninfo
from psycopg_pool import AsyncConnectionPool

from apex_metrics.metric import KEY_FIRST_NAMES
from apex_metrics.panel.kpis import Totals, Window
from apex_metrics.panel.params import Filters
from apex_metrics.sql import load_queries
from apex_metrics.sync.status import Health, health_installed, read_health, read_runs

Q: Final = load_queries("panel.sql")
# A run's fields, the key first: the order of the `runs` query, /api/runs and the CSV export.
RUN_FIELDS: Final = KEY_FIRST_NAMES

Series = list[tuple[datetime, Totals]]


class Source(Protocol):
    """What the panel needs from a store of runs."""

    name: str

    async def totals(self, filters: Filters, window: Window) -> Totals:
        """Sums and p95 of run p95s over ``window`` with the filters' campaign and phase."""
        ...

    async def series(self, filters: Filters, width: int) -> Series:
        """Per-bucket totals over the filters' window; buckets of ``width`` seconds."""
        ...

    async def campaigns(self, filters: Filters, limit: int) -> list[tuple[str, Totals]]:
        """Per-campaign sums, biggest cost first."""
        ...

    def runs(self, filters: Filters, limit: int) -> AsyncIterator[dict[str, Any]]:
        """The newest runs of the window, newest first."""
        ...

    async def options(self) -> dict[str, list[str]]:
        """Campaigns and phases to offer in the filters."""
        ...

    async def last_run_at(self) -> datetime | None:
        """When the newest run was created."""
        ...

    async def watermark(self) -> str:
        """A cheap value that changes whenever what the panel shows may have changed."""
        ...


def panel_conninfo(database_url: str) -> str:
    """The panel's connection string: JIT compilation off (options in the URL are kept).

    The readers' plans carry a generous estimate for the raw rows of stale hours, which pushes
    their cost past ``jit_above_cost``: compiling then takes longer (about 30 ms) than any of
    these queries runs."""
    options = conninfo.conninfo_to_dict(database_url).get("options")
    jit_off = "-c jit=off"
    return conninfo.make_conninfo(
        database_url, options=f"{options} {jit_off}" if options else jit_off
    )


def run_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(RUN_FIELDS, row, strict=True))


class PostgresSource:
    """Runs in PostgreSQL: rollups plus raw edge and stale hours."""

    name = "postgres"

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]], *, use_rollup: bool = True):
        self.pool = pool
        self.use_rollup = use_rollup

    def _args(
        self, filters: Filters, window: Window, *, raw: bool = False, days: bool = True
    ) -> dict[str, Any]:
        tiers = window.raw_only() if raw or not self.use_rollup else window.tiers(days=days)
        return {
            "start": window.start,
            "end": window.end,
            "h1": tiers.h1,
            "h2": tiers.h2,
            "d1": tiers.d1,
            "d2": tiers.d2,
            "campaign": filters.campaign,
            "phase": filters.phase,
        }

    async def _fetch(self, name: LiteralString, args: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            conn.prepare_threshold = None  # plan with the real values (optional filters)
            cur = await conn.execute(Q[name], args)
            return await cur.fetchall()

    async def totals(self, filters: Filters, window: Window) -> Totals:
        args = self._args(filters, window)
        sums, p95 = await asyncio.gather(
            self._fetch("totals", args), self._fetch("latency_p95", args)
        )
        return Totals.from_row(sums[0], p95[0][0])

    async def series(self, filters: Filters, width: int) -> Series:
        window = filters.window
        rollup = width % 3600 == 0
        days = width % 86400 == 0
        args = {**self._args(filters, window, raw=not rollup, days=days), "width": width}
        sums, p95s = await asyncio.gather(
            self._fetch("series_totals", args), self._fetch("series_p95", args)
        )
        p95_by_bucket = {row[0]: row[1] for row in p95s}
        return [(row[0], Totals.from_row(row[1:], p95_by_bucket.get(row[0]))) for row in sums]

    async def campaigns(self, filters: Filters, limit: int) -> list[tuple[str, Totals]]:
        args = {**self._args(filters, filters.window), "limit": limit}
        rows = await self._fetch("campaigns", args)
        # p95 of run p95s per campaign, from the campaign histogram (as a campaign-filtered tile).
        p95s = await asyncio.gather(
            *(
                self._fetch(
                    "latency_p95",
                    self._args(dataclasses.replace(filters, campaign=row[0]), filters.window),
                )
                for row in rows
            )
        )
        pairs = zip(rows, p95s, strict=True)
        return [(row[0], Totals.from_row(row[1:], p95[0][0])) for row, p95 in pairs]

    async def runs(self, filters: Filters, limit: int) -> AsyncIterator[dict[str, Any]]:
        args = {**self._args(filters, filters.window, raw=True), "limit": limit}
        async with self.pool.connection() as conn:
            conn.prepare_threshold = None
            async with conn.cursor(name="apex_metrics_panel_runs") as cur:
                cur.itersize = 2000
                await cur.execute(Q["runs"], args)
                async for row in cur:
                    yield run_dict(row)

    async def options(self) -> dict[str, list[str]]:
        rows = await self._fetch("filter_options", {})
        campaigns = sorted({r[0] for r in rows})
        phases = sorted({r[1] for r in rows if r[1] is not None})
        return {"campaigns": campaigns, "phases": phases}

    async def last_run_at(self) -> datetime | None:
        rows = await self._fetch("last_run", {})
        value: datetime | None = rows[0][0]
        return value

    async def watermark(self) -> str:
        rows = await self._fetch("watermark", {})
        return f"{rows[0][0]}:{rows[0][1]}"


NOT_INSTALLED: Final = "sync engine not installed: run `apex-metrics db migrate`"


class SyncHealthReader:
    """Sync health for ``/api/sync``: the figures of :func:`apex_metrics.sync.status.read_health`
    (one definition: the view ``v_sync_health``) and the last sync runs, from PostgreSQL."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]):
        self.pool = pool

    async def read(self, *, runs: int = 10) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            if not await health_installed(conn):
                return sync_health_json(None, [])
            health = await read_health(conn)
            history = await read_runs(conn, runs)
        return sync_health_json(health, history)


def sync_health_json(health: Health | None, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``/api/sync``'s health part: the figures as the reader gives them (all None when the
    database has no sync engine yet), and each run with its outcome."""
    if health is None:
        figures: dict[str, Any] = dict.fromkeys(("pending", "in_flight", "dead", "retrying"))
        return {
            "sync_engine": False,
            "message": NOT_INSTALLED,
            **figures,
            "lag_seconds": None,
            "runs": [],
        }
    return {
        "sync_engine": True,
        "message": None,
        **health.to_dict(),
        "runs": [{**run, "outcome": run_outcome(run)} for run in runs],
    }


def run_outcome(run: dict[str, Any]) -> str:
    """``running`` (not ended), ``failed`` (an error), ``partial`` (rows failed or dead), ``ok``."""
    if run["ended_at"] is None:
        return "running"
    if run["error"]:
        return "failed"
    if run["failed"] or run["dead_lettered"]:
        return "partial"
    return "ok"
