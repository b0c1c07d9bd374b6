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

# --- emulator -----------------------------------------------------------------------------------

# --- dataverse: provision, whoami ---------------------------------------------------------------

# --- sync engine: sync, sync status/retry-dead/replay, reconcile --------------------------------

# --- panel --------------------------------------------------------------------------------------

# --- demo, verify, bench ------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point."""
    try:
        app()  # standalone mode: usage errors exit 2, Ctrl-C exits 1 with "Aborted!"
    except ApexMetricsError as exc:
        if _state["debug"]:
            traceback.print_exc()
        err_console.print(f"error: {exc.one_line()}", markup=False, highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
