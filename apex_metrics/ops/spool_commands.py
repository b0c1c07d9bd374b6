"""``spool status`` and ``spool flush``: the runs the recorder kept on disk while PostgreSQL was
away (the core install, no extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apex_metrics.ops.options import DatabaseUrlOption, setting_option, settings_with
from apex_metrics.ops.output import console, print_json, print_lines

spool_app = typer.Typer(
    help="Runs the recorder kept in its local spool while PostgreSQL was away.",
    no_args_is_help=True,
)

SpoolDirOption = Annotated[
    Path | None,
    setting_option(
        "spool_dir",
        "--spool-dir",
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

    settings = settings_with(spool_dir=spool_dir)
    status = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes).status()
    if as_json:
        print_json(status.to_dict())
        return
    print_lines(status.lines())


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

    settings = settings_with(database_url=database_url, spool_dir=spool_dir)
    spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes)
    report = asyncio.run(flush_to(settings.database_url, spool, wait=wait))
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
