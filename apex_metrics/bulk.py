"""Bulk writes into ``campaign_metrics`` (``record_many``, ``import``, ``collect``).

Runs that are all new go through COPY straight into the table: the write costs what the table
costs. Only when some run is already recorded (an upsert is needed) do the rows go through a
session staging table and one ``INSERT … ON CONFLICT`` in ``run_id`` order, so that two bulk
writes with overlapping run ids lock them in the same order and wait for each other instead of
deadlocking. A direct COPY that meets a run recorded meanwhile by someone else (unique
violation, or a deadlock with a writer locking in another order) is rolled back to its savepoint
and upserted instead; an upsert chosen as a deadlock victim (by a writer outside this module) is
retried.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.errors import DeadlockDetected, UniqueViolation

from apex_metrics.db import Q
from apex_metrics.metric import Metric

UPSERT_ATTEMPTS: Final = 5
SAMPLE: Final = 2_000  # run ids checked before choosing COPY straight into the table
RETRY_ON: Final = (UniqueViolation, DeadlockDetected)


async def any_run_exists(conn: AsyncConnection[Any], run_ids: Sequence[str]) -> bool:
    """Whether any of ``run_ids`` is already in the table."""
    if not run_ids:
        return False
    cur = await conn.execute(Q["any_run_exists"], {"run_ids": list(run_ids)})
    row = await cur.fetchone()
    return bool(row and row[0])


async def prepare_stage(conn: AsyncConnection[Any]) -> None:
    """Create (once per session) the temp staging table; call inside a transaction."""
    await conn.execute(Q["create_stage"])
    await conn.execute("TRUNCATE apex_metrics_stage")


async def upsert_stage(conn: AsyncConnection[Any]) -> tuple[int, int]:
    """Upsert every staged row in run_id order: ``(inserted, updated)``. Inside a savepoint,
    retried when PostgreSQL picks it as a deadlock victim."""
    for attempt in range(UPSERT_ATTEMPTS):
        try:
            async with conn.transaction():
                cur = await conn.execute(Q["upsert_from_stage"])
                row = await cur.fetchone()
        except DeadlockDetected:
            if attempt + 1 == UPSERT_ATTEMPTS:
                raise
            await asyncio.sleep(random.uniform(0.01, 0.1) * (attempt + 1))
            continue
        assert row is not None
        return int(row[0]), int(row[1])
    raise AssertionError("unreachable")


async def copy_rows(conn: AsyncConnection[Any], query: str, rows: Iterable[Metric]) -> int:
    """COPY the metrics' values with ``query`` (``copy_metrics`` or ``copy_stage``)."""
    count = 0
    async with conn.cursor().copy(query) as copy:
        for metric in rows:
            await copy.write_row(metric.pg_values())
            count += 1
    return count


def sample(run_ids: Sequence[str], size: int = SAMPLE) -> Sequence[str]:
    """At most ``size`` run ids spread over ``run_ids`` (checking every id of a large batch costs
    a tenth of writing it; a run recorded already is still caught, by the unique index)."""
    step = max(1, -(-len(run_ids) // size))
    return run_ids[::step]


async def write_metrics(conn: AsyncConnection[Any], metrics: Sequence[Metric]) -> tuple[int, int]:
    """Write validated metrics (unique run ids) in one transaction: ``(inserted, updated)``."""
    ordered = sorted(metrics, key=lambda m: m.run_id)
    async with conn.transaction():
        if not await any_run_exists(conn, sample([m.run_id for m in ordered])):
            try:
                async with conn.transaction():
                    inserted = await copy_rows(conn, Q["copy_metrics"], ordered)
                return inserted, 0
            except RETRY_ON:
                pass  # a run was recorded meanwhile: upsert instead
        await prepare_stage(conn)
        await copy_rows(conn, Q["copy_stage"], ordered)
        return await upsert_stage(conn)


async def load(
    conn: AsyncConnection[Any],
    batches: Iterator[str],
    first_run_ids: Callable[[], Sequence[str]],
    check: Callable[[], None],
) -> tuple[int, int]:
    """Stream batches of COPY text lines into campaign_metrics: ``(inserted, updated)``. Call
    inside a transaction. The caller validates while the lines stream (the server loads one
    batch while the next is checked); ``check`` raises, inside the COPY so that nothing is
    written, when the input turned out invalid.

    When none of ``first_run_ids()`` (asked after the first batch) is recorded yet, COPY
    straight into the table (inside a savepoint), keeping a copy of the lines in a local
    temporary file. If a run turns out to be recorded already (unique violation) or a
    concurrent writer deadlocks with this one, roll back to the savepoint and upsert instead: the
    kept lines and the rest of the input go through the staging table and one upsert in run_id
    order.
    """
    first = next(batches, "")
    direct = not await any_run_exists(conn, first_run_ids())
    with tempfile.TemporaryFile("w+", encoding="utf-8") as kept:
        if direct:
            try:
                async with conn.transaction():
                    async with conn.cursor().copy(Q["copy_metrics"]) as copy:
                        for batch in itertools.chain([first], batches):
                            kept.write(batch)
                            await copy.write(batch)
                        check()
                    return int(copy.cursor.rowcount), 0
            except RETRY_ON:
                kept.seek(0)
                first = ""
                batches = iter(lambda: kept.read(1 << 20), "")
        await prepare_stage(conn)
        async with conn.cursor().copy(Q["copy_stage"]) as copy:
            for batch in itertools.chain([first], batches):
                await copy.write(batch)
            check()
        return await upsert_stage(conn)
