"""The sync commands as users run them: `python -m apex_metrics …` against PostgreSQL and the
emulator over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import httpx

from apex_metrics.metric import ALTERNATE_KEY_COLUMN, ENTITY_SET
from apex_metrics.sync.checks import insert_rows, verdict
from apex_metrics.testing import free_port

from .conftest import Stack


def env_for(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("APEX_")}
    return env | {"APEX_DATABASE_URL": stack.database_url, "APEX_DATAVERSE_URL": stack.emulator.url}


async def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "apex_metrics", *args],
        env=env_for(stack),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_once_status_reconcile_replay(stack: Stack) -> None:
    await insert_rows(stack.database_url, 300)
    done = await cli(stack, "sync", "--once", "--json", "--log-format", "json", "--workers", "2")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["delivered"] == 300 and report["dead_lettered"] == 0
    events = [json.loads(line)["event"] for line in done.stderr.splitlines() if line.strip()]
    assert "started" in events and "stopped" in events

    status = await cli(stack, "sync", "status", "--json")
    data = json.loads(status.stdout)
    assert (data["pending"], data["dead"], data["in_flight"]) == (0, 0, 0)
    assert data["throughput"]["delivered_last_minute"] == 300
    assert sum(r["claimed"] for r in data["last_runs"]) == 300

    clean = await cli(stack, "reconcile", "--json")
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["matching"] == 300

    assert await stack.client.delete(ENTITY_SET, {ALTERNATE_KEY_COLUMN: "run-5"})
    found = await cli(stack, "reconcile")
    assert found.returncode == 3  # differences found, told apart from errors (1)
    assert "missing 1" in found.stdout and found.stderr.startswith("error: PostgreSQL and")
    assert "Traceback" not in found.stderr
    as_json = await cli(stack, "reconcile", "--json")
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["missing"] == 1
    repaired = await cli(stack, "reconcile", "--repair", "--json")
    assert repaired.returncode == 0 and json.loads(repaired.stdout)["requeued"] == 1
    again = await cli(stack, "sync", "--once", "--json")
    assert json.loads(again.stdout)["delivered"] == 1

    replay = await cli(stack, "sync", "replay", "--since", "2000-01-01T00:00:00Z", "--json")
    assert json.loads(replay.stdout)["requeued"] == 300
    bad = await cli(stack, "sync", "replay", "--since", "yesterday")
    assert bad.returncode == 1 and "--since" in bad.stderr and "Traceback" not in bad.stderr
    unknown = await cli(stack, "sync", "retry-dead", "no-such-run")
    assert unknown.returncode == 1 and "unknown run id(s): no-such-run" in unknown.stderr
    v = await verdict(stack.database_url, stack.client)
    assert (v.lost, v.stale) == (0, 0)


async def test_daemon_serves_metrics_and_stops_on_sigterm(stack: Stack) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apex_metrics", "sync", "--metrics-port", str(port)],
        env=env_for(stack),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await insert_rows(stack.database_url, 50)
        body = await asyncio.wait_for(metrics_when_delivered(port, 50), 60)
        assert "apex_sync_pending_rows" in body and "apex_sync_batch_seconds_bucket" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "SIGTERM: finishing the batch in hand" in stderr


async def metrics_when_delivered(port: int, rows: int) -> str:
    wanted = f'apex_sync_delivered_rows_total{{outcome="upserted"}} {float(rows)}'
    async with httpx.AsyncClient() as http:
        while True:
            try:
                body = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.TransportError:
                body = ""
            if wanted in body:
                return body
            await asyncio.sleep(0.1)


async def test_no_listen_polls_without_holding_a_listening_connection(stack: Stack) -> None:
    """--no-listen (scale-to-zero databases): no LISTEN connection, rows still go out by polling."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "apex_metrics", "sync", "--no-listen", "--poll-interval", "0.3"],
        env=env_for(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await insert_rows(stack.database_url, 5, prefix="poll-")
        delivered = None
        for _ in range(100):
            got = await stack.client.get_by_key(ENTITY_SET, {ALTERNATE_KEY_COLUMN: "poll-5"})
            if got is not None:
                delivered = got
                break
            await asyncio.sleep(0.1)
        assert delivered is not None, "a polling engine did not deliver within 10 s"
        import psycopg

        async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
            cur = await conn.execute(
                "SELECT application_name, query FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name LIKE 'apex-metrics-sync%'"
            )
            rows = await cur.fetchall()
        assert rows, "the engine's connections were not found"
        assert not any(name.endswith("listener") or "LISTEN" in q for name, q in rows)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, None, 30)
    assert proc.returncode == 0, err
