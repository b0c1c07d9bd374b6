"""The sync engine's commands (the sync extra): ``sync`` (run workers), ``sync status``,
``sync retry-dead``, ``sync replay`` and ``reconcile``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from apex_metrics.ops.options import (
    DatabaseUrlOption,
    DataverseUrlOption,
    setting_option,
    settings_with,
)
from apex_metrics.ops.output import (
    EXIT_DIFFERENCES,
    EXIT_ERROR,
    DifferencesFound,
    console,
    print_json,
    print_lines,
    state,
)

sync_app = typer.Typer(
    help="Export pending rows to Dataverse: run workers, inspect, re-queue.",
    invoke_without_command=True,
)


@sync_app.callback()
def sync_run(
    ctx: typer.Context,
    workers: Annotated[
        int | None,
        setting_option(
            "sync_workers",
            "--workers",
            min=1,
            max=64,
            help="Concurrent workers in this process [default: x-ms-dop-hint + 2]. However "
            "many there are, every process together keeps to the one Dataverse budget.",
        ),
    ] = None,
    write: Annotated[
        str | None,
        setting_option(
            "sync_write",
            "--write",
            help="upsert-multiple (UpsertMultiple by alternate key) or batch ($batch of "
            "upserts) [default: upsert-multiple].",
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="Drain what is pending, then exit (1 if a row failed)."),
    ] = False,
    poll_interval: Annotated[
        float | None,
        setting_option(
            "sync_poll_interval",
            "--poll-interval",
            min=0.01,
            help="Seconds between polls when no NOTIFY arrives [default: 1].",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        setting_option(
            "sync_batch_size",
            "--batch-size",
            min=1,
            max=1000,
            help="Most rows per claim and request; fewer when requests are slow (the pacer "
            "aims at about 10 s per request) [default: 1000].",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        setting_option(
            "sync_metrics_port",
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve Prometheus /metrics here.",
        ),
    ] = None,
    listen: Annotated[
        bool,
        typer.Option(
            "--listen/--no-listen",
            help="Wake on PostgreSQL NOTIFY through a held connection. --no-listen polls only, "
            "so a scale-to-zero hosted database can sleep between polls.",
        ),
    ] = True,
    log_format: Annotated[
        str | None,
        setting_option(
            "log_format",
            "--log-format",
            help="Log format: text or json (one object per line).",
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    url: DataverseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final report as JSON.")] = (
        False
    ),
) -> None:
    """Run sync workers until SIGINT/SIGTERM (or, with --once, until drained).

    Settings: APEX_DATABASE_URL, APEX_DATAVERSE_URL and credentials, APEX_SYNC_MAX_ATTEMPTS,
    APEX_SYNC_LEASE_SECONDS, APEX_SYNC_RUN_RETENTION_DAYS.
    """
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    from apex_metrics.sync.commands import engine_config, run_sync, stats_lines
    from apex_metrics.sync.logs import configure_logging

    if write is not None:
        from apex_metrics.sync.sink import WRITE_MODES

        if write not in WRITE_MODES:
            raise typer.BadParameter(
                f"must be one of {', '.join(WRITE_MODES)}", param_hint="--write"
            )
    if log_format not in (None, "text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    settings = settings_with(
        database_url=database_url, dataverse_url=url, sync_workers=workers, sync_write=write,
        sync_poll_interval=poll_interval, sync_batch_size=batch_size,
        sync_metrics_port=metrics_port, log_format=log_format,
    )  # fmt: skip
    configure_logging(settings.log_format, debug=state["debug"])
    config = engine_config(
        settings,
        workers=settings.sync_workers,
        once=once,
        poll_interval=settings.sync_poll_interval,
        batch_size=settings.sync_batch_size,
    )
    if not listen:
        import dataclasses

        config = dataclasses.replace(config, listen=False)
    stats = asyncio.run(run_sync(settings, config, metrics_port=settings.sync_metrics_port))
    if as_json:
        print_json(stats.as_dict())
    else:
        print_lines(stats_lines(stats))


@sync_app.command("status")
def sync_status(
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Pending, in flight, dead, lag, recent throughput, last errors and last runs."""
    import asyncio

    from apex_metrics.sync.status import get_status

    url = settings_with(database_url=database_url).require("database_url")
    status = asyncio.run(get_status(url))
    if as_json:
        print_json(status.to_dict())
        return
    lines = [
        f"pending {status.pending} (retrying {status.retrying}), in flight {status.in_flight}, "
        f"dead {status.dead}, lag {status.lag_seconds:.1f}s",
        f"delivered: {status.delivered_last_minute} in the last minute "
        f"({status.rows_per_second:.1f} rows/s), {status.delivered_last_hour} in the last hour",
    ]
    for e in status.last_errors:
        where = "dead" if e["dead"] else f"attempt {e['attempts']}"
        lines.append(
            f"  error {e['at']} {e['run_id']} [{where}] {e['code'] or '-'}: {e['message']}"
        )
    for r in status.last_runs:
        lines.append(
            f"  run {r['id']} {r['started_at']} claimed {r['claimed']} created {r['created']} "
            f"updated {r['updated']} upserted {r['upserted']} failed {r['failed']} "
            f"dead {r['dead_lettered']}" + (f" error: {r['error']}" if r["error"] else "")
        )
    print_lines(lines)


