"""What the ``sync`` and ``reconcile`` commands run: wiring of settings, client and engine."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from apex_metrics.dataverse.client import DataverseClient, WhoAmI
from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.errors import Throttled
from apex_metrics.dataverse.flow import RetryPolicy as ClientRetry
from apex_metrics.settings import Settings
from apex_metrics.sync.engine import Engine, EngineConfig
from apex_metrics.sync.errors import SyncIncomplete
from apex_metrics.sync.metrics import SyncMetrics
from apex_metrics.sync.policy import RetryPolicy
from apex_metrics.sync.reconcile import ReconcileReport, reconcile
from apex_metrics.sync.worker import EngineStats, WorkerConfig

log = logging.getLogger("apex_metrics.sync")

# The client retries a failed $batch only briefly; longer waits are per-row next-attempt times
# in PostgreSQL (no lease ticks away while the client sleeps), and a 429 comes back to the
# engine at once so that it pauses every worker without spending the rows' attempts.
ENGINE_CLIENT_RETRY = ClientRetry(max_attempts=3, base_wait=0.2, max_wait=2.0, max_throttled=0)


def engine_config(
    settings: Settings,
    *,
    workers: int,
    once: bool,
    poll_interval: float | None = None,
    batch_size: int | None = None,
) -> EngineConfig:
    return EngineConfig(
        database_url=settings.require("database_url"),
        workers=workers,
        worker=WorkerConfig(
            batch_size=batch_size or settings.sync_batch_size,
            poll_interval=poll_interval or settings.sync_poll_interval,
            lease_seconds=settings.sync_lease_seconds,
            once=once,
        ),
        retry=RetryPolicy(max_attempts=settings.sync_max_attempts),
        retention_days=settings.sync_run_retention_days,
    )


async def run_sync(
    settings: Settings,
    config: EngineConfig,
    *,
    metrics_port: int | None = None,
    handle_signals: bool = True,
) -> EngineStats:
    """Run the engine until stopped (or drained, with ``once``); fail if a row went dead."""
    metrics = SyncMetrics()
    if metrics_port:
        metrics.serve(metrics_port)
        log.info("metrics on http://127.0.0.1:%d/metrics", metrics_port)
    async with open_dataverse(settings, retry=ENGINE_CLIENT_RETRY) as client:
        who = await _whoami(client)
        log.info(
            "connected to %s (dop hint %s)",
            who.environment_url,
            who.dop_hint,
            extra={"event": "connected"},
        )
        engine = Engine(config, client, metrics=metrics)
        stats = await engine.run(handle_signals=handle_signals)
    if config.worker.once and stats.dead_lettered:
        keys = ", ".join(stats.dead_keys[:5])
        more = "…" if stats.dead_lettered > 5 else ""
        raise SyncIncomplete(
            f"{stats.delivered} row(s) delivered, {stats.dead_lettered} dead-lettered "
            f"({keys}{more})"
        )
    return stats


async def _whoami(client: DataverseClient, *, max_wait: float = 300.0) -> WhoAmI:
    """Prove the credentials before claiming anything; wait out throttling meanwhile."""
    waited = 0.0
    while True:
        try:
            return await client.whoami()
        except Throttled as exc:
            if waited >= max_wait:
                raise
            pause = max(exc.retry_after, 1.0)
            log.info("throttled at start: waiting %.0fs", pause, extra={"event": "throttled"})
            await asyncio.sleep(pause)
            waited += pause


async def run_reconcile(settings: Settings, *, repair: bool) -> ReconcileReport:
    async with open_dataverse(settings) as client:
        return await reconcile(settings.require("database_url"), client, repair=repair)


def stats_lines(stats: EngineStats) -> list[str]:
    return [
        f"delivered {stats.delivered} row(s) ({stats.created} created, {stats.updated} updated) "
        f"in {stats.requests} request(s)",
        f"failed attempts {stats.failed}, dead-lettered {stats.dead_lettered}, "
        f"changed in flight {stats.requeued}, throttled {stats.throttled}",
    ]


def reconcile_lines(report: ReconcileReport) -> list[str]:
    lines = [
        f"PostgreSQL {report.pg_rows} row(s), Dataverse {report.dataverse_rows} row(s)",
        f"matching {report.matching}, pending {report.pending}, missing {report.missing}, "
        f"different {report.different}, extra {report.extra}, duplicated {report.duplicated}",
    ]
    for kind, items in report.samples.items():
        shown = ", ".join(_sample(i) for i in items[:5])
        lines.append(f"  {kind}: {shown}")
    if report.repaired:
        lines.append(f"re-queued {report.requeued} row(s) for delivery")
    return lines


def _sample(item: dict[str, Any]) -> str:
    if "columns" in item:
        return f"{item['run_id']} ({', '.join(item['columns'])})"
    return str(item["run_id"])
