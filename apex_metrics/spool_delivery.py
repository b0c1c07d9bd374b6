"""Deliver a spool to PostgreSQL: segment by segment, oldest first, each in one transaction.

Each run is written with the recorder's own upsert by ``run_id`` (``queries.sql``:
``upsert_metric``), in spool order, so a later value of a run wins. A segment is deleted only
after its transaction committed; a crash in between delivers it again, which the upsert makes
harmless (the run's version is bumped, nothing is doubled). One flusher at a time, across
processes: the others find the flush lock taken and leave the spool to it.

Runs the database refuses outright (a constraint, a value out of range) cannot ever be
delivered: they go to ``rejected.jsonl`` instead of blocking the runs behind them. Any other
failure (connection lost, schema not migrated) stops the flush and leaves the spool as it was.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

from apex_metrics.db import Q, describe_conn, wrap_query_error
from apex_metrics.exceptions import first_line
from apex_metrics.metric import FIELD_NAMES, Metric
from apex_metrics.spool import Segment, Spool, read_segment


@dataclass
class FlushReport:
    """What a flush did. ``busy``: another process was flushing, nothing was done here."""

    path: str
    delivered: int = 0
    segments: int = 0
    rejected: int = 0
    busy: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "delivered": self.delivered,
            "segments": self.segments,
            "rejected": self.rejected,
            "busy": self.busy,
        }


def is_refusal(exc: BaseException) -> bool:
    """Whether the database refused the data itself (retrying cannot help)."""
    cause = exc if isinstance(exc, psycopg.Error) else exc.__cause__
    return isinstance(cause, psycopg.IntegrityError | psycopg.DataError)


def _params(metric: Metric) -> dict[str, Any]:
    return {name: getattr(metric, name) for name in FIELD_NAMES}


async def _write_one_by_one(
    conn: AsyncConnection[Any], runs: list[Metric]
) -> list[tuple[Metric, str]]:
    """Each run under its own savepoint; returns the runs the database refused."""
    refused: list[tuple[Metric, str]] = []
    async with conn.transaction():
        for metric in runs:
            try:
                async with conn.transaction():
                    await conn.execute(Q["upsert_metric"], _params(metric))
            except psycopg.Error as exc:
                if not is_refusal(exc):
                    raise
                refused.append((metric, f"refused by the database: {first_line(exc)}"))
    return refused


async def deliver_segment(conn: AsyncConnection[Any], segment: Segment) -> list[tuple[Metric, str]]:
    """Upsert the segment's runs in order, in one transaction; returns the refused runs."""
    if not segment.runs:
        return []
    try:
        async with conn.transaction():
            async with conn.cursor() as cur:
                await cur.executemany(Q["upsert_metric"], [_params(m) for m in segment.runs])
        return []
    except psycopg.Error as exc:
        if not is_refusal(exc):
            raise
    return await _write_one_by_one(conn, segment.runs)


async def flush(spool: Spool, conn: AsyncConnection[Any], *, wait: float = 0.0) -> FlushReport:
    """Deliver every spooled run through ``conn``. When another process is flushing, wait up to
    ``wait`` seconds for it, then return a ``busy`` report. Database failures raise a
    ``DatabaseError`` and leave the undelivered segments in place."""
    report = FlushReport(str(spool.path))
    deadline = time.monotonic() + wait
    while True:
        with spool.flush_lock() as got:
            if got:
                try:
                    await _flush_locked(spool, conn, report)
                except psycopg.Error as exc:
                    raise wrap_query_error(exc, describe_conn(conn)) from exc
                return report
        if time.monotonic() >= deadline:
            report.busy = True
            return report
        await asyncio.sleep(0.1)


async def _flush_locked(spool: Spool, conn: AsyncConnection[Any], report: FlushReport) -> None:
    while (path := await asyncio.to_thread(spool.next_segment)) is not None:
        segment = await asyncio.to_thread(read_segment, path)
        refused = await deliver_segment(conn, segment)
        # committed: from here a crash only re-delivers this segment (upsert by run_id)
        if refused:
            await asyncio.to_thread(spool.reject_runs, refused)
        if segment.unreadable:
            await asyncio.to_thread(spool.reject_lines, segment.unreadable)
        await asyncio.to_thread(spool.remove, path)
        report.delivered += len(segment.runs) - len(refused)
        report.rejected += len(refused) + len(segment.unreadable)
        report.segments += 1


async def flush_to(url: str | None, spool: Spool, *, wait: float = 0.0) -> FlushReport:
    """``apex-metrics spool flush``: deliver ``spool`` to the database at ``url`` (default
    ``APEX_DATABASE_URL``), after checking that its schema is migrated."""
    from apex_metrics.db import connect, ensure_migrated

    async with await connect(url) as conn:
        await ensure_migrated(conn)
        return await flush(spool, conn, wait=wait)
