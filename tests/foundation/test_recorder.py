"""Recorder against real PostgreSQL: upsert, pending marker, NOTIFY, bulk, RunTracker, facade."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import conninfo

from apex_metrics.exceptions import ApexMetricsError, MetricValidationError, SchemaNotMigrated
from apex_metrics.recorder import (
    P95,
    Recorder,
    SyncRecorder,
    mean_rounded,
    percentile_cont,
    record,
)

RUN = {"campaign_id": "spring", "run_id": "r-1", "agents_total": 4, "agents_successful": 3}


def row(url: str, run_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            "SELECT *, exported_version < version AS pending FROM campaign_metrics"
            " WHERE run_id = %s",
            (run_id,),
        )
        names = [d.name for d in cur.description or []]
        values = cur.fetchone()
    assert values is not None
    return dict(zip(names, values, strict=True))


def execute(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


async def test_record_inserts_then_updates_and_marks_pending(database_url: str) -> None:
    async with Recorder(database_url) as rec:
        first = await rec.record(RUN)
        assert first.inserted and first.version == 1
        assert row(database_url, "r-1")["success_rate"] == Decimal("75.00")
        # pretend the sync engine exported it
        execute(
            database_url,
            "UPDATE campaign_metrics SET exported_version = version, exported_at = now()",
        )
        assert row(database_url, "r-1")["pending"] is False
        second = await rec.record({**RUN, "agents_successful": 4})
    assert not second.inserted and second.id == first.id and second.version == 2
    stored = row(database_url, "r-1")
    assert stored["pending"] is True and stored["success_rate"] == Decimal("100.00")
    assert execute(database_url, "SELECT count(*) FROM campaign_metrics") == [(1,)]


async def test_recording_identical_values_still_makes_the_run_pending(database_url: str) -> None:
    async with Recorder(database_url) as rec:
        await rec.record(RUN)
        execute(database_url, "UPDATE campaign_metrics SET exported_version = version")
        again = await rec.record(RUN)
    assert again.version == 2 and row(database_url, "r-1")["pending"] is True


async def test_bookkeeping_updates_do_not_bump_version(database_url: str) -> None:
    async with Recorder(database_url) as rec:
        await rec.record(RUN)
    before = row(database_url, "r-1")
    execute(database_url, "UPDATE campaign_metrics SET exported_at = now(), exported_version = 1")
    after = row(database_url, "r-1")
    assert after["version"] == 1 and after["updated_at"] == before["updated_at"]
    execute(database_url, "UPDATE campaign_metrics SET tokens_in = 5")
    assert row(database_url, "r-1")["version"] == 2
    assert row(database_url, "r-1")["pending"] is True
    assert execute(database_url, "SELECT count(*) FROM v_campaign_metrics_pending") == [(1,)]


def sleeping_engine(url: str) -> None:
    """A sync engine process asleep: the doorbell is armed, so writers NOTIFY (0010)."""
    execute(
        url,
        "INSERT INTO sync_processes (id, hostname, pid, workers, asleep_since) "
        "VALUES ('test-process', 'test', 1, 1, now())",
    )


async def test_notify_carries_ids_only(database_url: str) -> None:
    sleeping_engine(database_url)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute("LISTEN apex_metrics_pending")
        async with Recorder(database_url) as rec:
            result = await rec.record(RUN)
            await rec.record_many({"campaign_id": "c", "run_id": f"bulk-{n}"} for n in range(400))
        payloads = []
        gen = listener.notifies(timeout=5, stop_after=2)
        async for note in gen:
            payloads.append(json.loads(note.payload))
    assert payloads[0] == {"ids": [result.id]}
    assert payloads[1] == {"more": True}


async def test_record_many_is_all_or_nothing(database_url: str) -> None:
    rows = [{"campaign_id": "c", "run_id": f"m-{n}", "tokens_in": n} for n in range(10)]
    rows[7]["tokens_in"] = -1
    async with Recorder(database_url, strict=True) as rec:
        with pytest.raises(MetricValidationError) as info:
            await rec.record_many(rows)
        assert [(e.line, e.field) for e in info.value.errors] == [(8, "tokens_in")]
        assert execute(database_url, "SELECT count(*) FROM campaign_metrics") == [(0,)]
        rows[7]["tokens_in"] = 7
        result = await rec.record_many(rows)
        assert (result.inserted, result.updated) == (10, 0)
        rows[0]["tokens_in"] = 100
        result = await rec.record_many(rows)
        assert (result.inserted, result.updated) == (0, 10)
    assert row(database_url, "m-0")["tokens_in"] == 100
    assert row(database_url, "m-0")["version"] == 2


async def test_record_many_rejects_a_repeated_run_id(database_url: str) -> None:
    rows = [{"campaign_id": "c", "run_id": "same"}, {"campaign_id": "c", "run_id": "same"}]
    async with Recorder(database_url, strict=True) as rec:
        with pytest.raises(MetricValidationError, match="item 1"):
            await rec.record_many(rows)


async def test_sql_looking_strings_are_stored_verbatim(database_url: str) -> None:
    nasty = "x'); DROP TABLE campaign_metrics; --"
    async with Recorder(database_url) as rec:
        await rec.record({"campaign_id": nasty, "run_id": "Robert'); --", "phase": "$$ '\\"})
        await rec.record_many([{"campaign_id": "\\N", "run_id": "copy;special", "phase": "\\."}])
    stored = row(database_url, "Robert'); --")
    assert stored["campaign_id"] == nasty and stored["phase"] == "$$ '\\"
    copied = row(database_url, "copy;special")  # (a tab is refused: issue 18)
    assert copied["campaign_id"] == "\\N" and copied["phase"] == "\\."


async def test_unmigrated_database_is_named(empty_database_url: str) -> None:
    with pytest.raises(SchemaNotMigrated, match="has no apex-metrics schema") as info:
        async with Recorder(empty_database_url, strict=True):
            pass
    assert "db migrate" in info.value.one_line()


# ------------------------------------------------------------------------------------------------
# RunTracker


async def test_tracker_aggregates_calls(database_url: str) -> None:
    async with Recorder(database_url) as rec:
        async with rec.track("spring", "t-1", phase="2-3") as run:
            run.call(tokens_in=10, tokens_out=1, latency_ms=100, cost_usd="0.001")
            run.call(tokens_in=20, tokens_out=2, latency_ms=200, cost_usd=Decimal("0.002"))
            run.call(tokens_in=30, tokens_out=3, latency_ms=400, success=False, cost_usd=0.5)
            run.add_assets(2)
    stored = row(database_url, "t-1")
    assert (stored["agents_total"], stored["agents_successful"]) == (3, 2)
    assert (stored["tokens_in"], stored["tokens_out"], stored["assets_generated"]) == (60, 6, 2)
    assert stored["cost_usd"] == Decimal("0.50300")
    assert stored["latency_avg_ms"] == 233  # 700/3
    assert stored["latency_p95_ms"] == 380  # 200 + 0.9 * 200
    assert stored["success_rate"] == Decimal("66.67")


async def test_tracker_records_a_failed_run_and_reraises(database_url: str) -> None:
    async with Recorder(database_url) as rec:
        with pytest.raises(RuntimeError, match="agent crashed"):
            async with rec.track("spring", "t-2") as run:
                run.call(latency_ms=50)
                raise RuntimeError("agent crashed")
    stored = row(database_url, "t-2")
    assert (stored["agents_total"], stored["agents_successful"]) == (2, 1)
    assert stored["latency_avg_ms"] == 50 and stored["success_rate"] == Decimal("50.00")


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.integers(0, 10**7), min_size=1, max_size=60))
def test_p95_and_mean_match_postgresql(values: list[int], admin_url: str) -> None:
    fractions = [Fraction(v) for v in values]
    with psycopg.connect(admin_url) as conn:
        cur = conn.execute(
            "SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY v), avg(v)"
            " FROM unnest(%s::bigint[]) v",
            (values,),
        )
        pg_p95, pg_avg = cur.fetchone() or (None, None)
    assert abs(float(percentile_cont(fractions, P95)) - pg_p95) <= 1e-6 * max(1.0, pg_p95)
    assert abs(Fraction(pg_avg) - Fraction(sum(values), len(values))) < Fraction(1, 10**9)
    assert mean_rounded(fractions) == round(Fraction(sum(values), len(values)))


def test_sync_facade_and_one_shot_record(database_url: str) -> None:
    result = record(RUN, url=database_url)
    assert result.inserted
    with SyncRecorder(database_url) as rec:
        assert rec.record(RUN).version == 2
        assert rec.record_many([{**RUN, "run_id": "r-2"}]).inserted == 1
        with pytest.raises(ValueError):
            with rec.track("spring", "t-3") as run:
                run.call(latency_ms=5, tokens_in=1)
                raise ValueError("boom")
    assert row(database_url, "t-3")["agents_total"] == 2


async def test_sync_facade_works_inside_a_running_loop(database_url: str) -> None:
    def in_thread() -> bool:
        return record(RUN, url=database_url).inserted

    assert await asyncio.to_thread(in_thread)
    assert record({**RUN, "run_id": "from-loop"}, url=database_url).inserted


def test_sync_facade_failing_to_open_cleans_up(empty_database_url: str) -> None:
    recorder = SyncRecorder(empty_database_url, strict=True)
    with pytest.raises(SchemaNotMigrated):
        recorder.open()
    recorder.close()  # nothing left to close; must not raise
    with pytest.raises(ApexMetricsError, match="not open"):
        recorder.record(RUN)


async def test_record_survives_connections_killed_while_idle(
    database_url: str, admin_url: str
) -> None:
    dbname = conninfo.conninfo_to_dict(database_url)["dbname"]
    async with Recorder(database_url, max_connections=2) as rec:
        await rec.record(RUN)
        killed = execute(
            admin_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (dbname,),
        )
        assert killed and all(ok for (ok,) in killed)
        again = await rec.record(RUN)
    assert again.version == 2


async def test_bookkeeping_updates_send_no_notify(database_url: str) -> None:
    async with Recorder(database_url) as rec:
        result = await rec.record(RUN)
    sleeping_engine(database_url)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute("LISTEN apex_metrics_pending")
        execute(database_url, "UPDATE campaign_metrics SET exported_version = version")
        execute(database_url, "UPDATE campaign_metrics SET phase = 'changed'")
        payloads = [
            json.loads(note.payload) async for note in listener.notifies(timeout=5, stop_after=1)
        ]
        more = [note async for note in listener.notifies(timeout=0.3)]
    assert payloads == [{"ids": [result.id]}] and more == []


async def test_writers_ring_only_while_an_engine_sleeps(database_url: str) -> None:
    """No engine asleep: no NOTIFY (a NOTIFY serialises every committing writer); one asleep:
    a NOTIFY per statement; one that stopped sleeping: none again (0010_sync_doorbell)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute("LISTEN apex_metrics_pending")
        async with Recorder(database_url) as rec:
            await rec.record({"campaign_id": "c", "run_id": "nobody-asleep"})
            assert [n async for n in listener.notifies(timeout=0.3)] == []
            sleeping_engine(database_url)
            rung = await rec.record({"campaign_id": "c", "run_id": "engine-asleep"})
            notes = [json.loads(n.payload) async for n in listener.notifies(timeout=0.5)]
            assert notes == [{"ids": [rung.id]}]
            execute(database_url, "UPDATE sync_processes SET asleep_since = NULL")
            await rec.record({"campaign_id": "c", "run_id": "engine-at-work"})
            assert [n async for n in listener.notifies(timeout=0.3)] == []
