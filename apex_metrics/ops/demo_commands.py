"""``apex-metrics demo`` (the whole pipeline on embedded defaults) and ``apex-metrics verify``
(the quality gates); both need the demo extra."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apex_metrics.ops.options import (
    DatabaseUrlOption,
    DataverseUrlOption,
    setting_option,
    settings_with,
)
from apex_metrics.ops.output import EXIT_DIFFERENCES, console, print_json


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

    from apex_metrics.ops.demo import DemoOptions, run_demo

    options = DemoOptions(
        runs_per_hour=rate * 3600 if rate is not None else runs_per_hour,
        backfill_days=backfill_days, workers=workers, panel_host=panel_host,
        panel_port=panel_port, data_dir=data_dir, embedded_postgres=embedded_postgres,
        allow_system_user=system_user, duration=duration, seed=seed,
    )  # fmt: skip

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    asyncio.run(run_demo(settings_with(), options, say))


def verify_command(
    panel_url: Annotated[
        str | None,
        setting_option(
            "panel_url",
            "--panel-url",
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

    from apex_metrics.ops.verify import VerifyOptions, run_verify

    settings = settings_with(database_url=database_url, dataverse_url=url, panel_url=panel_url)
    options = VerifyOptions(
        panel_url=settings.panel_url,
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
