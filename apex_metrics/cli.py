"""``apex-metrics`` command line: parses arguments, then calls the parts.

Every command that reports state takes ``--json``. Errors of ours (``ApexMetricsError``) print
one line, ``error: <what happened> (<what to do>)``, and exit 1; ``--debug`` adds the traceback.
Usage errors exit 2.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Annotated, Any

import typer
from rich.console import Console

from apex_metrics import __version__
from apex_metrics.exceptions import ApexMetricsError

app = typer.Typer(
    name="apex-metrics",
    help="Turn AI-agent campaign runs into live, trustworthy KPIs in Microsoft Dataverse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="PostgreSQL schema commands.", no_args_is_help=True)
dataverse_app = typer.Typer(help="Dataverse table and credential commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(dataverse_app, name="dataverse")

console = Console()
err_console = Console(stderr=True)
_state: dict[str, bool] = {"debug": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"apex-metrics {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logs on errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    _state["debug"] = debug


def print_json(data: Any) -> None:
    """Machine-readable output for ``--json``: one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------------
# Commands are registered below, one section per part. Keep each section self-contained.

# --- foundation: db migrate, record, import -----------------------------------------------------

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="APEX_DATABASE_URL",
        show_envvar=True,
        help="PostgreSQL URL (also read from .env.local / .env).",
    ),
]


@db_app.command("migrate")
def db_migrate(
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Create or upgrade the PostgreSQL schema (idempotent; safe to run twice at once)."""
    import asyncio

    from apex_metrics.db import migrate

    report = asyncio.run(migrate(database_url))
    if as_json:
        print_json(report.to_dict())
    else:
        for line in report.lines():
            console.print(line, markup=False, highlight=False)


def _field_option(name: str) -> Any:
    return typer.Option(f"--{name.replace('_', '-')}", help=f"Value of {name}.")


@app.command("record")
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
        str | None, typer.Option("--created-at", help="ISO 8601 with a time zone (default: now).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--json", help="The whole run as a JSON object (flags override its keys)."),
    ] = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Record one run (insert, or update by run id); it becomes pending for export."""
    import asyncio
    from decimal import Decimal

    from apex_metrics.exceptions import FieldError, MetricValidationError
    from apex_metrics.metric import parse_metric
    from apex_metrics.recorder import Recorder

    values: dict[str, Any] = {}
    if data is not None:
        try:
            parsed = json.loads(data, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise MetricValidationError(
                [FieldError("--json", f"not valid JSON: {exc.msg}")]
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

    async def run() -> str:
        async with Recorder(database_url, max_connections=1) as recorder:
            result = await recorder.record(metric)
        state = "new" if result.inserted else "updated"
        where = f"id {result.id}, version {result.version}"
        return f"recorded run {values.get('run_id')} ({state}, {where})"

    console.print(asyncio.run(run()), markup=False, highlight=False)


@app.command("import")
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
    """Bulk-load runs: all or nothing, unless --skip-invalid."""
    import asyncio

    from apex_metrics.importer import import_file

    if fmt not in (None, "csv", "jsonl"):
        raise typer.BadParameter("must be csv or jsonl", param_hint="--format")
    report = asyncio.run(
        import_file(
            source,
            url=database_url,
            skip_invalid=skip_invalid,
            rejects=rejects,
            fmt=fmt,  # type: ignore[arg-type]
            console=err_console,
        )
    )
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(report.summary(), markup=False, highlight=False)


# --- emulator -----------------------------------------------------------------------------------

# --- dataverse: provision, whoami ---------------------------------------------------------------

DataverseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="APEX_DATAVERSE_URL",
        show_envvar=True,
        help="Dataverse environment URL (also read from .env.local / .env).",
    ),
]


def _dataverse_settings(url: str | None) -> Any:
    from apex_metrics.settings import get_settings

    settings = get_settings()
    return settings.model_copy(update={"dataverse_url": url}) if url else settings


@dataverse_app.command("whoami")
def dataverse_whoami(
    url: DataverseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Prove the credentials: get a token, call WhoAmI, show organisation, app user, parallelism.

    Credentials: APEX_TENANT_ID, APEX_CLIENT_ID, APEX_CLIENT_SECRET (or APEX_CLIENT_CERTIFICATE),
    APEX_AUTHORITY_HOST, APEX_CA_BUNDLE.
    """
    import asyncio

    from apex_metrics.dataverse.commands import run_whoami

    report = asyncio.run(run_whoami(_dataverse_settings(url)))
    if as_json:
        print_json(report.to_dict())
    else:
        for line in report.lines():
            console.print(line, markup=False, highlight=False)


@dataverse_app.command("provision")
def dataverse_provision(
    url: DataverseUrlOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only read and print the plan; change nothing.")
    ] = False,
    key_timeout: Annotated[
        float, typer.Option("--key-timeout", help="Seconds to wait for the key to be Active.")
    ] = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create or check the apex_campaignmetrics table: columns, key, flags. Idempotent.

    Exit status 1 when the table drifted from the contract (each problem is listed with its fix).
    """
    import asyncio

    from apex_metrics.dataverse.commands import run_provision
    from apex_metrics.dataverse.provision import ContractDrift

    def progress(message: str) -> None:
        err_console.print(message, markup=False, highlight=False)

    report = asyncio.run(
        run_provision(
            _dataverse_settings(url), dry_run=dry_run, progress=progress, key_timeout=key_timeout
        )
    )
    if as_json:
        print_json(report.to_dict())
    else:
        for line in report.lines():
            console.print(line, markup=False, highlight=False)
    if report.problems:
        count = len(report.problems)
        raise ContractDrift(f"table {report.table} breaks the contract in {count} way(s)")


# --- sync engine: sync, sync status/retry-dead/replay, reconcile --------------------------------

# --- panel --------------------------------------------------------------------------------------


@app.command("panel")
def panel_command(
    host: Annotated[
        str, typer.Option(help="Address to bind; off loopback APEX_PANEL_TOKEN is required.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    source: Annotated[
        str | None,
        typer.Option(
            help="Where to read runs: dataverse or postgres (default: dataverse when "
            "APEX_DATAVERSE_URL is set, else postgres; postgres needs APEX_DATABASE_URL)."
        ),
    ] = None,
) -> None:
    """Serve the MetricsPanel: live KPIs, JSON API, CSV export, server-sent events."""
    import asyncio

    from apex_metrics.panel.app import PanelConfig, serve
    from apex_metrics.settings import get_settings

    if source not in (None, "dataverse", "postgres"):
        raise typer.BadParameter("must be dataverse or postgres", param_hint="--source")
    config = PanelConfig.from_settings(
        get_settings(),
        source=source,  # type: ignore[arg-type]
        host=host,
        port=port,
    )
    asyncio.run(serve(config))


# --- demo, verify, bench ------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point."""
    try:
        app()  # standalone mode: usage errors exit 2, Ctrl-C exits 1 with "Aborted!"
    except ApexMetricsError as exc:
        if _state["debug"]:
            traceback.print_exc()
        err_console.print(f"error: {exc.one_line()}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
