"""PostgreSQL commands (the core install, no extra): ``db migrate``, ``record``, ``import`` and
``rollup``, the panel's refresher on its own."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from apex_metrics.ops.options import DatabaseUrlOption, settings_with
from apex_metrics.ops.output import console, err_console, print_json, print_lines

db_app = typer.Typer(help="PostgreSQL schema commands.", no_args_is_help=True)


@db_app.command("migrate")
def db_migrate(
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Create or upgrade the PostgreSQL schema (idempotent; safe to run twice at once).

    Then folds the hours the panel's rollups have not caught up with (after an upgrade that
    rebuilds them: every hour with rows, with a progress bar)."""
    import asyncio

    from apex_metrics.db import migrate
    from apex_metrics.rollup import rebuild_with_progress

    url = settings_with(database_url=database_url).database_url
    report = asyncio.run(migrate(url))
    rollup = asyncio.run(rebuild_with_progress(url, None if as_json else err_console))
    if as_json:
        print_json({**report.to_dict(), "rollup": rollup.to_dict()})
    else:
        print_lines(report.lines())
        if rollup.hours:
            console.print(
                f"panel rollups: folded {rollup.hours:,} hours in {rollup.seconds:.1f} s",
                markup=False,
                highlight=False,
            )


FIELD_HELP = {
    "campaign_id": "Campaign the run belongs to (text, 1-64 characters). Required (here or in "
    "--json).",
    "run_id": "Unique id of the run (text, 1-64 characters, none of / < > * % & : \\ ? +); "
    "recording it again updates the run. Required (here or in --json).",
    "phase": "Campaign phase, e.g. 2-3 (text, up to 16 characters).",
    "agents_total": "Agents that took part (integer ≥ 0).",
    "agents_successful": "Agents that succeeded (integer, 0 … --agents-total).",
    "assets_generated": "Assets produced (integer ≥ 0).",
    "tokens_in": "Input tokens over all agents (integer, 0 … 2,147,483,647).",
    "tokens_out": "Output tokens over all agents (integer, 0 … 2,147,483,647).",
    "cost_usd": "Cost in US dollars (decimal, 0 … 99999.99999, 5 decimals), e.g. 0.4213.",
    "latency_p95_ms": "95th percentile of the agents' call latency, in milliseconds (integer ≥ 0).",
    "latency_avg_ms": "Average call latency, in milliseconds (integer ≥ 0).",
    "success_rate": "Percent of agents that succeeded (decimal, 0 … 100, 2 decimals) "
    "[default: derived from the agent counts].",
}


def _field_option(name: str) -> Any:
    metavar = {"integer": "INTEGER", "decimal": "DECIMAL", "string": "TEXT"}
    from apex_metrics.metric import BY_NAME

    return typer.Option(
        f"--{name.replace('_', '-')}",
        metavar=metavar.get(BY_NAME[name].kind, "TEXT"),
        help=FIELD_HELP[name],
        show_default=False,
    )


