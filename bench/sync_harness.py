"""Shared set-up of the sync benchmarks: a scratch database, an emulator over HTTP, a client."""

from __future__ import annotations

import os
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
from apex_metrics.emulator import CostModel, EmulatorConfig
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
def emulator_process(*options: str) -> Iterator[tuple[RunningEmulator, int]]:
    """``apex-metrics emulator OPTIONS`` in its own process; and its process id."""
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


@asynccontextmanager
async def bench_stack(
    config: EmulatorConfig | None = None,
    *,
    separate: bool = False,
    emulator_options: tuple[str, ...] = ("--cost-profile", "free"),
) -> AsyncIterator[Bench]:
    """A scratch database and a provisioned emulator: in a thread with ``config``, or (with
    ``separate``) in its own process started with ``emulator_options``."""
    config = config or EmulatorConfig(key_activation_delay_seconds=0, costs=CostModel.free())
    async with scratch_database() as url:
        serving = emulator_process(*emulator_options) if separate else thread_emulator(config)
        with serving as (emu, pid):
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None, database_url=url, dataverse_url=emu.url
            )
            async with open_dataverse(settings) as client:
                report = await provision(client, poll_interval=0.05, key_timeout=30)
                if report.problems:
                    raise RuntimeError(f"provisioning failed: {report.problems}")
                yield Bench(url, emu, settings, client, pid)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]
