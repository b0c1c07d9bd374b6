"""Where the panel reads runs from: the :class:`Source` protocol and the PostgreSQL source.

A source answers with sums (:class:`~apex_metrics.panel.kpis.Totals`); the API derives the KPIs.
``PostgresSource`` reads the daily and hourly rollups for full days and hours, and raw rows for
the partial edge hours and for hours the rollup refresher has not folded yet, in one snapshot
(:mod:`apex_metrics.rollup`; ``use_rollup=False`` reads raw rows only: the benchmark's
baseline). The Dataverse source is in ``dataverse_source.py``. Sync health always comes from
PostgreSQL (:class:`SyncHealthReader`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final, LiteralString, Protocol

from psycopg import AsyncConnection, conninfo
from psycopg_pool import AsyncConnectionPool

from apex_metrics.metric import FIELD_NAMES
from apex_metrics.panel.kpis import Totals, Window
from apex_metrics.panel.params import Filters
from apex_metrics.sql import load_queries

Q: Final = load_queries("panel.sql")
RUN_FIELDS: Final = (
    "run_id", "campaign_id", "phase", "agents_total", "agents_successful", "assets_generated",
    "tokens_in", "tokens_out", "cost_usd", "latency_p95_ms", "latency_avg_ms", "success_rate",
    "created_at",
)  # fmt: skip
assert set(RUN_FIELDS) == set(FIELD_NAMES)

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
        # The latency histograms have no campaign: such p95s read raw rows.
        filtered = filters.campaign is not None
        sums, p95 = await asyncio.gather(
            self._fetch("totals", self._args(filters, window)),
            self._fetch("latency_p95", self._args(filters, window, raw=filtered)),
        )
        return Totals.from_row(sums[0], p95[0][0])

    async def series(self, filters: Filters, width: int) -> Series:
        window = filters.window
        filtered = filters.campaign is not None
        rollup = width % 3600 == 0
        days = width % 86400 == 0
        sums_args = self._args(filters, window, raw=not rollup, days=days)
        p95_args = self._args(filters, window, raw=filtered or not rollup, days=days)
        sums, p95s = await asyncio.gather(
            self._fetch("series_totals", {**sums_args, "width": width}),
            self._fetch("series_p95", {**p95_args, "width": width}),
        )
        p95_by_bucket = {row[0]: row[1] for row in p95s}
        return [(row[0], Totals.from_row(row[1:], p95_by_bucket.get(row[0]))) for row in sums]

    async def campaigns(self, filters: Filters, limit: int) -> list[tuple[str, Totals]]:
        args = {**self._args(filters, filters.window), "limit": limit}
        rows = await self._fetch("campaigns", args)
        # p95 of run p95s per campaign: the latency histograms have no campaign, so each reads
        # its campaign's raw rows (the same rule as a campaign-filtered tile).
        p95s = await asyncio.gather(
            *(
                self._fetch(
                    "latency_p95",
                    self._args(dataclasses.replace(filters, campaign=row[0]), filters.window,
                               raw=True),
                )
                for row in rows
            )
        )  # fmt: skip
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


class SyncHealthReader:
    """Pending, in flight, dead, lag and the last sync runs, read from PostgreSQL."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]):
        self.pool = pool

    async def _fetch(self, name: LiteralString, args: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(Q[name], args)
            return await cur.fetchall()

    async def read(self, *, runs: int = 10) -> dict[str, Any]:
        now = datetime.now(UTC)
        installed = bool((await self._fetch("has_sync_engine", {}))[0][0])
        if not installed:
            count, oldest = (await self._fetch("pending_basic", {}))[0]
            return {
                "sync_engine": False,
                "message": "sync engine not installed",
                "pending": int(count),
                "in_flight": None,
                "dead": None,
                "lag_seconds": _age(now, oldest),
                "runs": [],
            }
        pending, in_flight, dead, oldest = (await self._fetch("sync_health", {}))[0]
        rows = await self._fetch("sync_runs", {"limit": runs})
        keys = (
            "id", "worker", "started_at", "ended_at", "claimed", "created", "updated", "upserted",
            "failed", "dead_lettered", "requeued", "throttled", "error",
        )  # fmt: skip
        history = []
        for row in rows:
            run = dict(zip(keys, row, strict=True))
            if run["ended_at"] is None:
                run["outcome"] = "running"
            elif run["error"] or run["failed"] or run["dead_lettered"]:
                run["outcome"] = "failed" if run["error"] else "partial"
            else:
                run["outcome"] = "ok"
            history.append(run)
        return {
            "sync_engine": True,
            "message": None,
            "pending": int(pending),
            "in_flight": int(in_flight),
            "dead": int(dead),
            "lag_seconds": _age(now, oldest),
            "runs": history,
        }


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max((now - then).total_seconds(), 0.0), 1)