def record_run(
    campaign_id: Annotated[str | None, _field_option("campaign_id")] = None,
    run_id: Annotated[str | None, _field_option("run_id")] = None,
    phase: Annotated[str | None, _field_option("phase")] = None,
    agents_total: Annotated[str | None, _field_option("agents_total")] = None,
    agents_successful: Annotated[str | None, _field_option("agents_successful")] = None,
    assets_generated: Annotated[str | None, _field_option("assets_generated")] = None,
    tokens_in: Annotated[str | None, _field_option("tokens_in")] = None,
    tokens_out: Annotated[str | None, _field_option("tokens_out")] = None,
    cost_usd: Annotated[str | None, _field_option("cost_usd")] = None,
    latency_p95_ms: Annotated[str | None, _field_option("latency_p95_ms")] = None,
    latency_avg_ms: Annotated[str | None, _field_option("latency_avg_ms")] = None,
    success_rate: Annotated[str | None, _field_option("success_rate")] = None,
    created_at: Annotated[
        str | None,
        typer.Option(
            "--created-at",
            metavar="TIMESTAMP",
            help="When the run happened: ISO 8601 with a time zone, e.g. "
            "2026-03-01T09:30:00Z [default: now].",
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--json",
            metavar="JSON",
            help='The whole run as a JSON object, e.g. \'{"campaign_id": "spring", '
            '"run_id": "r-1"}\' (flags override its keys).',
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Record one run (insert, or update by run id); it becomes pending for export.

    --campaign-id and --run-id are required (as flags or as keys of --json); every other
    field is optional. Bad values fail before anything is written, naming the field and rule.
    """
    import asyncio
    from decimal import Decimal

    from apex_metrics.exceptions import FieldError, MetricValidationError
    from apex_metrics.importer import json_problem
    from apex_metrics.metric import parse_metric
    from apex_metrics.recorder import Recorder

    values: dict[str, Any] = {}
    if data is not None:
        try:
            parsed = json.loads(data, parse_float=Decimal)
        except (ValueError, RecursionError) as exc:  # also: 5,000 digits, nested too deeply
            raise MetricValidationError(
                [FieldError("--json", f"not valid JSON: {json_problem(exc)}")]
            ) from None
        if not isinstance(parsed, dict):
            raise MetricValidationError([FieldError("--json", "must be a JSON object")])
        values.update(parsed)
    flags = {
        "campaign_id": campaign_id, "run_id": run_id, "phase": phase,
        "agents_total": agents_total, "agents_successful": agents_successful,
        "assets_generated": assets_generated, "tokens_in": tokens_in, "tokens_out": tokens_out,
        "cost_usd": cost_usd, "latency_p95_ms": latency_p95_ms, "latency_avg_ms": latency_avg_ms,
        "success_rate": success_rate, "created_at": created_at,
    }  # fmt: skip
    values.update({k: v for k, v in flags.items() if v is not None})
    metric = parse_metric(values)  # bad input fails before any connection
    url = settings_with(database_url=database_url).database_url

    async def run() -> str:
        async with Recorder(url, max_connections=1, strict=True) as recorder:
            result = await recorder.record(metric)
        state = "new" if result.inserted else "updated"
        where = f"id {result.id}, version {result.version}"
        return f"recorded run {values.get('run_id')} ({state}, {where})"

    console.print(asyncio.run(run()), markup=False, highlight=False, soft_wrap=True)


def import_runs(
    source: Annotated[
        str, typer.Argument(metavar="FILE", help="CSV or JSON Lines file; - for stdin.")
    ],
    skip_invalid: Annotated[
        bool,
        typer.Option("--skip-invalid", help="Load the valid rows; write the rest to --rejects."),
    ] = False,
    rejects: Annotated[
        str | None,
        typer.Option("--rejects", help="Where --skip-invalid writes rejected rows (JSON Lines)."),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv or jsonl (default: from the name/content).")
    ] = None,
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Bulk-load runs: all or nothing, unless --skip-invalid.

    New runs go through COPY straight into the table; when some run is already recorded, the
    file goes through a staging table and one upsert in run_id order (two overlapping imports
    then wait for each other instead of deadlocking)."""
    import asyncio

    from apex_metrics.importer import import_file

    if fmt not in (None, "csv", "jsonl"):
        raise typer.BadParameter("must be csv or jsonl", param_hint="--format")
    report = asyncio.run(
        import_file(
            source,
            url=settings_with(database_url=database_url).database_url,
            skip_invalid=skip_invalid,
            rejects=rejects,
            fmt=fmt,  # type: ignore[arg-type]
            console=err_console,
        )
    )
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(report.summary(), markup=False, highlight=False, soft_wrap=True)


def rollup_command(
    database_url: DatabaseUrlOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="Fold every stale hour, print what was done, exit.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between looks at the log when idle.")
    ] = 0.25,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report (--once).")] = False,
) -> None:
    """Keep the panel's rollups folded: writers only log the hours they touched; this folds them
    into the hourly and daily rollups in batches (one refresher works at a time; others wait).

    `apex-metrics panel` runs the same refresher itself: run this where no panel runs, so
    that the log of stale hours stays short and panel reads stay cheap. The panel's figures are
    exact either way."""
    import asyncio

    from apex_metrics.rollup import rebuild_with_progress, run_refresher

    url = settings_with(database_url=database_url).require("database_url")
    if once:
        report = asyncio.run(rebuild_with_progress(url, None if as_json else err_console))
        if as_json:
            print_json(report.to_dict())
        else:
            busy = "; another refresher was busy" if report.busy else ""
            console.print(
                f"folded {report.hours:,} hours in {report.batches} batches "
                f"({report.seconds:.1f} s){busy}",
                markup=False,
                highlight=False,
            )
        return
    asyncio.run(rebuild_with_progress(url, err_console))  # fails fast on a bad URL or schema
    err_console.print("rollup refresher running; Ctrl-C stops it", markup=False, highlight=False)
    try:
        asyncio.run(run_refresher(url, interval=interval))
    except KeyboardInterrupt:
        pass
