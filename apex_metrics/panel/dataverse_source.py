"""The Dataverse source: what reached Dataverse is what the panel shows.

Every figure comes from ``$apply`` aggregates of ``apex_campaignmetricses`` (sum and ``$count``
only, so that results of split ranges combine exactly); the client splits a window that holds
more than 50,000 records (0x8004E023) and merges the parts. ``$apply`` cannot group by a
DateTime, so time buckets are **one aggregate per bucket**, each filtered on its
``apex_createdat`` range, sent concurrently (at most ``concurrency`` at a time). The p95 of run
p95s groups by ``apex_latencyp95ms`` (an Integer, which may be grouped) and builds the same
histogram as PostgreSQL. The change watermark is the newest ``versionnumber``. Figures of closed
windows (ended more than 5 minutes ago: previous windows, past chart buckets) are reused for a
minute, so that a page refreshing every second does not exhaust the service-protection limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.formats import utc_z
from apex_metrics.metric import (
    ALTERNATE_KEY_COLUMN,
    BY_NAME,
    COLUMNS,
    ENTITY_SET,
    PG_TO_DATAVERSE,
)
from apex_metrics.panel.kpis import (
    MONEY,
    SUMMED,
    Totals,
    Window,
    bucket_starts,
    histogram,
    p95_from_histogram,
)
from apex_metrics.panel.params import Filters
from apex_metrics.panel.sources import RUN_FIELDS, Series
from apex_metrics.settings import Settings

CREATED: Final = PG_TO_DATAVERSE["created_at"]
CAMPAIGN: Final = PG_TO_DATAVERSE["campaign_id"]
PHASE: Final = PG_TO_DATAVERSE["phase"]
P95: Final = PG_TO_DATAVERSE["latency_p95_ms"]
AVG: Final = PG_TO_DATAVERSE["latency_avg_ms"]
CLOSED_AGE: Final = timedelta(minutes=5)  # a window that ended this long ago counts as closed
CLOSED_TTL: Final = 60.0  # seconds a closed window's figures are reused
CACHE_SIZE: Final = 4096
# Every sum of Totals, aliased by its field name (kpis.SUMMED).
SUM_APPLY: Final = "aggregate($count as runs," + ",".join(
    f"{PG_TO_DATAVERSE[column]} with sum as {name}" for name, column in SUMMED
) + ")"  # fmt: skip


def odata_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def ceil_second(value: datetime) -> datetime:
    down = value.replace(microsecond=0)
    return down if down == value else down + timedelta(seconds=1)


def _decimal(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    return Decimal(str(value)).quantize(MONEY)


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


class DataverseSource:
    """Runs as they are in Dataverse, read through ``DataverseClient``."""

    name = "dataverse"

    def __init__(
        self,
        client: DataverseClient,
        *,
        concurrency: int = 8,
        closed_ttl: float = CLOSED_TTL,
    ) -> None:
        self.client = client
        self._limit = asyncio.Semaphore(concurrency)
        self._closed_ttl = closed_ttl
        self._cache: dict[tuple[Any, ...], tuple[float, Totals]] = {}

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _where(filters: Filters, *extra: str) -> str:
        parts = list(extra)
        if filters.campaign is not None:
            parts.append(f"{CAMPAIGN} eq {odata_string(filters.campaign)}")
        if filters.phase is not None:
            parts.append(f"{PHASE} eq {odata_string(filters.phase)}")
        return " and ".join(parts)

    def _apply(self, filters: Filters, apply: str, *extra: str) -> str:
        where = self._where(filters, *extra)
        return f"filter({where})/{apply}" if where else apply

    async def _aggregate(self, apply: str, window: Window) -> list[dict[str, Any]]:
        # Dataverse keeps whole seconds and the client filters on whole seconds: for such
        # values t >= start <=> t >= ceil(start), and t < end <=> t < ceil(end).
        start, end = ceil_second(window.start), ceil_second(window.end)
        if end <= start:
            return []
        async with self._limit:
            return await self.client.aggregate(
                ENTITY_SET, apply, time_column=CREATED, start=start, end=end
            )

    # -- Source ------------------------------------------------------------------------------

    async def totals(self, filters: Filters, window: Window) -> Totals:
        """Sums of a window. Windows that ended more than CLOSED_AGE ago (the previous window,
        past chart buckets) are cached for ``closed_ttl`` seconds: a live page refreshes every
        second and would otherwise spend the service-protection budget re-reading the past."""
        closed = window.end <= datetime.now(UTC) - CLOSED_AGE
        key = (filters.campaign, filters.phase, window.start, window.end)
        if closed:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
        totals = await self._read_totals(filters, window)
        if closed:
            if len(self._cache) >= CACHE_SIZE:
                now = time.monotonic()
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                while len(self._cache) >= CACHE_SIZE:
                    self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (time.monotonic() + self._closed_ttl, totals)
        return totals

    async def _read_totals(self, filters: Filters, window: Window) -> Totals:
        sums, latency_runs, p95 = await asyncio.gather(
            self._aggregate(self._apply(filters, SUM_APPLY), window),
            self._aggregate(
                self._apply(filters, "aggregate($count as n)", f"{AVG} ne null"),
                window,
            ),
            self._p95(filters, window),
        )
        return self._totals(sums[0] if sums else {}, latency_runs, p95)

    @staticmethod
    def _totals(row: dict[str, Any], latency_runs: list[dict[str, Any]], p95: int | None) -> Totals:
        sums: dict[str, Any] = {
            name: (_decimal if BY_NAME[column].kind == "decimal" else _int)(row.get(name))
            for name, column in SUMMED
        }
        return Totals(
            runs=_int(row.get("runs")),
            **sums,
            latency_avg_runs=_int(latency_runs[0].get("n")) if latency_runs else 0,
            latency_p95_ms=p95,
        )

    async def _p95(self, filters: Filters, window: Window) -> int | None:
        rows = await self._aggregate(
            self._apply(filters, f"groupby(({P95}),aggregate($count as n))", f"{P95} ne null"),
            window,
        )
        pairs = [(int(r[P95]), int(r["n"])) for r in rows if r.get(P95) is not None]
        return p95_from_histogram(histogram(pairs))

    async def series(self, filters: Filters, width: int) -> Series:
        step = timedelta(seconds=width)
        starts = bucket_starts(filters.window, width)

        async def one(start: datetime) -> tuple[datetime, Totals]:
            window = Window(max(start, filters.window.start), min(start + step, filters.window.end))
            return start, await self.totals(filters, window)

        points = await asyncio.gather(*(one(s) for s in starts))
        return [(start, totals) for start, totals in points if totals.runs > 0]

    async def campaigns(self, filters: Filters, limit: int) -> list[tuple[str, Totals]]:
        window = filters.window
        groups, latency_runs, latency_hist = await asyncio.gather(
            self._aggregate(self._apply(filters, f"groupby(({CAMPAIGN}),{SUM_APPLY})"), window),
            self._aggregate(
                self._apply(
                    filters, f"groupby(({CAMPAIGN}),aggregate($count as n))", f"{AVG} ne null"
                ),
                window,
            ),
            self._aggregate(
                self._apply(
                    filters,
                    f"groupby(({CAMPAIGN},{P95}),aggregate($count as n))",
                    f"{P95} ne null",
                ),
                window,
            ),
        )
        lat = {r[CAMPAIGN]: [r] for r in latency_runs}
        pairs: dict[Any, list[tuple[int, int]]] = {}
        for r in latency_hist:  # one histogram per campaign: the same p95 rule as the tiles
            if r.get(P95) is not None:
                pairs.setdefault(r[CAMPAIGN], []).append((int(r[P95]), int(r["n"])))
        out = [
            (
                str(r[CAMPAIGN]),
                self._totals(
                    r,
                    lat.get(r[CAMPAIGN], []),
                    p95_from_histogram(histogram(pairs.get(r[CAMPAIGN], []))),
                ),
            )
            for r in groups
        ]
        out = [item for item in out if item[1].runs > 0]
        out.sort(key=lambda item: (-item[1].cost_usd, item[0]))
        return out[:limit]

    async def runs(self, filters: Filters, limit: int) -> AsyncIterator[dict[str, Any]]:
        window = filters.window
        where = self._where(
            filters,
            f"{CREATED} ge {utc_z(ceil_second(window.start))}",
            f"{CREATED} lt {utc_z(ceil_second(window.end))}",
        )
        count = 0
        async for row in self.client.query(
            ENTITY_SET,
            select=[PG_TO_DATAVERSE[name] for name in RUN_FIELDS],
            filter=where,
            orderby=f"{CREATED} desc,{ALTERNATE_KEY_COLUMN} desc",
            page_size=min(limit, 5000),
        ):
            yield self._run(row)
            count += 1
            if count >= limit:
                return

    @staticmethod
    def _run(row: dict[str, Any]) -> dict[str, Any]:
        """A run as PostgreSQL gives it: decimals to their column's places, times parsed."""
        out: dict[str, Any] = {}
        for col in COLUMNS:
            value = row.get(col.dataverse)
            if value is not None and col.kind == "decimal":
                assert col.precision is not None
                value = Decimal(str(value)).quantize(Decimal(1).scaleb(-col.precision))
            elif value is not None and col.kind == "datetime":
                value = _parse_time(str(value))
            out[col.name] = value
        return out

    async def options(self) -> dict[str, list[str]]:
        end = datetime.now(UTC)
        rows = await self._aggregate(
            f"groupby(({CAMPAIGN},{PHASE}),aggregate($count as n))",
            Window(end - timedelta(days=90), end),
        )
        campaigns = sorted({str(r[CAMPAIGN]) for r in rows if r.get(CAMPAIGN)})
        phases = sorted({str(r[PHASE]) for r in rows if r.get(PHASE)})
        return {"campaigns": campaigns, "phases": phases}

    async def _newest(self, column: str) -> Any:
        async for row in self.client.query(
            ENTITY_SET, select=[column], orderby=f"{column} desc", page_size=1
        ):
            return row.get(column)
        return None

    async def last_run_at(self) -> datetime | None:
        value = await self._newest(CREATED)
        return _parse_time(str(value)) if value else None

    async def watermark(self) -> str:
        return str(await self._newest("versionnumber"))


@contextlib.asynccontextmanager
async def open_dataverse_source(
    settings: Settings, **client_options: Any
) -> AsyncIterator[DataverseSource]:
    """A Dataverse source for ``APEX_DATAVERSE_URL`` (``client_options`` go to
    ``open_dataverse``, e.g. a test transport)."""
    async with open_dataverse(settings, **client_options) as client:
        yield DataverseSource(client)
