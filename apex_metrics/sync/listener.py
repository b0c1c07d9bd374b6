"""LISTEN on a dedicated autocommit connection; wake workers on each notification.

A notification is only a hint: polling is what guarantees progress. The connection is
re-opened after any failure (and every worker is woken then, since notifications sent while it
was down are lost); an idle connection is probed with ``SELECT 1`` every ``keepalive`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from apex_metrics.aio import wait_event
from apex_metrics.exceptions import first_line

CHANNEL = "apex_metrics_pending"
APPLICATION_NAME = "apex-metrics-sync-listener"
log = logging.getLogger("apex_metrics.sync")


async def listen(
    url: str,
    wake_all: Callable[[], None],
    stop: asyncio.Event,
    *,
    wake_one: Callable[[], None] | None = None,
    keepalive: float = 30.0,
    on_connect: Callable[[], None] | None = None,
) -> None:
    """Run until ``stop`` is set (or the task is cancelled)."""
    delay = 0.2
    while not stop.is_set():
        try:
            conn = await psycopg.AsyncConnection.connect(
                url, autocommit=True, application_name=APPLICATION_NAME
            )
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                if on_connect is not None:
                    on_connect()
                wake_all()
                delay = 0.2
                while not stop.is_set():
                    async for notice in conn.notifies(timeout=keepalive):
                        # A few ids: one worker (it recruits more when its batch is full);
                        # a burst ({"more": true}) or an unknown payload: everyone.
                        if wake_one is not None and '"ids"' in notice.payload:
                            wake_one()
                        else:
                            wake_all()
                        if stop.is_set():
                            break
                    await conn.execute("SELECT 1")
        except psycopg.Error as exc:
            log.warning(
                "listener connection lost, reconnecting in %.1fs: %s",
                delay,
                first_line(exc),
                extra={"event": "listener_error"},
            )
            wake_all()
            try:
                await wait_event(stop, delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 10.0)
