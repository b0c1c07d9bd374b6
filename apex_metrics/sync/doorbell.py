"""The doorbell: writers NOTIFY only while this engine process sleeps (0010_sync_doorbell.sql).

A NOTIFY makes every committing writer take a database-wide lock through its commit, so
concurrent writers that notify commit one at a time. An engine at work claims again after each
batch and needs no ring; only a sleeping one does. A worker that found nothing to claim arms the
doorbell (``sync_processes.asleep_since``), waits for the writers already in flight to end (they
may have read it unarmed; the fence reads ``pg_locks``, it takes no lock), then claims once more
before it sleeps. A claim that comes back full disarms it: rows arrive faster than one batch.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from psycopg_pool import AsyncConnectionPool

from apex_metrics.sql import load_queries

Q = load_queries("doorbell.sql")
FENCE_POLL: Final = 0.002  # seconds between looks at pg_locks while writers are in flight
FENCE_LIMIT: Final = 1.0  # longer writers are left to the next poll


class Doorbell:
    """Arm and disarm one process's doorbell; safe to call from every worker at once."""

    def __init__(self, pool: AsyncConnectionPool[Any], process_id: str) -> None:
        self.pool = pool
        self.process_id = process_id
        self.armed = False
        self._lock = asyncio.Lock()

    async def arm(self) -> bool:
        """Arm the doorbell and fence the writers in flight. True when it was just armed (the
        caller claims once more before sleeping), False when it already was or cannot be yet."""
        if self.armed:
            return False
        async with self._lock:
            if self.armed:
                return False
            async with self.pool.connection() as conn:
                await conn.set_autocommit(True)
                try:
                    cur = await conn.execute(Q["arm"], {"id": self.process_id})
                    if await cur.fetchone() is None:
                        return False  # no heartbeat yet: polling covers the start
                    cur = await conn.execute(Q["writers_in_flight"])
                    row = await cur.fetchone()
                    vxids = list(row[0]) if row else []
                    deadline = time.monotonic() + FENCE_LIMIT
                    while vxids and time.monotonic() < deadline:
                        cur = await conn.execute(Q["still_in_flight"], {"vxids": vxids})
                        left = await cur.fetchone()
                        if not left or not left[0]:
                            break
                        await asyncio.sleep(FENCE_POLL)
                finally:
                    await conn.set_autocommit(False)
            self.armed = True
            return True

    async def disarm(self) -> None:
        """Writers stop ringing (the process is at work)."""
        if not self.armed:
            return
        async with self._lock:
            if not self.armed:
                return
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute(Q["disarm"], {"id": self.process_id})
            self.armed = False


async def prune(pool: AsyncConnectionPool[Any]) -> None:
    """Silence the doorbells of processes that died asleep."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(Q["prune"])
