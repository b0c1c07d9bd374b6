"""The panel's rollups, kept off the write path: the refresher that folds stale hours into them.

Writers pay only for a statement trigger that appends the hours they touched to
``apex_metrics_rollup_stale`` (0009_rollup_off_write_path.sql). The refresher takes a batch of
stale hours and, in one transaction, deletes their log entries and applies (rows now - hourly
rollup) of those hours to the hourly and daily rollups and latency histograms. A refresher that
dies mid-batch rolls back: the entries stay, nothing is lost or applied twice. One works at a time
(a transaction-level advisory lock; others skip), so any number may run.

The panel reads rollups for clean hours and raw rows for stale ones in one snapshot, so its
figures are exact whether or not the refresher has caught up; the refresher only keeps reads
cheap. It runs inside ``apex-metrics panel`` (a side task), and as ``apex-metrics rollup`` for
deployments without a panel process; ``db migrate`` runs it to build the rollups after an
upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from apex_metrics.aio import wait_event
from apex_metrics.db import connect, database_url, describe, wrap_query_error
from apex_metrics.sql import load_queries

log = logging.getLogger(__name__)
Q: Final = load_queries("panel.sql")
BATCH_HOURS: Final = 24  # a day of hours per transaction (a delta per campaign is large)
INTERVAL: Final = 0.25  # seconds between looks at the log when it is empty
OPEN_HOUR_EVERY: Final = 5.0  # seconds between folds of the open hour

OnProgress = Callable[[int, int], None]  # (hours folded so far, hours stale at the start)


@dataclass
class RefreshReport:
    """What a catch-up did."""

    hours: int = 0  # hours folded
    batches: int = 0
    seconds: float = 0.0
    busy: bool = False  # another refresher held the lock

    def to_dict(self) -> dict[str, Any]:
        return {
            "hours": self.hours,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "busy": self.busy,
        }


async def stale_hours(conn: AsyncConnection[Any]) -> int:
    """Distinct hours waiting for the refresher."""
    async with conn.transaction():
        cur = await conn.execute(Q["stale_hours"])
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def refresh_batch(
    conn: AsyncConnection[Any], max_hours: int = BATCH_HOURS, before: datetime | None = None
) -> int:
    """Fold up to ``max_hours`` stale hours (those before ``before`` only, when given) in one
    transaction: the hours folded, 0 when none is stale, -1 when another refresher is at
    work."""
    args = {"max_hours": max_hours, "before": before or "infinity"}
    async with conn.transaction():
        cur = await conn.execute(Q["refresh_rollup"], args)
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def catch_up(
    conn: AsyncConnection[Any],
    *,
    max_hours: int = BATCH_HOURS,
    progress: OnProgress | None = None,
    wait_busy: float = 0.0,
) -> RefreshReport:
    """Fold every stale hour, batch by batch: the closed hours, then once the open hour (which
    live writers keep making stale again). When another refresher holds the lock, wait for it up
    to ``wait_busy`` seconds (then report ``busy``)."""
    report = RefreshReport()
    started = time.perf_counter()
    total = await stale_hours(conn)
    deadline = time.monotonic() + wait_busy
    open_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    last = False  # the closed hours are done: one more batch, with the open hour
    while True:
        folded = await refresh_batch(conn, max_hours, None if last else open_hour)
        if folded < 0:
            if time.monotonic() >= deadline:
                report.busy = True
                break
            await asyncio.sleep(0.1)
            continue
        if folded > 0:
            report.hours += folded
            report.batches += 1
            if progress is not None:
                progress(report.hours, max(total, report.hours))
        if last:
            break
        last = folded == 0
    report.seconds = time.perf_counter() - started
    return report


async def refresh_all(
    url: str | None = None, *, progress: OnProgress | None = None, wait_busy: float = 60.0
) -> RefreshReport:
    """Connect and fold every stale hour (``apex-metrics rollup --once``, ``db migrate``)."""
    url = database_url(url)
    try:
        async with await connect(url) as conn:
            return await catch_up(conn, progress=progress, wait_busy=wait_busy)
    except psycopg.Error as exc:
        raise wrap_query_error(exc, describe(url)) from exc


async def run_refresher(
    url: str,
    *,
    interval: float = INTERVAL,
    open_hour_every: float = OPEN_HOUR_EVERY,
    stop: asyncio.Event | None = None,
) -> None:
    """Fold stale hours until cancelled or ``stop`` is set: drain, then look again every
    ``interval`` seconds. The open hour (the current one, which panel windows ending now read
    raw anyway) is folded every ``open_hour_every`` seconds only: refolding it costs as many
    rows as it holds. Reconnects after failures (logged, at most once a minute)."""
    stop = stop or asyncio.Event()
    last_warning = 0.0
    open_hour_at = 0.0
    while not stop.is_set():
        try:
            async with await connect(url) as conn:
                while not stop.is_set():
                    before: datetime | None = None
                    if time.monotonic() - open_hour_at < open_hour_every:
                        before = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
                    else:
                        open_hour_at = time.monotonic()
                    while await refresh_batch(conn, before=before) > 0:
                        pass
                    with contextlib.suppress(TimeoutError):
                        await wait_event(stop, interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep refreshing: the database may come back
            now = time.monotonic()
            if now - last_warning > 60:
                log.warning("rollup refresher: %s", exc)
                last_warning = now
            with contextlib.suppress(TimeoutError):
                await wait_event(stop, 2.0)


async def rebuild_with_progress(url: str | None, console: Console | None) -> RefreshReport:
    """Fold every stale hour with a progress bar on ``console`` when it is a terminal (after a
    migration that rebuilds the rollups, that is every hour with rows)."""
    progress = Progress(
        TextColumn("building panel rollups"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:,.0f} of {task.total:,.0f} hours"),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=True,
        disable=console is None or not console.is_terminal,
    )
    with progress:
        task = progress.add_task("rollup", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return await refresh_all(url, progress=advance)
