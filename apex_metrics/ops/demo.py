"""``apex-metrics demo``: the whole pipeline in one process, on embedded defaults.

    PostgreSQL   APEX_DATABASE_URL, else a server answering on 127.0.0.1:5432 (database
                 ``apex_metrics_demo``, created if missing), else an embedded server (see
                 ``embedded_pg.py``) in the demo's data folder
    Dataverse    APEX_DATAVERSE_URL, else the emulator on a free loopback port, its storage in
                 the demo's data folder (so it stays in step with PostgreSQL across runs)
    then         migrate → provision → reconcile --repair (and, in its own emulator,
                 --delete-extra) → backfill of the part of the window not filled yet → sync
                 workers + panel + synthetic traffic, with a status line, until Ctrl-C or SIGTERM.

It prints the ``export APEX_…=…`` lines other commands need (``verify``, ``sync status``,
``reconcile``, a second ``panel``) and writes them to ``demo.env`` in its data folder (removed
on the way out). History and live traffic share one density (``traffic.runs_per_hour_at``).

Everything runs in this process (the emulator and the panel in uvicorn servers, the workers as
asyncio tasks); the embedded PostgreSQL, when used, is a child server stopped on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from apex_metrics import db
from apex_metrics.aio import wait_event
from apex_metrics.exceptions import (
    ApexMetricsError,
    DatabaseAuthFailed,
    DatabaseMissing,
    DatabaseUnreachable,
)
from apex_metrics.ops.embedded_pg import EmbeddedPostgres
from apex_metrics.ports import free_port
from apex_metrics.settings import Settings

if TYPE_CHECKING:
    from apex_metrics.sync.reconcile import ReconcileReport

DEMO_DATABASE = "apex_metrics_demo"
LOCAL_CANDIDATES = ("postgres", "root")  # roles tried on 127.0.0.1:5432


def default_data_dir() -> Path:
    """Where the demo keeps its embedded database and emulator storage."""
    if os.geteuid() == 0:
        # Under /var/tmp: the embedded server's system account must be able to reach it.
        return Path("/var/tmp/apex-metrics-demo")
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "apex-metrics" / "demo"


@dataclass(slots=True)
class DemoOptions:
    runs_per_hour: float = 240.0  # mean density of history and live traffic alike
    backfill_days: float = 0.0
    workers: int | None = None  # None: x-ms-dop-hint + 2
    panel_host: str = "127.0.0.1"
    panel_port: int = 8000
    data_dir: Path | None = None
    embedded_postgres: bool = False  # skip APEX_DATABASE_URL and 127.0.0.1:5432
    allow_system_user: bool = True
    duration: float | None = None  # stop by itself after this many seconds
    seed: int | None = None
    status_interval: float = 1.0  # on a terminal; otherwise see _status
    change_interval: float = 5.0  # not on a terminal: a line on change, at most this often,
    quiet_interval: float = 30.0  # and at least this often


Say = Callable[[str], None]


# ------------------------------------------------------------------------------------------------
# PostgreSQL


async def _local_server_url() -> str | None:
    """A URL for the demo database on 127.0.0.1:5432, creating it; None if none answers."""
    for role in LOCAL_CANDIDATES:
        try:
            return await db.create_database(
                f"postgresql://{role}@127.0.0.1:5432/postgres", DEMO_DATABASE, connect_timeout=3
            )
        except (DatabaseUnreachable, DatabaseAuthFailed, DatabaseMissing):
            continue
    return None


async def _postgres(
    settings: Settings, options: DemoOptions, data_dir: Path, stack: contextlib.AsyncExitStack,
    say: Say,
) -> str:  # fmt: skip
    if settings.database_url and not options.embedded_postgres:
        say(f"PostgreSQL: {db.describe(settings.database_url)} (APEX_DATABASE_URL)")
        return settings.database_url
    if not options.embedded_postgres:
        url = await _local_server_url()
        if url is not None:
            say(f"PostgreSQL: {db.describe(url)} (local server)")
            return url
        say("PostgreSQL: none on 127.0.0.1:5432; starting an embedded server")
    embedded = EmbeddedPostgres(
        data_dir / "postgres", allow_system_user=options.allow_system_user, announce=say
    )
    await asyncio.to_thread(embedded.start)
    stack.callback(embedded.stop)
    url = await db.create_database(embedded.url, DEMO_DATABASE)
    say(f"PostgreSQL: embedded server {db.describe(url)} (data in {embedded.pgdata})")
    return url


# ------------------------------------------------------------------------------------------------
# Dataverse


@contextlib.contextmanager
def _emulator(data_dir: Path) -> Any:
    from apex_metrics.emulator import EmulatorConfig
    from apex_metrics.testing import running_emulator

    config = EmulatorConfig(db_path=data_dir / "emulator.sqlite3", key_activation_delay_seconds=0.5)
    with running_emulator(config) as emu:
        yield emu


async def _dataverse(
    settings: Settings, data_dir: Path, stack: contextlib.AsyncExitStack, say: Say
) -> Settings:
    if settings.dataverse_url:
        say(f"Dataverse: {settings.dataverse_url} (APEX_DATAVERSE_URL)")
        return settings
    emu = stack.enter_context(_emulator(data_dir))
    say(f"Dataverse: local emulator at {emu.url} (storage in {data_dir / 'emulator.sqlite3'})")
    return settings.model_copy(update={"dataverse_url": emu.url, "authority_host": emu.url})


def exports(settings: Settings, database_url: str, panel_url: str) -> dict[str, str]:
    """What `verify`, `sync status`, `reconcile` and `panel` need in another terminal. Secrets
    are never printed: a token or client secret the demo was given stays where it was set."""
    out = {
        "APEX_DATABASE_URL": database_url,
        "APEX_DATAVERSE_URL": settings.require("dataverse_url"),
        "APEX_PANEL_URL": panel_url.rstrip("/"),
    }
    if "authority_host" in settings.model_fields_set:
        out["APEX_AUTHORITY_HOST"] = settings.authority_host
    for name in ("tenant_id", "client_id", "auth"):
        if name in settings.model_fields_set and getattr(settings, name):
            out[f"APEX_{name.upper()}"] = str(getattr(settings, name))
    return out


def export_lines(values: dict[str, str]) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]


def write_env_file(path: Path, lines: list[str], secrets: list[str]) -> None:
    """``demo.env``: the export lines, mode 600, for ``. demo.env`` in another terminal."""
    notes = [f"# and {n}, as set for the demo (secrets are not written here)" for n in secrets]
    text = "# apex-metrics demo: `. " + str(path) + "` in another terminal\n"
    path.write_text(text + "\n".join(lines + notes) + "\n", encoding="utf-8")
    path.chmod(0o600)


# ------------------------------------------------------------------------------------------------
# Running


class _PanelServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the demo handles signals itself
        pass


def _panel_port(host: str, wanted: int, say: Say) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, wanted))
            return wanted
        except OSError:
            port = free_port(host)
            say(f"port {wanted} is busy; the panel uses port {port}")
            return port


async def run_demo(settings: Settings, options: DemoOptions, say: Say = print) -> dict[str, Any]:
    """Run the demo until stopped; returns the final counters."""
    from apex_metrics.dataverse.connect import open_dataverse
    from apex_metrics.dataverse.provision import provision
    from apex_metrics.ops.traffic import TrafficGenerator
    from apex_metrics.panel.app import PanelConfig, create_app, end_streams
    from apex_metrics.panel.security import check_bind
    from apex_metrics.recorder import Recorder
    from apex_metrics.sync.commands import engine_config, engine_flow
    from apex_metrics.sync.engine import Engine
    from apex_metrics.sync.queue import Queue
    from apex_metrics.sync.reconcile import reconcile
    from apex_metrics.sync.sink import DataverseSink

    check_bind(options.panel_host, settings.panel_token)  # before anything starts
    data_dir = options.data_dir or default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    counters: dict[str, Any] = {"recorded": 0, "backfilled": 0}
    try:
        async with contextlib.AsyncExitStack() as stack:
            db_url = await _postgres(settings, options, data_dir, stack, say)
            report = await db.migrate(db_url)
            say(f"schema: {report.lines()[-1]}")
            live = await _dataverse(settings, data_dir, stack, say)
            live = live.model_copy(update={"database_url": db_url})
            flow = engine_flow()
            client = await stack.enter_async_context(open_dataverse(live, flow=flow))
            prov = await provision(client, progress=lambda m: say(f"provision: {m}"))
            if not prov.ok:
                for line in prov.lines():
                    say(line)
                raise ApexMetricsError("the Dataverse table does not match the contract")
            say("provision: table, columns, key and flags are in place")
            # Rows of the demo's own emulator that this database does not have (an earlier
            # demo's database was dropped, or another database was used) are deleted; a
            # Dataverse given by APEX_DATAVERSE_URL is only reported on, never deleted from.
            own_emulator = not settings.dataverse_url
            say("reconcile: comparing PostgreSQL with Dataverse…")
            rec = await reconcile(db_url, client, repair=True, delete_extra=own_emulator)
            say(f"reconcile: {_reconcile_summary(rec)}")
            recorder = await stack.enter_async_context(Recorder(db_url, strict=True))
            gen = TrafficGenerator(options.seed)
            if options.backfill_days > 0:
                await _backfill(recorder, gen, options, counters, say)
            engine = Engine(
                engine_config(live, workers=options.workers, once=False),
                DataverseSink(client, live.sync_write),
                flow.pacer,
            )
            port = _panel_port(options.panel_host, options.panel_port, say)
            panel_config = PanelConfig(
                source="dataverse", database_url=db_url, settings=live,
                token=settings.panel_token, host=options.panel_host, port=port,
            )  # fmt: skip
            panel_app = create_app(panel_config)
            server = _PanelServer(
                uvicorn.Config(
                    panel_app, host=options.panel_host, port=port,
                    log_level="warning", access_log=False, lifespan="on",
                    timeout_graceful_shutdown=3,
                )
            )  # fmt: skip
            tasks = [
                asyncio.create_task(engine.run(), name="demo-sync"),
                asyncio.create_task(server.serve(), name="demo-panel"),
            ]
            while not server.started:
                if tasks[1].done():
                    await tasks[1]
                    raise ApexMetricsError(f"the panel could not start on port {port}")
                await asyncio.sleep(0.05)
            url = f"http://{options.panel_host}:{port}/"
            values = exports(live, db_url, url)
            lines = export_lines(values)
            secrets = [
                name for name, value in (("APEX_PANEL_TOKEN", settings.panel_token),
                                         ("APEX_CLIENT_SECRET", settings.client_secret))
                if value is not None
            ]  # fmt: skip
            env_file = data_dir / "demo.env"
            write_env_file(env_file, lines, secrets)
            stack.callback(env_file.unlink, missing_ok=True)
            say("For verify, sync status, reconcile or a second panel in another terminal:")
            for line in lines:
                say(f"  {line}")
            say(f"  (or: . {shlex.quote(str(env_file))})")
            for name in secrets:
                say(f"  and {name}, as you set it for the demo")
            say(f"panel: {url}")
            say("Ctrl-C stops everything.")
            tasks.append(
                asyncio.create_task(
                    _traffic(recorder, gen, options.runs_per_hour, stop, counters),
                    name="demo-traffic",
                )
            )
            queue = Queue(recorder.pool)
            deadline = time.monotonic() + options.duration if options.duration else None
            async for line in _status(queue, engine, counters, stop, options, deadline):
                say(line)
            engine.request_stop()
            end_streams(panel_app)  # open event streams would hold uvicorn's shutdown
            server.should_exit = True
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for task, res in zip(tasks, results, strict=True):
                if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                    say(f"{task.get_name()} ended with an error: {res}")
            counters["delivered"] = engine.stats.delivered
            counters["panel_url"] = url
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    say("stopped cleanly")
    return counters


def _reconcile_summary(report: ReconcileReport) -> str:
    deleted = f", deleted {report.deleted} extra" if report.deleted else ""
    return (
        f"{report.pg_rows} rows in PostgreSQL, {report.dataverse_rows} in Dataverse; "
        f"missing {report.missing}, extra {report.extra}, different {report.different}, "
        f"re-queued {report.requeued}{deleted}"
    )


async def _backfill(
    recorder: Any, gen: Any, options: DemoOptions, counters: dict[str, Any], say: Say
) -> None:
    """Fill the history window, but only the part after the newest run already recorded: a
    second demo over the same database adds the hours it was away, not another week."""
    started = time.monotonic()
    now = datetime.now(UTC)
    async with recorder.pool.connection() as conn:
        cur = await conn.execute("SELECT max(created_at) FROM campaign_metrics")
        row = await cur.fetchone()
    newest = row[0] if row else None
    runs = list(
        gen.backfill(options.backfill_days, per_hour=options.runs_per_hour, now=now, after=newest)
    )
    result = await recorder.record_many(runs) if runs else None
    counters["backfilled"] = len(runs)
    since = f" since the newest recorded run ({newest:%Y-%m-%d %H:%M} UTC)" if newest else ""
    new = result.inserted if result is not None else 0
    say(
        f"backfill: {len(runs)} runs{since or f' over {options.backfill_days:g} day(s)'} "
        f"in {time.monotonic() - started:.1f} s ({new} new)"
    )


async def _traffic(
    recorder: Any, gen: Any, per_hour: float, stop: asyncio.Event, counters: dict[str, Any]
) -> None:
    """Live runs at the same density as the backfill (``traffic.runs_per_hour_at``)."""
    while not stop.is_set() and per_hour > 0:
        with contextlib.suppress(TimeoutError):
            gap = gen.next_gap(datetime.now(UTC), per_hour)
            await wait_event(stop, gap)
        if stop.is_set():
            return
        await recorder.record(gen.run())
        counters["recorded"] += 1


async def _status(
    queue: Any,
    engine: Any,
    counters: dict[str, Any],
    stop: asyncio.Event,
    options: DemoOptions,
    deadline: float | None,
) -> AsyncIterator[str]:
    """Until stopped (or the deadline): on a terminal, one line redrawn every interval;
    otherwise (a log, a pipe) a line when the figures change, at most every
    ``change_interval`` seconds, and at least every ``quiet_interval`` seconds."""
    tty = sys.stdout.isatty()
    last_line = ""
    last_printed = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await wait_event(stop, options.status_interval)
        if deadline is not None and time.monotonic() >= deadline:
            stop.set()
        try:
            h = await queue.health()
        except ApexMetricsError:
            continue
        line = (
            f"runs recorded {counters['recorded']} · delivered {engine.stats.delivered} · "
            f"pending {h.pending} · in flight {h.in_flight} · dead {h.dead} · "
            f"lag {h.lag_seconds:.1f} s"
        )
        if tty:
            sys.stdout.write("\r" + line.ljust(100))
            sys.stdout.flush()
            continue
        figures = line.rsplit(" · lag", 1)[0]  # the lag alone moves every second
        waited = time.monotonic() - last_printed
        changed = figures != last_line and waited >= options.change_interval
        if changed or waited >= options.quiet_interval or not last_line:
            last_line, last_printed = figures, time.monotonic()
            yield line
    if tty:
        sys.stdout.write("\n")
