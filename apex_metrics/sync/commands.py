"""What the ``sync`` and ``reconcile`` commands run: wiring of settings, client and engine."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.flow import Flow
from apex_metrics.dataverse.pacing import Pacer
from apex_metrics.dataverse.retry import ROW_RETRY, RetryPolicy
from apex_metrics.settings import Settings
from apex_metrics.sync.engine import Engine, EngineConfig
from apex_metrics.sync.errors import SyncIncomplete
from apex_metrics.sync.metrics import SyncMetrics
from apex_metrics.sync.reconcile import ReconcileReport, reconcile
from apex_metrics.sync.sink import DataverseSink
from apex_metrics.sync.worker import EngineStats, WorkerConfig

log = logging.getLogger("apex_metrics.sync")

# The engine's client retries a failed request only briefly: longer waits are per-row
# next-attempt times in PostgreSQL (no lease ticks away while the client sleeps). Its writes
# take no 429 in place (``DataverseSink``): the rows go back without spending attempts while
# the flow pauses everyone; its other requests (WhoAmI at start) wait 429s out.
ENGINE_RETRY = RetryPolicy(max_attempts=3, base_wait=0.2, max_wait=2.0)


def engine_flow() -> Flow:
    """The flow of an engine's client: its own pacer (the engine shares its slots through
    PostgreSQL) and ``ENGINE_RETRY``."""
    return Flow(Pacer(), ENGINE_RETRY)


def engine_config(
    settings: Settings,
    *,
    workers: int | None = None,
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
        retry=replace(ROW_RETRY, max_attempts=settings.sync_max_attempts),
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
    flow = engine_flow()
    async with open_dataverse(settings, flow=flow) as client:
        who = await client.whoami()  # proves the credentials; the flow waits out a 429
        log.info(
            "connected to %s (dop hint %s, writes: %s)",
            who.environment_url,
            who.dop_hint,
            settings.sync_write,
            extra={"event": "connected"},
        )
        sink = DataverseSink(client, settings.sync_write)
        engine = Engine(config, sink, flow.pacer, metrics=metrics)
        stats = await engine.run(handle_signals=handle_signals)
    if config.worker.once and stats.dead_lettered:
        keys = ", ".join(stats.dead_keys[:5])
        more = "…" if stats.dead_lettered > 5 else ""
        raise SyncIncomplete(
            f"{stats.delivered} row(s) delivered, {stats.dead_lettered} dead-lettered "
            f"({keys}{more})"
        )
    return stats


async def run_reconcile(
    settings: Settings, *, repair: bool, delete_extra: bool = False
) -> ReconcileReport:
    async with open_dataverse(settings) as client:
        return await reconcile(
            settings.require("database_url"), client, repair=repair, delete_extra=delete_extra
        )


def stats_lines(stats: EngineStats) -> list[str]:
    return [
        f"delivered {stats.delivered} row(s) ({stats.created} created, {stats.updated} updated, "
        f"{stats.upserted} upserted) in {stats.requests} request(s)",
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
    if report.deleted:
        lines.append(f"deleted {report.deleted} extra row(s) from Dataverse")
    return lines


def _sample(item: dict[str, Any]) -> str:
    if "columns" in item:
        return f"{item['run_id']} ({', '.join(item['columns'])})"
    return str(item["run_id"])
