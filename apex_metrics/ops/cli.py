"""``apex-metrics`` command line: the root command, the map of every command, and ``main()``.

Commands live one group per module (``db_commands``, ``spool_commands``,
``dataverse_commands``, ``emulator_commands``, ``sync_commands``, ``panel_commands``,
``collect_commands``, ``demo_commands``); they parse, resolve their flags through ``Settings``
(``options.py``), call the parts and print. Each imports its part inside the command, so
``--help`` and the core commands work without any extra installed.

Every command that reports state takes ``--json``. Errors of ours (``ApexMetricsError``) print
one line, ``error: <what happened> (<what to do>)`` (bad input: one line per problem), and exit
1; ``--debug`` adds the traceback. With ``--json`` the error is also one JSON document on stdout.
Exit statuses: ``output.py``.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated, Any

import typer

# Typer ships its own copy of click: its exceptions are what the app raises.
from typer._click.exceptions import ClickException, UsageError

from apex_metrics import __version__
from apex_metrics.exceptions import ApexMetricsError
from apex_metrics.ops import (
    collect_commands,
    dataverse_commands,
    db_commands,
    demo_commands,
    emulator_commands,
    panel_commands,
    spool_commands,
    sync_commands,
)
from apex_metrics.ops.output import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    console,
    err_console,
    print_json,
    state,
)

app = typer.Typer(
    name="apex-metrics",
    help="Turn AI-agent campaign runs into live, trustworthy KPIs in Microsoft Dataverse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# The command tree, in the order `apex-metrics --help` lists it (commands, then groups).
app.command("record")(db_commands.record_run)
app.command("import")(db_commands.import_runs)
app.command("emulator")(emulator_commands.emulator_command)
app.command("reconcile")(sync_commands.reconcile_command)
app.command("panel")(panel_commands.panel_command)
app.command("rollup")(db_commands.rollup_command)
app.command("collect")(collect_commands.collect_command)
app.command("demo")(demo_commands.demo_command)
app.command("verify")(demo_commands.verify_command)
app.add_typer(db_commands.db_app, name="db")
app.add_typer(dataverse_commands.dataverse_app, name="dataverse")
app.add_typer(spool_commands.spool_app, name="spool")
app.add_typer(sync_commands.sync_app, name="sync")


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
    state["debug"] = debug


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


def usage_error_json(exc: UsageError) -> dict[str, Any]:
    """What ``--json`` prints on stdout for a usage error (exit 2)."""
    usage = exc.ctx.get_usage() if exc.ctx is not None else None
    hint = f"{usage}; see --help" if usage else "see --help"
    return {"ok": False, "error": exc.format_message(), "hint": hint, "exit_code": exc.exit_code}


def _run() -> int:
    """Run the app as Typer's standalone mode does (Ctrl-C is 130, an abort "Aborted!" and 1),
    keeping click's errors in hand: under ``--json`` a usage error is reported as JSON on stdout
    too, like every other failure."""
    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        exc.show()
        if _wants_json(sys.argv[1:]):
            print_json(usage_error_json(exc))
        return exc.exit_code
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Abort:
        err_console.print("Aborted!", markup=False, highlight=False)
        return 1
    # An int comes only from an explicit exit (typer.Exit, --help, --version): commands return None.
    return code if isinstance(code, int) else 0


def main() -> None:
    """Console-script entry point (``apex-metrics``, ``python -m apex_metrics``)."""
    try:
        sys.exit(_run())
    except ApexMetricsError as exc:
        if state["debug"]:
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
        if state["debug"]:
            traceback.print_exc()
        err_console.print(
            f"error: {error.one_line()}", markup=False, highlight=False, soft_wrap=True
        )
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
