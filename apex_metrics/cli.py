"""``apex-metrics`` command line: parses arguments, then calls the parts.

Every command that reports state takes ``--json``. Errors of ours (``ApexMetricsError``) print
one line, ``error: <what happened> (<what to do>)`` (bad input: one line per problem), and exit
1; ``--debug`` adds the traceback. With ``--json`` the error is also one JSON document on stdout.
Exit status (README, "Exit status"): 0 success, 1 error, 2 usage error, 3 differences found
(``reconcile``, ``verify``, ``dataverse provision``), 4 rows dead-lettered (``sync --once``),
130 interrupted.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
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

console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)
_state: dict[str, bool] = {"debug": False}

EXIT_ERROR = 1  # an error: configuration, connection, bad input, a refusal
EXIT_USAGE = 2  # a bad flag or argument (click)
EXIT_DIFFERENCES = 3  # the command ran and found differences: reconcile, verify, provision
EXIT_DEAD_LETTERED = 4  # sync --once: some rows were dead-lettered
EXIT_INTERRUPTED = 130


class DifferencesFound(ApexMetricsError):
    """The command ran and found differences."""

    exit_code = EXIT_DIFFERENCES


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
    """Create or upgrade the PostgreSQL schema (idempotent; safe to run twice at once).

    Then folds the hours the panel's rollups have not caught up with (after an upgrade that
    rebuilds them: every hour with rows, with a progress bar)."""
    import asyncio

    from apex_metrics.db import migrate
    from apex_metrics.rollup import rebuild_with_progress

    report = asyncio.run(migrate(database_url))
    rollup = asyncio.run(rebuild_with_progress(database_url, None if as_json else err_console))
    if as_json:
        print_json({**report.to_dict(), "rollup": rollup.to_dict()})
    else:
        for line in report.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
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

    async def run() -> str:
        async with Recorder(database_url, max_connections=1, strict=True) as recorder:
            result = await recorder.record(metric)
        state = "new" if result.inserted else "updated"
        where = f"id {result.id}, version {result.version}"
        return f"recorded run {values.get('run_id')} ({state}, {where})"

    console.print(asyncio.run(run()), markup=False, highlight=False, soft_wrap=True)


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
        console.print(report.summary(), markup=False, highlight=False, soft_wrap=True)


# --- recorder spool: spool status, spool flush --------------------------------------------------

spool_app = typer.Typer(
    help="Runs the recorder kept in its local spool while PostgreSQL was away.",
    no_args_is_help=True,
)
app.add_typer(spool_app, name="spool")

SpoolDirOption = Annotated[
    Path | None,
    typer.Option(
        "--spool-dir",
        envvar="APEX_SPOOL_DIR",
        show_envvar=True,
        help="Spool directory [default: the user's state directory, "
        "~/.local/state/apex-metrics/spool on Linux].",
    ),
]


@spool_app.command("status")
def spool_status(
    spool_dir: SpoolDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What waits in the spool: runs, bytes (and the limit), oldest, path, rejected entries."""
    from apex_metrics.spool import Spool

    status = Spool(spool_dir).status()
    if as_json:
        print_json(status.to_dict())
        return
    for line in status.lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@spool_app.command("flush")
