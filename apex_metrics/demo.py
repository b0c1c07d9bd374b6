"""``apex-metrics demo``: the whole pipeline in one process, on embedded defaults.

    PostgreSQL   APEX_DATABASE_URL, else a server answering on 127.0.0.1:5432 (database
                 ``apex_metrics_demo``, created if missing), else an embedded server (see
                 ``embedded_pg.py``) in the demo's data folder
    Dataverse    APEX_DATAVERSE_URL, else the emulator on a free loopback port, its storage in
                 the demo's data folder (so it stays in step with PostgreSQL across runs)
    then         migrate → provision → reconcile --repair → backfill → sync workers + panel +
                 synthetic traffic, with a live status line, until Ctrl-C or SIGTERM.

Everything runs in this process (the emulator and the panel in uvicorn servers, the workers as
asyncio tasks); the embedded PostgreSQL, when used, is a child server stopped on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import uvicorn
from psycopg import sql

from apex_metrics import db
from apex_metrics.embedded_pg import EmbeddedPostgres
from apex_metrics.exceptions import ApexMetricsError
from apex_metrics.settings import Settings
from apex_metrics.testing import free_port

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
    rate: float = 1.0  # synthetic runs per second
    backfill_days: float = 0.0
    backfill_per_hour: float = 60.0
    workers: int | None = None  # None: x-ms-dop-hint + 2
    panel_host: str = "127.0.0.1"
    panel_port: int = 8000
    data_dir: Path | None = None
    embedded_postgres: bool = False  # skip APEX_DATABASE_URL and 127.0.0.1:5432
    allow_system_user: bool = True
    duration: float | None = None  # stop by itself after this many seconds
    seed: int | None = None
    status_interval: float = 1.0


Say = Callable[[str], None]


# ------------------------------------------------------------------------------------------------
# PostgreSQL


def _local_server_url() -> str | None:
    """A URL for the demo database on 127.0.0.1:5432, creating it; None if none answers."""
    for role in LOCAL_CANDIDATES:
        try:
            return _create_demo_database(
                f"postgresql://{role}@127.0.0.1:5432/postgres", connect_timeout=3
            )
        except psycopg.OperationalError:
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
        url = await asyncio.to_thread(_local_server_url)
        if url is not None:
            say(f"PostgreSQL: {db.describe(url)} (local server)")
            return url
        say("PostgreSQL: none on 127.0.0.1:5432; starting an embedded server")
    embedded = EmbeddedPostgres(
        data_dir / "postgres", allow_system_user=options.allow_system_user, announce=say
    )
    await asyncio.to_thread(embedded.start)
    stack.callback(embedded.stop)
    url = await asyncio.to_thread(_create_demo_database, embedded.url)
    say(f"PostgreSQL: embedded server {db.describe(url)} (data in {embedded.pgdata})")
    return url


def _create_demo_database(admin_url: str, *, connect_timeout: int = 10) -> str:
    """Create the demo database on ``admin_url``'s server if missing; return its URL."""
    with psycopg.connect(admin_url, connect_timeout=connect_timeout, autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)
        ).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
    return admin_url.rsplit("/", 1)[0] + "/" + DEMO_DATABASE


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
    return settings.model_copy(update={"dataverse_url": emu.url})


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
    from apex_metrics.panel.app import PanelConfig, create_app, end_streams
    from apex_metrics.panel.security import check_bind
    from apex_metrics.recorder import Recorder
    from apex_metrics.sync.commands import engine_config, engine_flow
    from apex_metrics.sync.engine import Engine
    from apex_metrics.sync.queue import Queue
    from apex_metrics.sync.reconcile import reconcile
    from apex_metrics.sync.sink import DataverseSink
    from apex_metrics.traffic import TrafficGenerator

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
            rec = await reconcile(db_url, client, repair=True)
            say(f"reconcile: {_reconcile_summary(rec)}")
            recorder = await stack.enter_async_context(Recorder(db_url, strict=True))
            gen = TrafficGenerator(options.seed)
            if options.backfill_days > 0:
                started = time.monotonic()
                runs = list(gen.backfill(options.backfill_days, per_hour=options.backfill_per_hour))
                result = await recorder.record_many(runs)
                counters["backfilled"] = len(runs)
                say(
                    f"backfill: {len(runs)} runs over {options.backfill_days:g} day(s) "
                    f"in {time.monotonic() - started:.1f} s ({result.inserted} new)"
                )
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
            say(f"panel: {url}")
            say("Ctrl-C stops everything.")
            tasks.append(
                asyncio.create_task(
                    _traffic(recorder, gen, options.rate, stop, counters), name="demo-traffic"
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
    return (
        f"{report.pg_rows} rows in PostgreSQL, {report.dataverse_rows} in Dataverse; "
        f"missing {report.missing}, extra {report.extra}, different {report.different}, "
        f"re-queued {report.requeued}"
    )


async def _traffic(
    recorder: Any, gen: Any, rate: float, stop: asyncio.Event, counters: dict[str, Any]
) -> None:
    rnd = random.Random()
    while not stop.is_set() and rate > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=rnd.expovariate(rate))
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
    """One status line per interval until stopped (or the deadline)."""
    tty = sys.stdout.isatty()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=options.status_interval)
        if deadline is not None and time.monotonic() >= deadline:
            stop.set()
        try:
            c = await queue.counts()
        except ApexMetricsError:
            continue
        line = (
            f"runs recorded {counters['recorded']} · delivered {engine.stats.delivered} · "
            f"pending {c['pending']} · in flight {c['in_flight']} · dead {c['dead']} · "
            f"lag {float(c['lag_seconds'] or 0):.1f} s"
        )
        if tty:
            sys.stdout.write("\r" + line.ljust(100))
            sys.stdout.flush()
        else:
            yield line
    if tty:
        sys.stdout.write("\n")
