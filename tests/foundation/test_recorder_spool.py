"""The recorder when PostgreSQL goes away, against a real server: nothing raises into the
application, runs are spooled and delivered once, flushes survive crashes and each other."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from apex_metrics.exceptions import DatabaseUnreachable, SchemaNotMigrated
from apex_metrics.metric import parse_metric
from apex_metrics.recorder import Recorder, SyncRecorder
from apex_metrics.spool import REJECTED, Spool, encode_run, read_segment
from apex_metrics.spool_delivery import flush_to
from apex_metrics.testing import free_port

APEX = str(Path(sys.executable).with_name("apex-metrics"))
FAST = {"retry_initial": 0.05, "retry_max": 0.2, "acquire_timeout": 1.0}


class AgentError(Exception):
    pass


def run(run_id: str, **values: Any) -> dict[str, Any]:
    return {"campaign_id": "spring", "run_id": run_id, **values}


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})


def dbname_of(url: str) -> str:
    return str(conninfo.conninfo_to_dict(url)["dbname"])


def admin(admin_url: str, statement: sql.Composable) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)


def drop_database(admin_url: str, name: str) -> None:
    admin(
        admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    )


def create_database(admin_url: str, name: str, template: str) -> None:
    admin(
        admin_url,
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        ),
    )


def versions(url: str) -> dict[str, int]:
    try:
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT run_id, version FROM campaign_metrics").fetchall()
    except psycopg.OperationalError:
        return {}
    return {str(r): int(v) for r, v in rows}


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


async def wait_until_async(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def dead_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/nothing?connect_timeout=2"


def cli(*args: str, spool_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env["APEX_SPOOL_DIR"] = str(spool_dir)
    return subprocess.run(
        [APEX, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


# ------------------------------------------------------------------------------------------------
# Database missing, stopped, restored


def test_database_missing_at_construction_then_created(
    admin_url: str, _template_database: str, tmp_path: Path
) -> None:
    name = f"apex_t{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = with_dbname(admin_url, name)
    try:
        with SyncRecorder(url, spool=tmp_path, **FAST) as rec:
            assert rec.record(run("r-1", tokens_in=1)).status == "spooled"
            with rec.track("spring", "t-1") as tracked:
                tracked.call(latency_ms=5)
            assert rec.record(run("r-1", tokens_in=2)).status == "spooled"
            create_database(admin_url, name, _template_database)
            wait_until(lambda: not rec.recorder.backlog)
            assert rec.record(run("r-2")).status == "recorded"
        assert versions(url) == {"r-1": 2, "t-1": 1, "r-2": 1}  # r-1 recorded twice, in order
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT tokens_in FROM campaign_metrics WHERE run_id = 'r-1'")
            assert row.fetchone() == (2,)  # the later value won
        assert Spool(tmp_path).status().runs == 0 and rec.stats.delivered == 3
    finally:
        drop_database(admin_url, name)


async def test_database_dropped_mid_run_then_restored(
    database_url: str,
    admin_url: str,
    _template_database: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = dbname_of(database_url)
    caplog.set_level(logging.WARNING, logger="apex_metrics.recorder")
    async with Recorder(database_url, spool=tmp_path, **FAST) as rec:
        assert (await rec.record(run("r-0"))).status == "recorded"
        boom = AgentError("agent crashed")
        with pytest.raises(AgentError) as info:
            async with rec.track("spring", "t-1") as tracked:
                tracked.call(latency_ms=10)
                await asyncio.to_thread(drop_database, admin_url, name)
                raise boom
        # the agent's own exception, unchanged: nothing chained to it, nothing replaced it
        assert info.value is boom and boom.__context__ is None and boom.__cause__ is None
        assert not getattr(boom, "__notes__", None)
        assert tracked.result is not None and tracked.result.status == "spooled"
        for n in range(3):
            assert (await rec.record(run(f"r-{n + 1}"))).status == "spooled"
        assert rec.backlog and Spool(tmp_path).status().runs == 4
        await asyncio.sleep(0.5)  # the worker retries meanwhile: still one log line
        await asyncio.to_thread(create_database, admin_url, name, _template_database)
        await wait_until_async(lambda: not rec.backlog)
        assert (await rec.record(run("r-9"))).status == "recorded"
    assert versions(database_url) == {"t-1": 1, "r-1": 1, "r-2": 1, "r-3": 1, "r-9": 1}
    unavailable = [r for r in caplog.records if "PostgreSQL is unavailable" in r.getMessage()]
    assert len(unavailable) == 1 and unavailable[0].levelno == logging.WARNING
    assert any("answers again; delivered 4" in r.getMessage() for r in caplog.records)


async def test_a_live_recorder_delivers_what_others_left_after_its_next_record(
    database_url: str, tmp_path: Path
) -> None:
    async with Recorder(database_url, spool=tmp_path, **FAST) as rec:
        assert not rec.backlog
        Spool(tmp_path).append([parse_metric(run("left-1")), parse_metric(run("left-2"))])
        assert (await rec.record(run("r-1"))).status == "recorded"
        await wait_until_async(lambda: not rec.backlog)
    assert versions(database_url) == {"r-1": 1, "left-1": 1, "left-2": 1}
    assert rec.stats.delivered == 2 and not Spool(tmp_path).has_runs()


def test_spool_status_and_flush_commands(database_url: str, tmp_path: Path) -> None:
    dead = dead_url()
    with SyncRecorder(dead, spool=tmp_path, **FAST) as rec:
        results = [rec.record(run(f"r-{n}")) for n in range(5)]
        bulk = rec.record_many([run("b-1"), run("b-2")])
    assert {r.status for r in results} == {"spooled"} and bulk.spooled == 2
    status = cli("spool", "status", "--json", spool_dir=tmp_path)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert (data["runs"], data["path"]) == (7, str(tmp_path)) and data["oldest"]
    text = cli("spool", "status", spool_dir=tmp_path)
    assert "7 run(s) waiting" in text.stdout and str(tmp_path) in text.stdout

    refused = cli("spool", "flush", "--database-url", dead, spool_dir=tmp_path)
    assert refused.returncode == 1 and refused.stderr.startswith("error: cannot reach PostgreSQL")
    assert "Traceback" not in refused.stderr

    flushed = cli("spool", "flush", "--json", "--database-url", database_url, spool_dir=tmp_path)
    assert flushed.returncode == 0, flushed.stderr
    assert (
        json.loads(flushed.stdout)["delivered"] == 7 and json.loads(flushed.stdout)["waiting"] == 0
    )
    again = cli("spool", "flush", "--database-url", database_url, spool_dir=tmp_path)
    assert again.returncode == 0 and "delivered 0 run(s)" in again.stdout
    assert versions(database_url) == {k: 1 for k in [f"r-{n}" for n in range(5)] + ["b-1", "b-2"]}


# ------------------------------------------------------------------------------------------------
# Flushes that crash or race


def fill(spool: Spool, count: int) -> list[str]:
    ids = [f"s-{n:04d}" for n in range(count)]
    for n in range(0, count, 7):
        spool.append([parse_metric(run(i, tokens_in=n)) for i in ids[n : n + 7]])
    return ids


CRASH_AFTER_COMMIT = """
import asyncio, os, sys
from apex_metrics.spool import Spool
from apex_metrics.spool_delivery import flush_to

