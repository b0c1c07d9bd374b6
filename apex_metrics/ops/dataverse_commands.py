"""``dataverse whoami`` and ``dataverse provision``: the credentials and the table (the sync
extra)."""

from __future__ import annotations

from typing import Annotated

import typer

from apex_metrics.ops.options import DataverseUrlOption, setting_option, settings_with
from apex_metrics.ops.output import err_console, print_json, print_lines

dataverse_app = typer.Typer(help="Dataverse table and credential commands.", no_args_is_help=True)


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

    report = asyncio.run(run_whoami(settings_with(dataverse_url=url)))
    if as_json:
        print_json(report.to_dict())
    else:
        print_lines(report.lines())


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
        setting_option(
            "dataverse_solution",
            "--solution",
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

    settings = settings_with(dataverse_url=url, dataverse_solution=solution)
    report = asyncio.run(
        run_provision(settings, dry_run=dry_run, progress=progress, key_timeout=key_timeout)
    )
    if as_json:
        print_json(report.to_dict())
    else:
        print_lines(report.lines())
    if report.problems:
        count = len(report.problems)
        raise ContractDrift(f"table {report.table} breaks the contract in {count} way(s)")