def spool_flush(
    database_url: DatabaseUrlOption = None,
    spool_dir: SpoolDirOption = None,
    wait: Annotated[
        float,
        typer.Option(
            "--wait", min=0, help="Seconds to wait while another process flushes the same spool."
        ),
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Deliver the spooled runs to PostgreSQL, oldest first (an upsert by run id: a run
    delivered twice, e.g. after a crash, is never doubled). Safe to run while recorders run."""
    import asyncio

    from apex_metrics.spool import Spool, SpoolError
    from apex_metrics.spool_delivery import flush_to

    spool = Spool(spool_dir)
    report = asyncio.run(flush_to(database_url, spool, wait=wait))
    if report.busy:
        raise SpoolError(
            f"another process is flushing the spool {spool.path}",
            hint="it delivers these runs too; run `apex-metrics spool status` to follow it",
        )
    if as_json:
        print_json({**report.to_dict(), "waiting": spool.status().runs})
        return
    line = f"delivered {report.delivered} run(s) from {report.path}"
    if report.rejected:
        line += f"; {report.rejected} kept aside in rejected.jsonl (see `spool status`)"
    console.print(line, markup=False, highlight=False, soft_wrap=True)


# --- emulator -----------------------------------------------------------------------------------


def _rate(name: str, help_text: str) -> Any:
    return typer.Option(name, min=0.0, max=1.0, help=help_text)


@app.command("emulator")
def emulator_command(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8765,
    db: Annotated[
        Path | None,
        typer.Option("--db", help="SQLite file (kept across restarts); default: in memory."),
    ] = None,
    tls: Annotated[
        bool, typer.Option("--tls", help="Serve https with a throw-away test CA (path printed).")
    ] = False,
    tenant_id: Annotated[
        str | None,
        typer.Option(
            "--tenant-id",
            envvar="APEX_TENANT_ID",
            show_envvar=True,
            help="Tenant accepted (default: apex-local-tenant).",
        ),
    ] = None,
    client_id: Annotated[
        str | None,
        typer.Option(
            "--client-id",
            envvar="APEX_CLIENT_ID",
            show_envvar=True,
            help="Client id accepted (default: apex-local-client).",
        ),
    ] = None,
    client_secret: Annotated[
        str | None,
        typer.Option(
            "--client-secret",
            envvar="APEX_CLIENT_SECRET",
            show_envvar=True,
            show_default=False,
            help="Client secret accepted (default: apex-local-secret).",
        ),
    ] = None,
    client_certificate: Annotated[
        list[Path] | None,
        typer.Option(
            "--client-certificate",
            metavar="PEM",
            show_default=False,
            help="PEM file with a certificate registered for the client id (repeatable; a "
            "private key in the file is ignored): the token endpoint then also accepts client "
            "assertions signed by its key (RS256 with x5t, PS256 with x5t#S256), as with "
            "APEX_CLIENT_CERTIFICATE. Default: APEX_CLIENT_CERTIFICATE when set.",
        ),
    ] = None,
    token_lifetime: Annotated[
        int, typer.Option("--token-lifetime", min=1, help="Access-token lifetime in seconds.")
    ] = 3599,
    key_activation_delay: Annotated[
        float,
        typer.Option(
            "--key-activation-delay",
            min=0.0,
            help="Seconds an alternate key stays Pending before it is Active.",
        ),
    ] = 2.0,
    cost_profile: Annotated[
        str,
        typer.Option(
            "--cost-profile",
            help="dataverse or free. dataverse: each request takes (and is charged as "
            "execution time) the server time Dataverse would spend on it, from the --cost-* "
            "figures, waiting rather than computing; free: only the emulator's own time (for "
            "tests and benchmarks of the emulator itself).",
        ),
    ] = "dataverse",
    cost_request_ms: Annotated[
        float,
        typer.Option(
            "--cost-request-ms",
            min=0.0,
            help="Modeled milliseconds of every request (authentication, routing); a $batch "
            "or bulk message pays it once.",
        ),
    ] = 30.0,
    cost_write_ms: Annotated[
        float,
        typer.Option(
            "--cost-write-ms",
            min=0.0,
            help="Modeled milliseconds of each single write (POST, PATCH, PUT, DELETE), alone "
            "or as a $batch part.",
        ),
    ] = 40.0,
    cost_multiple_row_ms: Annotated[
        float,
        typer.Option(
            "--cost-multiple-row-ms",
            min=0.0,
            help="Modeled milliseconds of each target of CreateMultiple, UpdateMultiple and "
            "UpsertMultiple.",
        ),
    ] = 8.0,
    cost_retrieve_ms: Annotated[
        float,
        typer.Option(
            "--cost-retrieve-ms",
            min=0.0,
            help="Modeled milliseconds of each row read back: a GET part of a $batch, or a "
            "write answered with Prefer: return=representation.",
        ),
    ] = 10.0,
    window_s: Annotated[
        float,
        typer.Option(
            "--window-s",
            min=0.001,
            help="Seconds of the sliding window of the request and execution-time limits.",
        ),
    ] = 300.0,
    requests_per_window: Annotated[
        int,
        typer.Option(
            "--requests-per-window",
            min=1,
            help="Requests each client may send per window to each web server (429 0x80072322 "
            "beyond).",
        ),
    ] = 6000,
    execution_time_per_window_s: Annotated[
        float,
        typer.Option(
            "--execution-time-per-window-s",
            min=0.0,
            help="Seconds of execution time each client may use per window on each web server "
            "(429 0x80072321 beyond).",
        ),
    ] = 1200.0,
    concurrent_requests: Annotated[
        int,
        typer.Option(
            "--concurrent-requests",
            min=1,
            help="Requests each client may have in flight on each web server (429 0x80072326 "
            "beyond).",
        ),
    ] = 52,
    web_servers: Annotated[
        int,
        typer.Option(
            "--web-servers",
            min=1,
            help="Web servers, each with its own limits; requests without an ARRAffinity "
            "cookie go round robin. x-ms-dop-hint is round(web servers × execution time per "
            "window ÷ window).",
        ),
    ] = 2,
    fault_seed: Annotated[int, typer.Option("--fault-seed", help="Seed of fault injection.")] = 0,
    fail_500: Annotated[float, _rate("--fail-500", "Probability of a 500 answer.")] = 0.0,
    fail_503: Annotated[float, _rate("--fail-503", "Probability of a 503 answer.")] = 0.0,
    throttle_rate: Annotated[float, _rate("--throttle-rate", "Probability of a 429.")] = 0.0,
    drop_rate: Annotated[
        float, _rate("--drop-rate", "Probability of doing the work, then dropping the connection.")
    ] = 0.0,
    latency_ms: Annotated[
        float, typer.Option("--latency-ms", min=0.0, help="Latency added to each request.")
    ] = 0.0,
    latency_jitter_ms: Annotated[
        float, typer.Option("--latency-jitter-ms", min=0.0, help="Plus random 0..jitter ms.")
    ] = 0.0,
    storm_seconds: Annotated[
        float, typer.Option("--storm-seconds", min=0.0, help="Answer 429 to everything at first.")
    ] = 0.0,
    solution: Annotated[
        list[str] | None,
        typer.Option(
            "--solution",
            metavar="UNIQUENAME=PREFIX",
            help="Seed an unmanaged solution whose publisher has this customization prefix "
            "(repeatable), e.g. apexmetrics=apex; metadata created with the "
            "MSCRM.SolutionUniqueName header becomes its components.",
        ),
    ] = None,
    org_auditing: Annotated[
        str,
        typer.Option(
            "--org-auditing",
            metavar="on|off",
            help="The organization's auditing (organizations.isauditenabled); off: no audit "
            "records, whatever the tables say.",
        ),
    ] = "on",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the startup information as JSON.")
    ] = False,
) -> None:
    """Serve the local Dataverse Web API emulator (also the token authority) until Ctrl-C."""
    import asyncio

    from apex_metrics.emulator import CostModel, EmulatorConfig, FaultSettings, ServiceLimits
    from apex_metrics.emulator import config as emulator_defaults
    from apex_metrics.emulator.assertions import read_certificate_files
    from apex_metrics.emulator.serve import StartupInfo, serve
    from apex_metrics.emulator.solutions import parse_seed
    from apex_metrics.settings import get_settings

    if cost_profile not in ("dataverse", "free"):
        raise typer.BadParameter("must be dataverse or free", param_hint="--cost-profile")
    if org_auditing not in ("on", "off"):
        raise typer.BadParameter("must be on or off", param_hint="--org-auditing")
    try:
        seeds = tuple(parse_seed(text) for text in solution or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--solution") from None
    settings = get_settings()
    secret = client_secret
    if secret is None and settings.client_secret is not None:
        secret = settings.client_secret.get_secret_value()
    client = client_id or settings.client_id or emulator_defaults.DEFAULT_CLIENT_ID
    certificate_files = client_certificate or (
        [settings.client_certificate] if settings.client_certificate else []
    )
    certificates = read_certificate_files(certificate_files)
    config = EmulatorConfig(
        tenant_id=tenant_id or settings.tenant_id or emulator_defaults.DEFAULT_TENANT_ID,
        client_id=client,
        client_secret=secret or emulator_defaults.DEFAULT_CLIENT_SECRET,
        client_certificates={client: certificates} if certificates else {},
        token_lifetime_seconds=token_lifetime,
        key_activation_delay_seconds=key_activation_delay,
        limits=ServiceLimits(
            requests_per_window=requests_per_window, window_seconds=window_s,
            execution_seconds_per_window=execution_time_per_window_s,
            concurrent_requests=concurrent_requests, web_servers=web_servers,
        ),
        costs=CostModel(
            profile="free" if cost_profile == "free" else "dataverse",
            request_ms=cost_request_ms, write_ms=cost_write_ms,
            multiple_row_ms=cost_multiple_row_ms, retrieve_ms=cost_retrieve_ms,
        ),
        faults=FaultSettings(
            seed=fault_seed, error_500_rate=fail_500, error_503_rate=fail_503,
            throttle_rate=throttle_rate, drop_rate=drop_rate, latency_ms=latency_ms,
            latency_jitter_ms=latency_jitter_ms, storm_seconds=storm_seconds,
        ),
        db_path=db,
        solutions=seeds,
        org_auditing=org_auditing == "on",
    )  # fmt: skip

    def announce(info: StartupInfo) -> None:
        if as_json:
            sys.stdout.write(json.dumps(info.to_dict()) + "\n")
            sys.stdout.flush()
        else:
            for line in info.lines():
                console.print(line, markup=False, highlight=False, soft_wrap=True)

    try:
        asyncio.run(serve(config, host, port, tls=tls, announce=announce))
    except KeyboardInterrupt:
        pass


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
    APEX_AUTHORITY_HOST, APEX_CA_BUNDLE. On Azure, APEX_AUTH=managed-identity,
    workload-identity or default signs in with that azure-identity credential instead
    (default APEX_AUTH=client: the secret or certificate).
    """
    import asyncio

    from apex_metrics.dataverse.commands import run_whoami

    report = asyncio.run(run_whoami(_dataverse_settings(url)))
    if as_json:
        print_json(report.to_dict())
    else:
        for line in report.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)


@dataverse_app.command("provision")
def dataverse_provision(
    url: DataverseUrlOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Only read and print the plan (solution check, changes, publish, warnings); "
            "change nothing.",
        ),
    ] = False,
    solution: Annotated[
        str | None,
        typer.Option(
            "--solution",
            envvar="APEX_DATAVERSE_SOLUTION",
            show_envvar=True,
            help="Unique name of the unmanaged solution to create the table, columns and key in "
            "(MSCRM.SolutionUniqueName). Its publisher's prefix must be apex; an unknown "
            "solution or another prefix stops before anything is created.",
        ),
    ] = None,
    key_timeout: Annotated[
        float, typer.Option("--key-timeout", help="Seconds to wait for the key to be Active.")
    ] = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create or check the apex_campaignmetrics table: columns, key, flags. Idempotent.

    Publishes what it changed (PublishXml); warns when organization auditing is off. Exit
    status 1 when the table drifted from the contract (each problem is listed with its fix).
    """
    import asyncio

    from apex_metrics.dataverse.commands import run_provision
    from apex_metrics.dataverse.provision import ContractDrift

    def progress(message: str) -> None:
        err_console.print(message, markup=False, highlight=False, soft_wrap=True)

    settings = _dataverse_settings(url)
    if solution:
        settings = settings.model_copy(update={"dataverse_solution": solution})
    report = asyncio.run(
        run_provision(settings, dry_run=dry_run, progress=progress, key_timeout=key_timeout)
    )
    if as_json:
        print_json(report.to_dict())
    else:
        for line in report.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    if report.problems:
        count = len(report.problems)
        raise ContractDrift(f"table {report.table} breaks the contract in {count} way(s)")


# --- sync engine: sync, sync status/retry-dead/replay, reconcile --------------------------------

sync_app = typer.Typer(
    help="Export pending rows to Dataverse: run workers, inspect, re-queue.",
    invoke_without_command=True,
)
app.add_typer(sync_app, name="sync")

LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        envvar="APEX_LOG_FORMAT",
        show_envvar=True,
        help="Log format: text or json (one object per line).",
    ),
]


@sync_app.callback()
def sync_run(
    ctx: typer.Context,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            envvar="APEX_SYNC_WORKERS",
            show_envvar=True,
            help="Concurrent workers in this process [default: x-ms-dop-hint + 2]. However "
            "many there are, every process together keeps to the one Dataverse budget.",
        ),
    ] = None,
    write: Annotated[
        str | None,
        typer.Option(
            "--write",
            envvar="APEX_SYNC_WRITE",
            show_envvar=True,
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
        typer.Option(
            "--poll-interval",
            min=0.01,
            envvar="APEX_SYNC_POLL_INTERVAL",
            show_envvar=True,
            help="Seconds between polls when no NOTIFY arrives [default: 1].",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            max=1000,
            envvar="APEX_SYNC_BATCH_SIZE",
            show_envvar=True,
            help="Most rows per claim and request; fewer when requests are slow (the pacer "
            "aims at about 10 s per request) [default: 1000].",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            envvar="APEX_SYNC_METRICS_PORT",
            show_envvar=True,
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
    log_format: LogFormatOption = None,
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

    settings = _sync_settings(database_url, url)
    if write is not None:
        from apex_metrics.sync.sink import WRITE_MODES

        if write not in WRITE_MODES:
            raise typer.BadParameter(
                f"must be one of {', '.join(WRITE_MODES)}", param_hint="--write"
            )
        settings = settings.model_copy(update={"sync_write": write})
    fmt = log_format or settings.log_format
    if fmt not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    configure_logging("json" if fmt == "json" else "text", debug=_state["debug"])
    workers = workers or settings.sync_workers
    metrics_port = metrics_port or settings.sync_metrics_port
    config = engine_config(
        settings, workers=workers, once=once, poll_interval=poll_interval, batch_size=batch_size
    )
    if not listen:
        import dataclasses

        config = dataclasses.replace(config, listen=False)
    stats = asyncio.run(run_sync(settings, config, metrics_port=metrics_port))
    if as_json:
        print_json(stats.as_dict())
    else:
        for line in stats_lines(stats):
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def _sync_settings(database_url: str | None, url: str | None) -> Any:
    from apex_metrics.settings import get_settings

    settings = get_settings()
    update = {k: v for k, v in {"database_url": database_url, "dataverse_url": url}.items() if v}
    return settings.model_copy(update=update) if update else settings


@sync_app.command("status")
def sync_status(
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Pending, in flight, dead, lag, recent throughput, last errors and last runs."""
    import asyncio

    from apex_metrics.sync.status import get_status

    status = asyncio.run(get_status(_sync_settings(database_url, None).require("database_url")))
    if as_json:
        print_json(status.to_dict())
        return
    out = console.print
    out(
        f"pending {status.pending} (retrying {status.retrying}), in flight {status.in_flight}, "
        f"dead {status.dead}, lag {status.lag_seconds:.1f}s",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    out(
        f"delivered: {status.delivered_last_minute} in the last minute "
        f"({status.rows_per_second:.1f} rows/s), {status.delivered_last_hour} in the last hour",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for e in status.last_errors:
        state = "dead" if e["dead"] else f"attempt {e['attempts']}"
        out(
            f"  error {e['at']} {e['run_id']} [{state}] {e['code'] or '-'}: {e['message']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    for r in status.last_runs:
        out(
            f"  run {r['id']} {r['started_at']} claimed {r['claimed']} created {r['created']} "
            f"updated {r['updated']} upserted {r['upserted']} failed {r['failed']} "
            f"dead {r['dead_lettered']}" + (f" error: {r['error']}" if r["error"] else ""),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


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

    url = _sync_settings(database_url, None).require("database_url")
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
    url = _sync_settings(database_url, None).require("database_url")
    count = asyncio.run(replay(url, when))
    if as_json:
        print_json({"requeued": count, "since": when.isoformat()})
    else:
        console.print(
            f"re-queued {count} row(s) changed since {when.isoformat()}",
            markup=False,
            soft_wrap=True,
        )


@app.command("reconcile")
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

    settings = _sync_settings(database_url, url)
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
        for line in reconcile_lines(report):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
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


# --- panel --------------------------------------------------------------------------------------


def check_port(host: str, port: int, flag: str = "--port") -> None:
    """Fail with one line when ``host:port`` cannot be bound (uvicorn would print a traceback
    or an ERROR line and exit 3, which is our "differences found")."""
    import errno
    import socket

    from apex_metrics.exceptions import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use",
                    hint=f"stop what listens there, or pick another port with {flag}",
                ) from None
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="check the address with --host",
            ) from None


def _serve_or_fail(run: Any, host: str, port: int) -> None:
    """Run a server; a failed start (uvicorn exits with its status 3) becomes one line."""
    from apex_metrics.exceptions import ConfigError

    try:
        run()
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:
        if exc.code in (None, 0):
            return
        raise ConfigError(
            f"could not serve on {host}:{port}", hint="see the line above; --debug shows more"
        ) from None


@app.command("panel")
def panel_command(
    host: Annotated[
        str | None,
        typer.Option(
            envvar="APEX_PANEL_HOST",
            show_envvar=True,
            help="Address to bind; off loopback APEX_PANEL_TOKEN is required [default: 127.0.0.1].",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            envvar="APEX_PANEL_PORT",
            show_envvar=True,
            help="Port to listen on [default: 8000].",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            envvar="APEX_PANEL_SOURCE",
            show_envvar=True,
            help="Where to read runs: dataverse or postgres (default: dataverse when "
            "APEX_DATAVERSE_URL is set, else postgres; postgres needs APEX_DATABASE_URL).",
        ),
    ] = None,
    root_path: Annotated[
        str | None,
        typer.Option(
            envvar="APEX_PANEL_ROOT_PATH",
            show_envvar=True,
            help="Path prefix behind a reverse proxy, e.g. /metrics-panel (the proxy may strip "
            "it or pass it on).",
        ),
    ] = None,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            envvar="APEX_PANEL_FORWARDED_ALLOW_IPS",
            show_envvar=True,
            help="Comma-separated proxy addresses (or *) whose X-Forwarded-For/-Proto headers "
            "are trusted; empty: none [default: 127.0.0.1].",
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    url: DataverseUrlOption = None,
) -> None:
    """Serve the MetricsPanel: live KPIs, JSON API, CSV export, server-sent events."""
    import asyncio

    from apex_metrics.panel.app import PanelConfig, serve

    settings = _sync_settings(database_url, url)
    chosen = source or settings.panel_source
    if chosen not in (None, "dataverse", "postgres"):
        raise typer.BadParameter("must be dataverse or postgres", param_hint="--source")
    config = PanelConfig.from_settings(
        settings,
        source=chosen,  # type: ignore[arg-type]
        host=host or settings.panel_host,
        port=port or settings.panel_port,
    )
    if root_path is not None:
        config.root_path = root_path
    if forwarded_allow_ips is not None:
        config.forwarded_allow_ips = forwarded_allow_ips
    check_port(config.host, config.port)
    _serve_or_fail(lambda: asyncio.run(serve(config)), config.host, config.port)


# --- rollup: the panel's refresher on its own ----------------------------------------------------


@app.command("rollup")
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

    from apex_metrics.db import database_url as resolve_url
    from apex_metrics.rollup import rebuild_with_progress, run_refresher

    url = resolve_url(database_url)
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


# --- collect: OTLP/HTTP traces in, runs out -------------------------------------------------------


@app.command("collect")
def collect_command(
    host: Annotated[
        str | None,
        typer.Option(
            envvar="APEX_COLLECT_HOST",
            show_envvar=True,
            help="Address to bind; off loopback APEX_INGEST_TOKEN is required [default: "
            "127.0.0.1].",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            envvar="APEX_COLLECT_PORT",
            show_envvar=True,
            help="Port [default: 4318, OTLP/HTTP's].",
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    idle_seconds: Annotated[
        float | None,
        typer.Option(
            "--idle-seconds",
            envvar="APEX_COLLECT_IDLE_SECONDS",
            show_envvar=True,
            min=0.01,
            help="Finalise a trace after this long without a new span [default: 30].",
        ),
    ] = None,
    max_spans: Annotated[
        int | None,
        typer.Option(
            "--max-spans",
            envvar="APEX_COLLECT_MAX_SPANS",
            show_envvar=True,
            min=1,
            help="Most span ids held in memory [default: 1000000].",
        ),
    ] = None,
    max_traces: Annotated[
        int | None,
        typer.Option(
            "--max-traces",
            envvar="APEX_COLLECT_MAX_TRACES",
            show_envvar=True,
            min=1,
            help="Most traces held in memory [default: 100000].",
        ),
    ] = None,
) -> None:
    """Receive OpenTelemetry traces over OTLP/HTTP (POST /v1/traces, protobuf or JSON, gzip)
    and record each trace as one run in PostgreSQL (mapping: docs/ingest.md). Exporters point
    OTEL_EXPORTER_OTLP_ENDPOINT at http://HOST:PORT; with APEX_INGEST_TOKEN set they must send
    Authorization: Bearer <token>. GET /metrics serves Prometheus counters. Needs the collect
    extra: pip install 'apex-metrics[collect]'."""
    import asyncio
    import dataclasses

    # without the collect extra, main() names it (apex_metrics/extras.py)
    from apex_metrics.collect.app import CollectConfig
    from apex_metrics.collect.serve import check_bind, serve
    from apex_metrics.collect.store import Limits
    from apex_metrics.db import database_url as resolve_url
    from apex_metrics.settings import get_settings

    settings = get_settings()
    host = host or settings.collect_host
    port = port or settings.collect_port
    limits = dataclasses.replace(
        Limits(),
        idle_seconds=idle_seconds or settings.collect_idle_seconds,
        max_spans=max_spans or settings.collect_max_spans,
        max_traces=max_traces or settings.collect_max_traces,
    )
    config = CollectConfig(
        database_url=resolve_url(database_url), host=host, port=port,
        token=settings.ingest_token, limits=limits,
    )  # fmt: skip
    check_bind(host, config.token)
    check_port(host, port)
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"collect: OTLP/HTTP on http://{shown}:{port}/v1/traces (protobuf, JSON, gzip); "
        f"token {'required' if config.token else 'not required (loopback)'}; "
        f"metrics on /metrics",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    _serve_or_fail(lambda: asyncio.run(serve(config)), host, port)


# --- demo, verify, bench ------------------------------------------------------------------------


@app.command("demo")
def demo_command(
    runs_per_hour: Annotated[
        float,
        typer.Option(
            min=0,
            help="Mean synthetic campaign runs per hour, for the history and the live traffic "
            "alike (a smooth daily curve, ±35 %); 0: no live traffic.",
        ),
    ] = 240.0,
    rate: Annotated[
        float | None,
        typer.Option(
            min=0, help="The same density in runs per second (overrides --runs-per-hour)."
        ),
    ] = None,
    backfill_days: Annotated[
        float,
        typer.Option(
            min=0,
            help="Fill this many days of history first, for full charts (only the part after "
            "the newest recorded run: a second demo adds no second week).",
        ),
    ] = 0.0,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=32, help="Sync workers [default: x-ms-dop-hint + 2]."),
    ] = None,
    panel_host: Annotated[str, typer.Option(help="Panel address.")] = "127.0.0.1",
    panel_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Panel port (a free one if busy).")
    ] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the embedded PostgreSQL and the emulator's storage "
            "(default: ~/.local/share/apex-metrics/demo; /var/tmp/apex-metrics-demo as root)."
        ),
    ] = None,
    embedded_postgres: Annotated[
        bool,
        typer.Option(
            "--embedded-postgres",
            help="Use the embedded PostgreSQL even if APEX_DATABASE_URL is set or a server "
            "answers on 127.0.0.1:5432.",
        ),
    ] = False,
    system_user: Annotated[
        bool,
        typer.Option(
            "--system-user/--no-system-user",
            help="As root, allow creating the unprivileged system account 'apex-metrics-pg' "
            "that an embedded PostgreSQL must run as.",
        ),
    ] = True,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Stop by itself after this many seconds.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for repeatable traffic.")] = None,
) -> None:
    """Run the whole pipeline on embedded defaults: PostgreSQL, the Dataverse emulator, sync
    workers, the panel and synthetic traffic. Uses APEX_DATABASE_URL / APEX_DATAVERSE_URL when
    set. Prints the export lines for other terminals (also in DATA_DIR/demo.env), the panel URL
    and a status line (off a terminal: on change, at least every 30 s); Ctrl-C stops
    everything."""
    import asyncio

    from apex_metrics.demo import DemoOptions, run_demo
    from apex_metrics.settings import get_settings

    options = DemoOptions(
        runs_per_hour=rate * 3600 if rate is not None else runs_per_hour,
        backfill_days=backfill_days, workers=workers, panel_host=panel_host,
        panel_port=panel_port, data_dir=data_dir, embedded_postgres=embedded_postgres,
        allow_system_user=system_user, duration=duration, seed=seed,
    )  # fmt: skip

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    asyncio.run(run_demo(get_settings(), options, say))


