"""``apex-metrics emulator``: serve the local Dataverse Web API emulator (the emulator extra).

Its cost and limit defaults equal those of the emulator's models (``CostModel``,
``ServiceLimits``; tests/emulator/test_cli.py keeps them in step). Its credentials come from
``APEX_TENANT_ID``, ``APEX_CLIENT_ID``, ``APEX_CLIENT_SECRET`` and ``APEX_CLIENT_CERTIFICATE``
through ``Settings``, else the emulator's local ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr

from apex_metrics.ops.options import setting_option, settings_with
from apex_metrics.ops.output import print_lines


def _rate(name: str, help_text: str) -> Any:
    return typer.Option(name, min=0.0, max=1.0, help=help_text)


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
        setting_option(
            "tenant_id",
            "--tenant-id",
            help="Tenant accepted (default: apex-local-tenant).",
        ),
    ] = None,
    client_id: Annotated[
        str | None,
        setting_option(
            "client_id",
            "--client-id",
            help="Client id accepted (default: apex-local-client).",
        ),
    ] = None,
    client_secret: Annotated[
        str | None,
        setting_option(
            "client_secret",
            "--client-secret",
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

    if cost_profile not in ("dataverse", "free"):
        raise typer.BadParameter("must be dataverse or free", param_hint="--cost-profile")
    if org_auditing not in ("on", "off"):
        raise typer.BadParameter("must be on or off", param_hint="--org-auditing")
    try:
        seeds = tuple(parse_seed(text) for text in solution or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--solution") from None
    settings = settings_with(
        tenant_id=tenant_id,
        client_id=client_id,
        client_secret=SecretStr(client_secret) if client_secret is not None else None,
    )
    secret = settings.client_secret.get_secret_value() if settings.client_secret else None
    client = settings.client_id or emulator_defaults.DEFAULT_CLIENT_ID
    certificate_files = client_certificate or (
        [settings.client_certificate] if settings.client_certificate else []
    )
    certificates = read_certificate_files(certificate_files)
    config = EmulatorConfig(
        tenant_id=settings.tenant_id or emulator_defaults.DEFAULT_TENANT_ID,
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
            print_lines(info.lines())

    try:
        asyncio.run(serve(config, host, port, tls=tls, announce=announce))
    except KeyboardInterrupt:
        pass