def crash(self, path):  # the commit is done; the process dies before deleting the segment
    os._exit(9)

Spool.remove = crash
asyncio.run(flush_to(sys.argv[1], Spool(sys.argv[2])))
"""


def test_a_crash_between_commit_and_removal_doubles_nothing(
    database_url: str, tmp_path: Path
) -> None:
    spool = Spool(tmp_path, segment_bytes=3000)
    ids = fill(spool, 60)
    segments = spool.segments()
    assert len(segments) > 3
    first = {m.run_id for m in read_segment(segments[0]).runs}
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_COMMIT, database_url, str(tmp_path)], check=False
    )
    assert crashed.returncode == 9
    assert set(versions(database_url)) == first  # committed, not yet removed
    assert spool.status().runs == 60
    report = asyncio.run(flush_to(database_url, spool))
    assert report.delivered == 60 and spool.status().runs == 0
    delivered = versions(database_url)
    assert sorted(delivered) == ids  # one row per run: nothing doubled
    assert {k for k, v in delivered.items() if v == 2} == first  # re-delivered: upserted again


def test_two_processes_flushing_one_spool_deliver_each_run_once(
    database_url: str, tmp_path: Path
) -> None:
    spool = Spool(tmp_path, segment_bytes=2500)
    ids = fill(spool, 700)
    assert len(spool.segments()) > 40
    args = [APEX, "spool", "flush", "--json", "--database-url", database_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env["APEX_SPOOL_DIR"] = str(tmp_path)
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    delivered = [json.loads(out)["delivered"] for out, _ in outputs]
    assert sum(delivered) == 700
    got = versions(database_url)
    assert sorted(got) == ids and set(got.values()) == {1}  # each delivered exactly once


async def test_runs_the_database_refuses_are_kept_aside(database_url: str, tmp_path: Path) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "ALTER TABLE campaign_metrics ADD CONSTRAINT no_poison CHECK (run_id <> 'poison')"
        )
    spool = Spool(tmp_path)
    spool.append([parse_metric(run(i)) for i in ["r-1", "poison", "r-2"]])
    report = await flush_to(database_url, spool)
    assert (report.delivered, report.rejected) == (2, 1)
    assert versions(database_url) == {"r-1": 1, "r-2": 1}
    kept = [json.loads(line) for line in (tmp_path / REJECTED).read_text().splitlines()]
    assert [k["run"]["run_id"] for k in kept] == ["poison"] and "no_poison" in kept[0]["reason"]
    status = spool.status()
    assert (status.runs, status.rejected) == (0, 1)
    async with Recorder(database_url, spool=spool) as rec:
        assert (await rec.record(run("poison"))).status == "rejected"
        assert (await rec.record(run("r-3"))).status == "recorded"
    assert spool.status().rejected == 2


# ------------------------------------------------------------------------------------------------
# A full spool, and strict mode


async def test_a_full_spool_is_reported_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one = len(encode_run(parse_metric(run("r-1"))))
    spool = Spool(tmp_path, max_bytes=one + one // 2)
    async with Recorder(dead_url(), spool=spool, retry_initial=30) as rec:
        assert (await rec.record(run("r-1"))).status == "spooled"
        assert (await rec.record(run("r-2"))).status == "refused"
        bulk = await rec.record_many([run("r-3"), run("r-4")])
    assert bulk.refused == 2 and rec.stats.refused == 3
    lost = [r for r in caplog.records if "LOST" in r.getMessage()]
    assert lost and lost[0].levelno == logging.ERROR
    assert "r-2" in lost[0].getMessage() and "full" in lost[0].getMessage()
    assert [m.run_id for m in read_segment(spool.segments()[0]).runs] == ["r-1"]


async def test_strict_raises(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnreachable):
        async with Recorder(dead_url(), strict=True, spool=tmp_path):
            pass
    with pytest.raises(DatabaseUnreachable):
        SyncRecorder(dead_url(), strict=True, spool=tmp_path).open()
    assert not Spool(tmp_path).has_runs()


async def test_strict_never_replaces_the_blocks_exception(database_url: str) -> None:
    async with Recorder(database_url, strict=True) as rec:
        with psycopg.connect(database_url) as conn:
            conn.execute("ALTER TABLE campaign_metrics RENAME TO gone")
        boom = AgentError("agent crashed")
        with pytest.raises(AgentError) as info:
            async with rec.track("spring", "t-1"):
                raise boom
        assert info.value is boom and boom.__context__ is None
        with pytest.raises(SchemaNotMigrated):
            async with rec.track("spring", "t-2"):
                pass
