"""The six reliability scenarios of the sync engine: real PostgreSQL, the emulator over HTTP.

Each drains completely, then checks Dataverse against PostgreSQL (every run once, with its latest
values) and prints its figures: lost / duplicated / stale must all be 0. CI sizes; the 20,000-row
fault run and the long SIGKILL soak are in bench/reliability_soak.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.provision import provision
from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.emulator.config import FaultSettings
from apex_metrics.sync.checks import Verdict, execute, insert_rows, verdict
from apex_metrics.sync.commands import engine_config, run_sync
from apex_metrics.sync.reconcile import reconcile
from apex_metrics.sync.status import get_status, retry_dead
from apex_metrics.testing import RunningEmulator

from .conftest import Stack, client_engine, sync_settings

pytestmark = pytest.mark.slow


def report(name: str, v: Verdict, **figures: Any) -> None:
    extra = " ".join(f"{k}={val}" for k, val in figures.items())
    print(f"\n{v.line(name)} {extra}")
    assert (v.lost, v.duplicated, v.stale, v.extra) == (0, 0, 0, 0), v


async def undelivered(url: str) -> int:
    rows = await execute(
        url,
        "SELECT count(*) FROM campaign_metrics "
        "WHERE exported_version < version AND sync_dead_version <> version",
    )
    return int(rows[0][0])


async def wait_drained(url: str, timeout: float = 90) -> None:
    async def poll() -> None:
        while await undelivered(url):
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), timeout)


def quick_config(stack: Stack, **kw: Any) -> Any:
    settings = stack.settings.model_copy(update={"sync_lease_seconds": kw.pop("lease", 10.0)})
    return engine_config(settings, poll_interval=0.2, **kw)


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    # A little latency per request so that faults, kills and updates land mid-flight.
    return EmulatorConfig(
        costs=CostModel.free(),
        key_activation_delay_seconds=0,
        faults=FaultSettings(seed=5, latency_ms=15),
    )


async def test_1_faults_5xx_and_429_storms(stack: Stack) -> None:
    await insert_rows(stack.database_url, 2000)
    await stack.set_faults(error_503_rate=0.05, error_500_rate=0.05)  # 10 % of requests fail

    async def storms() -> None:
        for _ in range(2):
            await asyncio.sleep(0.4)
            await stack.set_faults(storm_seconds=1.2, storm_retry_after=1)

    storm_task = asyncio.create_task(storms())
    config = quick_config(stack, workers=2, once=True, batch_size=20)
    stats = await asyncio.wait_for(run_sync(stack.settings, config, handle_signals=False), 120)
    await storm_task
    await stack.set_faults(error_503_rate=0, error_500_rate=0, storm_seconds=0)
    emu = await stack.stats()
    report(
        "1 faults",
        await verdict(stack.database_url, stack.client),
        requests=stats.requests,
        throttled=stats.throttled,
        statuses=emu.get("statuses"),
    )
    assert stats.dead_lettered == 0


async def started_sending(url: str, before: int) -> None:
    while await undelivered(url) == before:
        await asyncio.sleep(0.05)


def cli_worker(
    stack: Stack, *args: str, stderr: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("APEX_")} | {
        "APEX_DATABASE_URL": stack.database_url,
        "APEX_DATAVERSE_URL": stack.emulator.url,
        "APEX_SYNC_LEASE_SECONDS": "2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "apex_metrics", "sync", "--poll-interval", "0.2", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


async def test_2_sigkill_workers_again_and_again(stack: Stack, tmp_path: Path) -> None:
    await insert_rows(stack.database_url, 3000)
    rng = random.Random(11)
    kills = 0
    progress = []
    for _round in range(4):
        before = await undelivered(stack.database_url)
        procs = [cli_worker(stack, "--workers", "2", "--batch-size", "10") for _ in range(2)]
        try:
            await asyncio.wait_for(started_sending(stack.database_url, before), 30)
            await asyncio.sleep(rng.uniform(0.05, 0.4))  # then some batches in flight
        finally:
            for p in procs:
                p.send_signal(signal.SIGKILL)
                p.wait(10)
                kills += 1
        progress.append(before - await undelivered(stack.database_url))
    left_after_kills = await undelivered(stack.database_url)
    log = tmp_path / "final.log"
    with log.open("wb") as sink:
        final = cli_worker(stack, "--workers", "2", stderr=sink)
        try:
            await wait_drained(stack.database_url, 60)
        finally:
            final.send_signal(signal.SIGTERM)  # graceful: finishes the batch, releases leases
            code = final.wait(20)
    assert code == 0, log.read_text()
    leased = await execute(
        stack.database_url,
        "SELECT count(*) FROM sync_leases WHERE lease_owner IS NOT NULL",
    )
    report(
        "2 sigkill",
        await verdict(stack.database_url, stack.client),
        kills=kills,
        delivered_per_round=progress,
        left_after_kills=left_after_kills,
    )
    assert leased == [(0,)]


async def test_3_terminated_backends(stack: Stack) -> None:
    await insert_rows(stack.database_url, 2000)
    engine = client_engine(quick_config(stack, workers=2, once=False, batch_size=50), stack.client)
    task = asyncio.create_task(engine.run())
    terminated = 0
    try:
        for _ in range(8):
            await asyncio.sleep(0.25)
            rows = await execute(
                stack.database_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'apex-metrics-sync%%' "
                "AND datname = current_database()",
            )
            terminated += sum(1 for r in rows if r[0])
        await wait_drained(stack.database_url)
    finally:
        engine.request_stop()
        stats = await asyncio.wait_for(task, 30)
    report(
        "3 pg_terminate_backend",
        await verdict(stack.database_url, stack.client),
        terminated=terminated,
        db_errors=stats.db_errors,
    )
    assert terminated >= 4  # backends really died under the engine, again and again


async def test_4_rows_updated_while_in_flight(stack: Stack) -> None:
    await insert_rows(stack.database_url, 2000)
    engine = client_engine(quick_config(stack, workers=2, once=False, batch_size=100), stack.client)
    task = asyncio.create_task(engine.run())
    rng = random.Random(3)
    hit_in_flight = 0  # updates of rows whose batch was on its way to Dataverse at that moment
    try:
        for i in range(60):
            ids = [rng.randint(1, 2000) for _ in range(10)]
            await execute(
                stack.database_url,
                "UPDATE campaign_metrics SET tokens_out = tokens_out + 1, phase = %(p)s "
                "WHERE id = ANY(%(ids)s)",
                {"ids": ids, "p": f"u{i}"},
            )
            leased = await execute(
                stack.database_url,
                "UPDATE campaign_metrics SET tokens_out = tokens_out + 1, phase = %(p)s "
                "WHERE id IN (SELECT id FROM sync_leases WHERE lease_until > now() LIMIT 5) "
                "RETURNING id",
                {"p": f"f{i}"},
            )
            hit_in_flight += len(leased)
            await asyncio.sleep(0.02)
        await wait_drained(stack.database_url)
    finally:
        engine.request_stop()
        stats = await asyncio.wait_for(task, 30)
    report(
        "4 updated in flight",
        await verdict(stack.database_url, stack.client),
        changed_in_flight=stats.requeued,
        updated=stats.updated,
    )
    # The scenario really happened: rows changed while their batch was in flight, the engine
    # saw it (requeued, not acked), and the later version still reached Dataverse (verdict).
    assert hit_in_flight > 0 and stats.requeued > 0, (hit_in_flight, stats.requeued)


async def test_5_three_workers_at_once(stack: Stack) -> None:
    await insert_rows(stack.database_url, 2000)
    async with contextlib.AsyncExitStack() as clients:  # three processes' worth: own clients
        engines = [
            client_engine(
                quick_config(stack, workers=1, once=True, batch_size=50),
                await clients.enter_async_context(open_dataverse(stack.settings)),
            )
            for _ in range(3)
        ]
        results = await asyncio.wait_for(asyncio.gather(*(e.run() for e in engines)), 120)
    per_worker = [s.delivered for s in results]
    report(
        "5 three workers",
        await verdict(stack.database_url, stack.client),
        per_worker=per_worker,
        lost_leases=sum(s.lost_lease for s in results),
    )
    assert sum(per_worker) == 2000 and all(n > 0 for n in per_worker)


async def test_6_poison_row_dead_lettered_then_retried(
    database_url: str, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Dataverse column is created too short (8 characters) for one row's phase: that row is
    dead-lettered with the Dataverse code and message, every other row is delivered. The table
    is then recreated to the contract; retry-dead delivers the row, reconcile restores the rest."""
    prov = importlib.import_module("apex_metrics.dataverse.provision")

    await insert_rows(database_url, 500)
    await execute(database_url, "UPDATE campaign_metrics SET phase = 'p1'")
    await execute(
        database_url, "UPDATE campaign_metrics SET phase = 'long-phase' WHERE run_id = 'run-7'"
    )
    contract = prov.contract_columns()
    narrow = tuple(
        dataclasses.replace(c, max_length=8) if c.logical == "apex_phase" else c for c in contract
    )
    settings = sync_settings(database_url, emulator)
    async with open_dataverse(settings) as client:
        monkeypatch.setattr(prov, "contract_columns", lambda: narrow)
        await provision(client, poll_interval=0.05, key_timeout=30)
        monkeypatch.undo()
        stack = Stack(database_url, emulator, settings, client)
        config = engine_config(settings, workers=2, once=True, batch_size=100)
        with pytest.raises(Exception, match="1 dead-lettered") as failed:
            await asyncio.wait_for(run_sync(settings, config, handle_signals=False), 60)
        status = await get_status(database_url)
        error = status.last_errors[0]
        assert (status.dead, status.pending, error["run_id"]) == (1, 0, "run-7")
        assert error["code"] == "0x80044331" and "apex_phase" in error["message"]
        first = await verdict(database_url, client)
        assert (first.lost, first.rows) == (1, 500)  # only the poison row is missing
        paths = [r["path"] for r in (await stack.stats())["recent"]]  # type: ignore[index]
        assert any(p.endswith("Microsoft.Dynamics.CRM.UpsertMultiple") for p in paths)
        assert any(p.endswith("$batch") for p in paths), "the failing chunk went as $batch"

        # Fix the cause: the table is recreated to the contract (the emulator is reset).
        await stack.stats()
        import httpx

        async with httpx.AsyncClient() as http:
            (await http.post(f"{emulator.url}/_emulator/reset", json={})).raise_for_status()
        assert not (await provision(client, poll_interval=0.05, key_timeout=30)).problems
        assert (await retry_dead(database_url)).requeued == ["run-7"]
        repair = await reconcile(database_url, client, repair=True)
        assert (repair.missing, repair.pending, repair.requeued) == (499, 1, 499)
        stats = await asyncio.wait_for(run_sync(settings, config, handle_signals=False), 60)
        assert stats.delivered == 500
        report(
            "6 poison",
            await verdict(database_url, client),
            dead_lettered=1,
            error=str(failed.value).splitlines()[0][:60],
        )