@sync_app.command("retry-dead")
def sync_retry_dead(
    run_ids: Annotated[
        list[str] | None, typer.Argument(help="Run ids to re-queue (default: every dead row).")
    ] = None,
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-queue dead-lettered rows with fresh attempts."""
    import asyncio

    from apex_metrics.sync.errors import SyncError
    from apex_metrics.sync.status import retry_dead

    url = settings_with(database_url=database_url).require("database_url")
    report = asyncio.run(retry_dead(url, run_ids or None))
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(f"re-queued {len(report.requeued)} dead row(s)", markup=False, soft_wrap=True)
        if report.not_dead:
            console.print(f"not dead: {', '.join(report.not_dead)}", markup=False, soft_wrap=True)
    if report.unknown:
        raise SyncError(f"unknown run id(s): {', '.join(report.unknown)}")


@sync_app.command("replay")
def sync_replay(
    since: Annotated[
        str,
        typer.Option("--since", help="ISO 8601 time with a zone: re-send rows changed since."),
    ],
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Send again every row changed at or after --since (upserts: replays do no harm)."""
    import asyncio
    from datetime import datetime

    from apex_metrics.sync.errors import SyncError
    from apex_metrics.sync.status import replay

    text = since.strip()
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise SyncError(
            f"--since {since!r}: must be an ISO 8601 time", hint="e.g. 2026-01-31T00:00:00Z"
        ) from None
    url = settings_with(database_url=database_url).require("database_url")
    count = asyncio.run(replay(url, when))
    if as_json:
        print_json({"requeued": count, "since": when.isoformat()})
    else:
        console.print(
            f"re-queued {count} row(s) changed since {when.isoformat()}",
            markup=False,
            soft_wrap=True,
        )


def reconcile_command(
    repair: Annotated[
        bool, typer.Option("--repair", help="Re-queue rows missing or different in Dataverse.")
    ] = False,
    delete_extra: Annotated[
        bool,
        typer.Option(
            "--delete-extra",
            help="Delete from Dataverse the rows PostgreSQL does not have (extra rows, e.g. "
            "left by a dropped or restored database). Asks for confirmation unless --yes.",
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before deleting extra rows.")
    ] = False,
    database_url: DatabaseUrlOption = None,
    url: DataverseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare every key and value in Dataverse with PostgreSQL (missing, extra, different).

    Exit status 3 when differences remain (with --repair: rows that re-queuing cannot fix,
    i.e. extra or duplicated ones, unless --delete-extra removed them); 1 on errors.
    """
    import asyncio

    from apex_metrics.sync.commands import reconcile_lines, run_reconcile

    settings = settings_with(database_url=database_url, dataverse_url=url)
    if delete_extra and not yes:
        if not sys.stdin.isatty():
            raise typer.BadParameter(
                "deleting rows from Dataverse needs confirmation: add --yes", param_hint="--yes"
            )
        where = settings.require("dataverse_url")
        if not typer.confirm(
            f"Delete from {where} every row whose run id is not in PostgreSQL?", default=False
        ):
            raise typer.Exit(EXIT_ERROR)
    report = asyncio.run(run_reconcile(settings, repair=repair, delete_extra=delete_extra))
    if as_json:
        print_json(report.to_dict())
    else:
        print_lines(reconcile_lines(report))
    unfixable = report.extra + report.duplicated
    if (not repair and not report.clean) or unfixable:
        if as_json:
            raise typer.Exit(EXIT_DIFFERENCES)  # the JSON report says what differs
        hints = []
        if report.missing or report.different:
            hints.append("`--repair` re-queues missing and different rows")
        if report.extra:
            hints.append("`--repair --delete-extra` also deletes the extra rows from Dataverse")
        raise DifferencesFound(
            f"PostgreSQL and Dataverse differ ({report.missing} missing, {report.different} "
            f"different, {report.extra} extra, {report.duplicated} duplicated)",
            hint="; ".join(hints) or "duplicated keys need a look in Dataverse",
        )
