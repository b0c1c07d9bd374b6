"""Upserts changed runs into ``campaign_metrics``, in batches (group commit).

One task writes: it takes every run with unwritten changes, validates each into a ``Metric``
and upserts them all in one transaction (COPY into a stage, then the recorder's upsert by
run_id). Requests wait for the write that includes their spans, so a 200 means the runs they
touched are committed. A failed write leaves the runs dirty: the next write (the exporter's
retry, or the writer's own retry a second later) takes them again. A run is written whole or
not at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from apex_metrics.collect.metrics import CollectMetrics
from apex_metrics.collect.runs import TraceRun
from apex_metrics.collect.store import TraceStore
from apex_metrics.db import driver_errors
from apex_metrics.exceptions import ApexMetricsError, MetricValidationError, first_line
from apex_metrics.metric import Metric
from apex_metrics.recorder import write_metrics

log = logging.getLogger("apex_metrics.collect")
RETRY_SECONDS = 1.0


class RunWriter:
    def __init__(
        self,
        store: TraceStore,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        metrics: CollectMetrics,
    ) -> None:
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._cycle: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.last_error: str | None = None

    def flush(self) -> asyncio.Future[bool]:
        """The write that will include every change made so far: True once committed."""
        self._wake.set()
        return self._cycle

    async def run(self) -> None:
        """Write until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            ok = await self.write_once()
            if not ok:
                await asyncio.sleep(RETRY_SECONDS)
                self._wake.set()

    async def write_once(self) -> bool:
        cycle, self._cycle = self._cycle, asyncio.get_running_loop().create_future()
        runs = self.store.take_dirty()
        ok = True
        if runs:
            ok = await self._write(runs)
        cycle.set_result(ok)
        return ok

    async def _write(self, runs: list[TraceRun]) -> bool:
        batch: dict[str, tuple[TraceRun, int, Metric]] = {}
        for run in runs:
            changes = run.changes
            try:
                metric = run.metric()
            except MetricValidationError as exc:  # spans are validated: this is a bug
                log.error("run of trace %s breaks the contract: %s", run.trace_id.hex(), exc)
                run.written_changes = changes
                continue
            if metric.run_id in batch:
                other = batch[metric.run_id][0]
                log.warning(
                    "traces %s and %s carry the same run id %r: the later one wins",
                    other.trace_id.hex(),
                    run.trace_id.hex(),
                    metric.run_id,
                )
                other.written_changes = other.changes
            batch[metric.run_id] = (run, changes, metric)
        if not batch:
            return True
        try:
            with driver_errors():  # a pool timeout, or the write failing in PostgreSQL
                async with self.pool.connection() as conn:
                    await write_metrics(conn, [m for _, _, m in batch.values()])
        except (ApexMetricsError, OSError) as exc:
            self.last_error = first_line(exc)
            log.warning("writing %d runs failed, will retry: %s", len(batch), self.last_error)
            self.metrics.write_failures.inc()
            self.store.give_back(runs)
            return False
        self.last_error = None
        for run, changes, metric in batch.values():
            run.written_changes = changes
            run.written_run_id = metric.run_id
        self.metrics.runs_written.inc(len(batch))
        return True
