"""``reconcile``: compare every key and value in Dataverse with PostgreSQL; re-queue differences.

Bounded memory at any size: Dataverse is paged (``@odata.nextLink``, 5,000 rows a page) and each
page is streamed by COPY into a session-local temp table (committed page by page, so no
transaction spans an HTTP call). Then one FULL OUTER JOIN of both sides, in key order, is read
through a server-side cursor, and repairs are written in chunks on a second connection.

Rows still pending in PostgreSQL are reported as ``pending`` (the queue will deliver them), not
as differences. ``delete_extra`` deletes, by key, the rows Dataverse holds and PostgreSQL does not
(left by a database that was dropped or restored, or written by something else): the keys are
read from the temp table a page at a time, each page committed before its DELETEs are sent.
A sync running at the same time can make a just-exported row look different; re-queuing it only
re-sends it, which is harmless.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from psycopg.rows import dict_row

from apex_metrics import db
from apex_metrics.metric import ALTERNATE_KEY_COLUMN, ENTITY_SET, KEY_FIRST_NAMES, PG_TO_DATAVERSE
from apex_metrics.sql import load_queries
from apex_metrics.sync.errors import ReconcileError

Q = load_queries("sync.sql")
PAGE_SIZE = 5000
CHUNK = 5000  # rows per COPY commit, cursor fetch and repair statement
SAMPLES = 20
DELETE_CONCURRENCY = 8  # DELETE requests in flight at once (delete_extra)

# Remote columns in the COPY order of reconcile_copy_remote: the key, then the rest.
_REMOTE: Final = tuple(PG_TO_DATAVERSE[name] for name in KEY_FIRST_NAMES)


class Source(Protocol):
    """What reconcile needs from Dataverse: ``DataverseClient.query``."""

    def query(
        self,
        entity_set: str,
        *,
        select: list[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def delete(self, entity_set: str, key: dict[str, str]) -> bool:
        """Delete by key (``DataverseClient.delete``; only with ``delete_extra``)."""
        ...


@dataclass
class ReconcileReport:
    pg_rows: int = 0
    dataverse_rows: int = 0
    matching: int = 0
    pending: int = 0  # not yet exported: the queue delivers them
    missing: int = 0  # exported (or never queued) but absent from Dataverse
    extra: int = 0  # in Dataverse, not in PostgreSQL
    different: int = 0  # exported, but Dataverse holds other values
    duplicated: int = 0  # one key more than once in Dataverse
    requeued: int = 0
    deleted: int = 0  # extra rows deleted from Dataverse (delete_extra)
    repaired: bool = False
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.different or self.duplicated)

    def sample(self, kind: str, item: dict[str, Any]) -> None:
        bucket = self.samples.setdefault(kind, [])
        if len(bucket) < SAMPLES:
            bucket.append(item)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pg_rows": self.pg_rows,
            "dataverse_rows": self.dataverse_rows,
            "matching": self.matching,
            "pending": self.pending,
            "missing": self.missing,
            "extra": self.extra,
            "different": self.different,
            "duplicated": self.duplicated,
            "requeued": self.requeued,
            "deleted": self.deleted,
            "repaired": self.repaired,
            "clean": self.clean,
            "samples": self.samples,
        }


def _remote_values(row: dict[str, Any]) -> tuple[Any, ...]:
    key = row.get(ALTERNATE_KEY_COLUMN)
    if not isinstance(key, str) or not key:
        raise ReconcileError(f"Dataverse returned a row without {ALTERNATE_KEY_COLUMN}")
    return tuple(row.get(c) for c in _REMOTE)


async def reconcile(
    url: str | None,
    source: Source,
    *,
    repair: bool = False,
    delete_extra: bool = False,
    entity_set: str = ENTITY_SET,
) -> ReconcileReport:
    """Compare both sides; ``repair`` re-queues missing and different rows, ``delete_extra``
    deletes from Dataverse the rows PostgreSQL does not have (they then count as deleted, no
    longer as extra)."""
    report = ReconcileReport(repaired=repair)
    async with await db.connect(url) as conn, await db.connect(url) as writer:
        await db.ensure_migrated(conn)
        await conn.execute(Q["reconcile_create_remote"])
        await conn.execute("TRUNCATE apex_metrics_reconcile_remote")
        await conn.commit()
        buffer: list[tuple[Any, ...]] = []
        pages = source.query(entity_set, select=list(_REMOTE), page_size=PAGE_SIZE)
        async for row in pages:
            buffer.append(_remote_values(row))
            if len(buffer) >= CHUNK:
                await _copy(conn, buffer)
                report.dataverse_rows += len(buffer)
                buffer.clear()
        if buffer:
            await _copy(conn, buffer)
            report.dataverse_rows += len(buffer)
        await conn.execute(Q["reconcile_index_remote"])
        await conn.execute("ANALYZE apex_metrics_reconcile_remote")
        await conn.commit()

        to_repair: list[int] = []
        async with conn.transaction():
            cur = conn.cursor("apex_metrics_reconcile", row_factory=dict_row)
            await cur.execute(Q["reconcile_compare"])
            while rows := await cur.fetchmany(CHUNK):
                for r in rows:
                    if _classify(report, r) and repair:
                        to_repair.append(int(r["id"]))
                if len(to_repair) >= CHUNK:
                    report.requeued += await _requeue(writer, to_repair)
                    to_repair.clear()
            await cur.close()
        if to_repair:
            report.requeued += await _requeue(writer, to_repair)
        if delete_extra and report.extra:
            report.deleted = await _delete_extra(conn, source, entity_set)
            report.extra -= report.deleted
            report.dataverse_rows -= report.deleted
        await conn.execute("DROP TABLE IF EXISTS apex_metrics_reconcile_remote")
        await conn.commit()
    return report


def _classify(report: ReconcileReport, r: dict[str, Any]) -> bool:
    """Count one joined row; True when it needs re-sending."""
    key = r["run_id"]
    if r["in_pg"]:
        report.pg_rows += 1
    if r["copies"] > 1:
        report.duplicated += 1
        report.sample("duplicated", {"run_id": key, "copies": r["copies"]})
    if not r["in_pg"]:
        report.extra += 1
        report.sample("extra", {"run_id": key})
        return False
    if r["pending"]:
        report.pending += 1
        return False
    if not r["in_dataverse"]:
        report.missing += 1
        report.sample("missing", {"run_id": key})
        return True
    if r["different"]:
        report.different += 1
        report.sample("different", {"run_id": key, "columns": list(r["different"])})
        return True
    report.matching += 1
    return False


async def _copy(conn: Any, rows: list[tuple[Any, ...]]) -> None:
    async with conn.cursor() as cur, cur.copy(Q["reconcile_copy_remote"]) as copy:
        for row in rows:
            await copy.write_row(row)
    await conn.commit()


async def _delete_extra(conn: Any, source: Source, entity_set: str) -> int:
    """Delete every extra key, a page at a time; no transaction is open during the DELETEs."""
    limit = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def one(key: str) -> bool:
        async with limit:
            return await source.delete(entity_set, {ALTERNATE_KEY_COLUMN: key})

    deleted = 0
    after = ""
    while True:
        cur = await conn.execute(Q["reconcile_extra_keys"], {"after": after, "limit": CHUNK})
        keys = [str(row[0]) for row in await cur.fetchall()]
        await conn.commit()
        if not keys:
            return deleted
        deleted += sum(await asyncio.gather(*(one(k) for k in keys)))
        after = keys[-1]


async def _requeue(writer: Any, ids: list[int]) -> int:
    cur = await writer.execute(Q["requeue_ids"], {"ids": ids})
    await writer.execute(Q["notify_pending"])
    await writer.commit()
    return int(cur.rowcount)
