"""Shared set-up of the sync benchmarks: a scratch database, an emulator over HTTP, a client."""

from __future__ import annotations

import asyncio
import os
import resource
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import conninfo, sql

from apex_metrics import db, testing
from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.provision import provision
from apex_metrics.emulator import EmulatorConfig
from apex_metrics.settings import Settings
from apex_metrics.testing import RunningEmulator, running_emulator

ADMIN_URL = os.environ.get("APEX_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _url_for(name: str) -> str:
    params = conninfo.conninfo_to_dict(ADMIN_URL)
    params["dbname"] = name
    return conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A fresh migrated database, dropped afterwards."""
    name = f"apex_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    async with await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = _url_for(name)
        await db.migrate(url)
        yield url
    finally:
        async with await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class Bench:
    url: str
    emulator: RunningEmulator
    settings: Settings
    client: DataverseClient
    emulator_pid: int | None = None  # the emulator's own process (``separate``), else None

    async def emulator_stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{self.emulator.url}/_emulator/stats")
            answer.raise_for_status()
            data: dict[str, Any] = answer.json()
            return data

    async def set_faults(self, **faults: float) -> None:
        async with httpx.AsyncClient() as http:
            (
                await http.patch(f"{self.emulator.url}/_emulator/faults", json=faults)
            ).raise_for_status()


@contextmanager
def emulator_process(
    requests_per_window: int | None = None, latency_ms: float = 0.0
) -> Iterator[tuple[RunningEmulator, int]]:
    """``apex-metrics emulator`` in its own process with the default limits (or
    ``requests_per_window``) and ``latency_ms`` added to every request; and its process id."""
    options = ["--latency-ms", str(latency_ms)]
    if requests_per_window is not None:
        options += ["--requests-per-window", str(requests_per_window)]
    with testing.emulator_process(*options) as served:
        yield served


@contextmanager
def thread_emulator(config: EmulatorConfig) -> Iterator[tuple[RunningEmulator, None]]:
    with running_emulator(config) as emu:
        yield emu, None


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (Linux ``/proc``), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy, all cores (Linux ``/proc/stat``), in seconds."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSplit:
    """Where the CPU went while something ran: this process (the engine), the emulator's
    process, and everything else on the machine (PostgreSQL's backends, mostly)."""

    emulator_pid: int
    started: tuple[float, float, float] = (0.0, 0.0, 0.0)  # CPU seconds, as ``_now`` reads them
    started_at: float = 0.0  # perf_counter at start
    used: tuple[float, float, float] = (0.0, 0.0, 0.0)  # engine, emulator, the rest
    wall: float = 0.0  # seconds from start to stop

    def _now(self) -> tuple[float, float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return (
            usage.ru_utime + usage.ru_stime,
            process_cpu_seconds(self.emulator_pid),
            busy_cpu_seconds(),
        )

    def start(self) -> None:
        self.started = self._now()
        self.started_at = time.perf_counter()

    def stop(self) -> None:
        now = self._now()
        self.wall = time.perf_counter() - self.started_at
        engine, emulator, busy = (b - a for a, b in zip(self.started, now, strict=True))
        self.used = (engine, emulator, max(0.0, busy - engine - emulator))

    def line(self, rows: int) -> str:
        engine, emulator, rest = (seconds / rows * 1e6 for seconds in self.used)
        busy = sum(self.used) / (self.wall * (os.cpu_count() or 1))
        return (
            f"CPU per row: engine {engine:.0f} us, emulator {emulator:.0f} us, PostgreSQL and "
            f"the rest {rest:.0f} us (the {os.cpu_count()} cores {busy:.0%} busy)"
        )


@asynccontextmanager
async def bench_stack(
    config: EmulatorConfig | None = None,
    *,
    separate: bool = False,
    requests_per_window: int | None = None,
    latency_ms: float = 0.0,
) -> AsyncIterator[Bench]:
    """A scratch database and a provisioned emulator: in a thread with ``config``, or (with
    ``separate``) in its own process with the default limits (or ``requests_per_window``) and
    ``latency_ms`` added to every request."""
    config = config or EmulatorConfig(key_activation_delay_seconds=0)
    async with scratch_database() as url:
        serving = (
            emulator_process(requests_per_window, latency_ms)
            if separate
            else thread_emulator(config)
        )
        with serving as (emu, pid):
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None, database_url=url, dataverse_url=emu.url
            )
            async with open_dataverse(settings) as client:
                report = await provision(client, poll_interval=0.05, key_timeout=30)
                if report.problems:
                    raise RuntimeError(f"provisioning failed: {report.problems}")
                yield Bench(url, emu, settings, client, pid)


def requests_of(stats: dict[str, Any]) -> int:
    counters = stats.get("counters", {})
    return int(counters.get("requests", 0))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def run(coro: Any) -> Any:
    return asyncio.run(coro)
