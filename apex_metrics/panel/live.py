"""Live updates: a watcher notices changes in the source and a broadcaster pushes them by SSE.

The watcher polls the source's cheap watermark (PostgreSQL: the log of hours the rollup
refresher has not folded yet, which every panel-visible write appends to, woken early by
``LISTEN apex_metrics_pending`` when writers ring, i.e. while a sync engine sleeps; Dataverse:
the newest ``modifiedon``) about every ``interval`` seconds. On a change it publishes one small
``change`` event; each open page then re-reads the API with its own filters (Phoenix's
watermark pattern, pushed instead of polled by the browser). The broadcaster keeps one bounded
queue per subscriber and drops the oldest event when a slow client falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from apex_metrics.aio import wait_event

log = logging.getLogger(__name__)


class Broadcaster:
    """Fan-out of events to any number of subscribers, independent of HTTP."""

    def __init__(self, queue_size: int = 16) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self._queue_size = queue_size
        self.last: dict[str, Any] | None = None

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, event: dict[str, Any]) -> None:
        self.last = event
        for queue in self._queues:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)


class Watcher:
    """Polls a watermark and publishes a ``change`` event whenever it moves."""

    def __init__(
        self,
        watermark: Callable[[], Awaitable[str]],
        last_run_at: Callable[[], Awaitable[datetime | None]],
        broadcaster: Broadcaster,
        *,
        interval: float = 1.0,
        wake: asyncio.Event | None = None,
    ) -> None:
        self._watermark = watermark
        self._last_run_at = last_run_at
        self._broadcaster = broadcaster
        self._interval = interval
        self._wake = wake or asyncio.Event()
        self.value: str | None = None
        self.errors = 0

    async def check(self) -> bool:
        """Read the watermark once; publish and return True when it moved."""
        value = await self._watermark()
        if value == self.value:
            return False
        self.value = value
        last = await self._last_run_at()
        self._broadcaster.publish(
            {
                "type": "change",
                "watermark": value,
                "last_run_at": last.isoformat() if last else None,
                "at": datetime.now(UTC).isoformat(),
            }
        )
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.check()
                self.errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep watching: the source may come back
                self.errors += 1
                if self.errors in (1, 10) or self.errors % 100 == 0:
                    log.warning("panel watcher: %s", exc)
            with contextlib.suppress(TimeoutError):
                await wait_event(self._wake, self._interval)
            self._wake.clear()


async def listen(url: str, channel: str, wake: asyncio.Event) -> None:
    """Set ``wake`` on every NOTIFY on ``channel``; reconnect after failures (dedicated
    autocommit connection outside the pool)."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                async for _ in conn.notifies():
                    wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("panel listener: %s", exc)
            await asyncio.sleep(2.0)


def sse_payload(event: dict[str, Any]) -> dict[str, str]:
    """An event as sse-starlette's dict (``event`` name and JSON ``data``)."""
    return {"event": str(event.get("type", "message")), "data": json.dumps(event)}
