"""The database side of the engine: claim, acknowledge, fail, release, run history.

Each method is one short transaction on a pooled connection. A claim commits before the rows
are sent; the acknowledgement runs in a new transaction after Dataverse answered, fenced by the
claim's lease owner token and by the row version that was sent.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from apex_metrics.sql import load_queries
from apex_metrics.sync.status import Health, read_health

Q = load_queries("sync.sql")


@dataclass(frozen=True, slots=True)
class Claim:
    owner: str  # lease owner token of this claim
    run_id: int  # its sync_runs row
    rows: list[dict[str, Any]]  # id, version, attempts and the 13 data columns, in id order


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """One row of a claim that was not delivered, and what to do with it (keywords only)."""

    id: int
    version: int
    dead: bool
    delay: float
    counted: bool  # False: give the attempt back (throttled)
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What became of the rows of one batch (its row of ``sync_runs``; ``throttled`` counts
    rows given back because of a 429), or of many: ``worker.EngineStats.rows`` is the sum of a
    process's batches (``+``)."""

    created: int = 0
    updated: int = 0
    upserted: int = 0  # delivered by a 204 that does not say created or updated
    failed: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    throttled: int = 0
    error: str | None = None

    def __add__(self, other: RunSummary) -> RunSummary:
        """The counts of both (a sum has no single error)."""
        return RunSummary(
            created=self.created + other.created,
            updated=self.updated + other.updated,
            upserted=self.upserted + other.upserted,
            failed=self.failed + other.failed,
            dead_lettered=self.dead_lettered + other.dead_lettered,
            requeued=self.requeued + other.requeued,
            throttled=self.throttled + other.throttled,
        )


@dataclass(frozen=True, slots=True)
class Settled:
    acked: int  # rows whose sent version is now exported
    requeued: int  # delivered, but changed in flight: still pending
    dead: int  # dead-lettered now
    lost_lease: int = 0  # rows no longer ours (lease expired and taken): nothing written
    dead_keys: list[str] = field(default_factory=list)
    run: RunSummary = field(default_factory=RunSummary)  # the run as recorded in sync_runs


class Queue:
    """Queue operations over an open ``AsyncConnectionPool``."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def claim(
        self, *, owner: str, worker: str, limit: int, lease_seconds: float
    ) -> Claim | None:
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                Q["claim_batch"],
                {"owner": owner, "limit": limit, "lease_seconds": lease_seconds},
            )
            rows = await cur.fetchall()
            if not rows:
                return None
            await cur.execute(Q["start_run"], {"worker": worker, "claimed": len(rows)})
            run = await cur.fetchone()
            assert run is not None
        rows.sort(key=lambda r: r["id"])
        return Claim(owner=owner, run_id=int(run["id"]), rows=rows)

    async def settle(
        self,
        claim: Claim,
        delivered: Sequence[tuple[int, int]],
        failures: Sequence[Failure],
        summary: RunSummary,
    ) -> Settled:
        """Acknowledge the delivered rows, record the failures, close the run: one transaction.

        ``summary`` is left as it is: the run as recorded, with the rows requeued and
        dead-lettered that only this transaction knows, is ``Settled.run``."""
        acked = requeued = dead = 0
        dead_ids: set[int] = set()
        touched = 0
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            if delivered:
                ack = {
                    "owner": claim.owner,
                    "ids": [i for i, _ in delivered],
                    "versions": [v for _, v in delivered],
                }
                await cur.execute(Q["ack_delivered"], ack)
                for row in await cur.fetchall():
                    touched += 1
                    if row["current"]:
                        acked += 1
                    else:
                        requeued += 1  # changed in flight: still pending
                await cur.execute(Q["end_leases"], ack)  # the same rows, whose locks we hold
            if failures:
                await cur.execute(
                    Q["record_failures"],
                    {
                        "owner": claim.owner,
                        "ids": [f.id for f in failures],
                        "versions": [f.version for f in failures],
                        "dead": [f.dead for f in failures],
                        "delays": [f.delay for f in failures],
                        "counted": [f.counted for f in failures],
                        "codes": [f.code for f in failures],
                        "messages": [f.message for f in failures],
                    },
                )
                for row in await cur.fetchall():
                    touched += 1
                    if row["dead"]:
                        dead += 1
                        dead_ids.add(int(row["id"]))
            run = replace(summary, requeued=requeued, dead_lettered=dead)
            await cur.execute(
                Q["finish_run"],
                {
                    "run_id": claim.run_id,
                    "created": run.created,
                    "updated": run.updated,
                    "upserted": run.upserted,
                    "failed": run.failed,
                    "dead_lettered": run.dead_lettered,
                    "requeued": run.requeued,
                    "throttled": run.throttled,
                    "error": run.error,
                },
            )
        keys = [str(r["run_id"]) for r in claim.rows if r["id"] in dead_ids]
        lost = len(delivered) + len(failures) - touched
        return Settled(acked, requeued, dead, lost_lease=lost, dead_keys=keys, run=run)

    async def release(self, claim: Claim, *, delay: float = 0.0, error: str | None = None) -> None:
        """Give the claim's rows back without counting the attempt, and close its run."""
        async with self.pool.connection() as conn, conn.transaction():
            if delay > 0:
                await conn.execute(Q["delay_claim"], {"owner": claim.owner, "delay": delay})
            await conn.execute(Q["release_claim"], {"owner": claim.owner})
            await conn.execute(
                Q["finish_run"],
                {
                    "run_id": claim.run_id,
                    "created": 0,
                    "updated": 0,
                    "upserted": 0,
                    "failed": 0,
                    "dead_lettered": 0,
                    "requeued": 0,
                    "throttled": 0,
                    "error": error,
                },
            )

    async def release_prefix(self, prefix: str) -> int:
        """Give back every lease whose owner token starts with ``prefix``."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(Q["release_owner_prefix"], {"prefix": prefix})
            return int(cur.rowcount)

    async def next_due(self) -> float | None:
        """Seconds until the earliest retryable row is due; None when nothing waits."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(Q["next_due"])
            row = await cur.fetchone()
            await conn.rollback()
        return None if row is None or row[0] is None else max(0.0, float(row[0]))

    async def health(self) -> Health:
        """The sync health figures (``status.read_health``: pending, in flight, dead, …)."""
        async with self.pool.connection() as conn:
            health = await read_health(conn)
            await conn.rollback()
        return health

    async def prune_runs(self, days: int) -> int:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(Q["prune_runs"], {"days": days})
            await conn.execute(Q["prune_processes"])
            return int(cur.rowcount)

    async def heartbeat(self, process: str, workers: int) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                Q["heartbeat"],
                {
                    "id": process,
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "workers": workers,
                },
            )

    async def goodbye(self, process: str) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(Q["goodbye"], {"id": process})