@app.command("verify")
def verify_command(
    panel_url: Annotated[
        str | None,
        typer.Option(
            envvar="APEX_PANEL_URL",
            show_envvar=True,
            help="The panel to check (gate 9), with its root path [default: http://127.0.0.1:8000].",
        ),
    ] = None,
    backlog_threshold: Annotated[
        float, typer.Option(min=1, help="Seconds the oldest pending row may wait (gate 7).")
    ] = 300.0,
    sample: Annotated[
        int, typer.Option(min=1, max=5000, help="Rows compared field by field (gate 8).")
    ] = 100,
    log_file: Annotated[
        list[Path] | None,
        typer.Option(help="A log file to scan for secrets (gate 10); repeatable."),
    ] = None,
    database_url: DatabaseUrlOption = None,
    url: DataverseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run the quality gates, each with its figure; exit 3 if any fails (1 on errors)."""
    import asyncio

    from apex_metrics.verify import VerifyOptions, run_verify

    settings = _sync_settings(database_url, url)
    options = VerifyOptions(
        panel_url=panel_url or settings.panel_url,
        backlog_threshold=backlog_threshold,
        sample=sample,
        log_files=list(log_file or []),
    )
    gates = asyncio.run(run_verify(settings, options))
    failed = [g for g in gates if not g.ok]
    if as_json:
        print_json({"ok": not failed, "gates": [g.to_dict() for g in gates]})
    else:
        for g in gates:
            mark = "PASS" if g.ok else "FAIL"
            hint = f"  → {g.hint}" if g.hint and not g.ok else ""
            console.print(
                f"{mark}  {g.number:>2} {g.name:<10} {g.figure}{hint}",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip
        console.print(f"{len(gates) - len(failed)}/{len(gates)} gates pass", highlight=False)
    if failed:
        raise typer.Exit(EXIT_DIFFERENCES)


def _wants_json(argv: list[str]) -> bool:
    """``--json`` asks for a JSON report (``record --json`` is the run itself, not a report)."""
    words = [a for a in argv if not a.startswith("-")]
    return "--json" in argv and (not words or words[0] != "record")


def error_lines(exc: ApexMetricsError) -> list[str]:
    """The error as printed: one line, or a first line plus one line per problem."""
    errors = getattr(exc, "errors", None)
    if not isinstance(errors, list) or len(errors) < 2:
        return [f"error: {exc.one_line()}"]
    if all(getattr(e, "line", None) is None for e in errors):  # one run (record): one line
        return [f"error: {exc.one_line()}"]
    limit = 50
    lines = [f"error: invalid input, nothing was written ({len(errors)} problems):"]
    lines += [f"  {problem}" for problem in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"  … and {len(errors) - limit} more")
    if exc.hint:
        lines.append(f"  ({exc.hint})")
    return lines


def error_json(exc: ApexMetricsError, code: int) -> dict[str, Any]:
    """What ``--json`` prints on stdout when the command fails."""
    errors = getattr(exc, "errors", None)
    out: dict[str, Any] = {"ok": False, "error": exc.message, "hint": exc.hint, "exit_code": code}
    if isinstance(errors, list):
        if len(errors) > 1:
            out["error"] = f"invalid input, nothing was written ({len(errors)} problems)"
        out["problems"] = [
            {"line": e.line, "field": e.field, "rule": e.rule} if hasattr(e, "rule") else str(e)
            for e in errors[:1000]
        ]
        out["problems_total"] = len(errors)
    return out


def main() -> None:
    """Console-script entry point."""
    try:
        app()  # standalone mode: usage errors exit 2, Ctrl-C exits 1 with "Aborted!"
    except ApexMetricsError as exc:
        if _state["debug"]:
            traceback.print_exc()
        code = int(getattr(exc, "exit_code", EXIT_ERROR))
        if _wants_json(sys.argv[1:]):
            print_json(error_json(exc, code))
        for line in error_lines(exc):
            err_console.print(line, markup=False, highlight=False, soft_wrap=True)
        sys.exit(code)
    except ModuleNotFoundError as exc:  # an optional extra is not installed
        from apex_metrics.extras import missing_extra

        error = missing_extra(exc, sys.argv[1:])
        if error is None:
            raise
        if _state["debug"]:
            traceback.print_exc()
        err_console.print(
            f"error: {error.one_line()}", markup=False, highlight=False, soft_wrap=True
        )
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
