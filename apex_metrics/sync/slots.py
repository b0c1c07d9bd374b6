"""The Dataverse budget shared through PostgreSQL by every engine process of one database.

A :class:`~apex_metrics.dataverse.pacing.SlotPool` over the tables of migration 0008: a slot is
a row of ``sync_slots``, taken with ``FOR UPDATE SKIP LOCKED`` and given back with the time it
rests; ``sync_pacing`` holds the pause after a 429. Times are the database's clock, so hosts
with skewed clocks still agree. Each call is one short statement; nothing is held open across
an HTTP request. A process that dies holding a slot loses it at ``held_until`` (the pacer's
``hold_seconds``), and one that stops gives its slots back (:meth:`PgSlots.give_back_all`).
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from apex_metrics.dataverse.pacing import Taken
from apex_metrics.sql import load_queries

Q = load_queries("sync.sql")


class PgSlots:
    """Slots and pause in PostgreSQL, taken in the name of ``owner`` (this process)."""

    def __init__(self, pool: AsyncConnectionPool[Any], owner: str) -> None:
        self.pool = pool
        self.owner = owner
        self._ensured = 0

    async def take(self, size: int, hold: float) -> Taken:
        async with self.pool.connection() as conn:
            if size > self._ensured:
                await conn.execute(Q["ensure_slots"], {"size": size})
                self._ensured = size
            cur = await conn.execute(
                Q["take_slot"], {"size": size, "hold": hold, "owner": self.owner}
            )
            row = await cur.fetchone()
        assert row is not None  # the query always answers one row
        slot, paused, next_free = row
        return Taken(
            None if slot is None else int(slot),
            paused=float(paused or 0.0),
            next_free=None if next_free is None else max(0.0, float(next_free)),
        )

    async def give_back(self, slot: int, rest: float) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                Q["give_back_slot"], {"slot": slot, "owner": self.owner, "rest": max(0.0, rest)}
            )

    async def pause(self, seconds: float) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(Q["pause_all"], {"seconds": seconds})

    async def give_back_all(self) -> int:
        """Free every slot this process still holds (on stop)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(Q["give_back_owner_slots"], {"owner": self.owner})
            return int(cur.rowcount)
