"""Rollups off the write path: rollup + stale hours read raw equals SQL over the rows at every
moment, whatever the inserts, updates, deletes and partial refreshes; a refresher that dies
mid-batch loses and doubles nothing; upgrading a populated database rebuilds the rollups."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apex_metrics import db
from apex_metrics.panel.kpis import Window
from apex_metrics.rollup import refresh_all
from apex_metrics.sql import load_migrations, load_queries

Q = load_queries("panel.sql")
BASE = datetime(2026, 1, 10, tzinfo=UTC)
CAMPAIGNS = ("a", "b", "c")
PHASES = ("1", "2", None)
# Windows with partial edge hours, full hours and full days (and one raw-only read).
WINDOWS = (
    Window(BASE - timedelta(days=2, hours=1, minutes=23), BASE + timedelta(hours=5, minutes=20)),
    Window(BASE - timedelta(hours=7, minutes=5), BASE + timedelta(hours=2)),
    Window(BASE - timedelta(days=4), BASE + timedelta(days=2)),
)
SUMS = """
SELECT count(*), coalesce(sum(cost_usd), 0), coalesce(sum(tokens_in), 0),
       coalesce(sum(agents_total), 0), coalesce(sum(agents_successful), 0),
       coalesce(sum(latency_avg_ms), 0), count(latency_avg_ms)
FROM campaign_metrics
WHERE created_at >= %(start)s AND created_at < %(end)s
  AND (%(campaign)s::text IS NULL OR campaign_id = %(campaign)s)
  AND (%(phase)s::text IS NULL OR phase = %(phase)s)
"""
P95 = """
SELECT apex_metrics_latency_bucket_upper(b) FROM (
    SELECT apex_metrics_latency_bucket(latency_p95_ms) AS b,
           row_number() OVER (ORDER BY apex_metrics_latency_bucket(latency_p95_ms)) AS rn,
           count(*) OVER () AS n
    FROM campaign_metrics
    WHERE latency_p95_ms IS NOT NULL AND created_at >= %(start)s AND created_at < %(end)s
      AND (%(campaign)s::text IS NULL OR campaign_id = %(campaign)s)
      AND (%(phase)s::text IS NULL OR phase = %(phase)s)
) s WHERE rn = (95 * n + 99) / 100
"""
PER_CAMPAIGN = """
SELECT campaign_id, count(*), coalesce(sum(cost_usd), 0) FROM campaign_metrics
WHERE created_at >= %(start)s AND created_at < %(end)s GROUP BY 1 ORDER BY 1
"""


def args(window: Window, campaign: str | None = None, phase: str | None = None) -> dict[str, Any]:
    tiers = window.tiers()
    return {"start": window.start, "end": window.end, "h1": tiers.h1, "h2": tiers.h2,
            "d1": tiers.d1, "d2": tiers.d2, "campaign": campaign, "phase": phase,
            "limit": 100}  # fmt: skip


def assert_panel_equals_sql(conn: psycopg.Connection[Any]) -> None:
    """Every window and filter, read as the panel reads it, equals SQL over the rows."""
    for window in WINDOWS:
        for campaign, phase in ((None, None), ("a", None), (None, "2"), ("b", None)):
            a = args(window, campaign, phase)
            panel = conn.execute(Q["totals"], a).fetchone()
            ref = conn.execute(SUMS, a).fetchone()
            assert panel is not None and ref is not None
            want = (ref[0], ref[1], ref[2], ref[3], ref[4], ref[5], ref[6])
            got = (panel[0], panel[1], panel[2], panel[4], panel[5], panel[7], panel[8])
            assert [Decimal(x) for x in got] == [Decimal(x) for x in want], (window, a)
        # p95s without a campaign read the histogram; with one, the campaign histogram
        for campaign, phase in ((None, "1"), ("a", None), ("b", "2")):
            a = args(window, campaign, phase)
            p95 = conn.execute(Q["latency_p95"], a).fetchone()
            ref_p95 = conn.execute(P95, a).fetchone()
            assert (p95[0] if p95 else None) == (ref_p95[0] if ref_p95 else None), (window, a)
        a = args(window)
        campaigns = conn.execute(Q["campaigns"], a).fetchall()
        got_c = sorted((r[0], r[1], Decimal(r[2])) for r in campaigns)
        ref_c = [(r[0], r[1], Decimal(r[2])) for r in conn.execute(PER_CAMPAIGN, a).fetchall()]
        assert got_c == ref_c, window


def assert_rollups_exact(conn: psycopg.Connection[Any]) -> None:
    """After a full refresh: the rollups at both grains hold exactly the rows' sums."""
    for grain in ("1 hour", "1 day"):
        rows = """
            SELECT date_bin(%(g)s::interval, created_at, timestamptz '2000-01-01 00:00:00+00'),
                   campaign_id, phase, count(*), coalesce(sum(cost_usd), 0),
                   coalesce(sum(latency_avg_ms), 0), count(latency_p95_ms)
            FROM campaign_metrics GROUP BY 1, 2, 3"""
        rollup = """
            SELECT t, campaign_id, phase, runs, cost_usd, latency_avg_sum, latency_p95_runs
            FROM apex_metrics_rollup WHERE grain = %(g)s::interval"""
        hist_rows = """
            SELECT date_bin(%(g)s::interval, created_at, timestamptz '2000-01-01 00:00:00+00'),
                   phase, apex_metrics_latency_bucket(latency_p95_ms), count(*)
            FROM campaign_metrics WHERE latency_p95_ms IS NOT NULL GROUP BY 1, 2, 3"""
        hist = "SELECT t, phase, bucket, runs FROM apex_metrics_rollup_hist WHERE grain = %(g)s"
        campaign_rows = """
            SELECT date_bin(%(g)s::interval, created_at, timestamptz '2000-01-01 00:00:00+00'),
                   campaign_id, phase, apex_metrics_latency_bucket(latency_p95_ms), count(*)
            FROM campaign_metrics WHERE latency_p95_ms IS NOT NULL GROUP BY 1, 2, 3, 4"""
        campaign_hist = """
            SELECT t, campaign_id, phase, bucket, runs FROM apex_metrics_rollup_campaign_hist
            WHERE grain = %(g)s"""
        for left, right in ((rows, rollup), (hist_rows, hist), (campaign_rows, campaign_hist)):
            g = {"g": grain}
            assert conn.execute(f"{left} EXCEPT {right}", g).fetchall() == [], grain
            assert conn.execute(f"{right} EXCEPT {left}", g).fetchall() == [], grain


def refresh(conn: psycopg.Connection[Any], max_hours: int) -> int:
    with conn.transaction():
        args = {"max_hours": max_hours, "before": "infinity"}
        row = conn.execute(Q["refresh_rollup"], args).fetchone()
    return int(row[0]) if row else 0


# --- random inserts, updates, deletes and partial refreshes ---------------------------------------

minutes = st.integers(min_value=-4 * 24 * 60, max_value=2 * 24 * 60)
insert = st.tuples(
    st.just("insert"), st.sampled_from(CAMPAIGNS), st.sampled_from(PHASES), minutes,
    st.integers(0, 99_999), st.one_of(st.none(), st.integers(0, 20_000)),
    st.one_of(st.none(), st.integers(0, 5_000)),
)  # fmt: skip
update = st.tuples(
    st.just("update"), st.integers(0, 50), st.sampled_from(CAMPAIGNS), st.sampled_from(PHASES),
    st.one_of(st.none(), minutes), st.integers(0, 99_999),
)  # fmt: skip
delete = st.tuples(st.just("delete"), st.integers(0, 50))
refresh_op = st.tuples(st.just("refresh"), st.integers(1, 4))
bookkeeping = st.tuples(st.just("export"), st.integers(0, 50))
operations = st.lists(
    st.one_of(insert, insert, update, delete, refresh_op, bookkeeping), min_size=1, max_size=14
)


def apply(conn: psycopg.Connection[Any], op: tuple[Any, ...], serial: list[int]) -> None:
    kind = op[0]
    if kind == "insert":
        _, campaign, phase, minute, cost, p95, avg = op
        serial[0] += 1
        conn.execute(
            "INSERT INTO campaign_metrics (campaign_id, run_id, phase, agents_total,"
            " agents_successful, tokens_in, cost_usd, latency_p95_ms, latency_avg_ms, created_at)"
            " VALUES (%s, %s, %s, 10, 7, 100, %s, %s, %s, %s)",
            (campaign, f"r{serial[0]}", phase, Decimal(cost) / 1000, p95, avg,
             BASE + timedelta(minutes=minute)),
        )  # fmt: skip
    elif kind == "update":  # may move the run to another hour, day, campaign or phase
        _, nth, campaign, phase, minute, cost = op
        conn.execute(
            "UPDATE campaign_metrics SET campaign_id = %s, phase = %s, cost_usd = %s,"
            " created_at = coalesce(%s, created_at)"
            " WHERE id = (SELECT id FROM campaign_metrics ORDER BY id"
            " OFFSET %s %% greatest((SELECT count(*) FROM campaign_metrics), 1) LIMIT 1)",
            (campaign, phase, Decimal(cost) / 1000,
             None if minute is None else BASE + timedelta(minutes=minute), nth),
        )  # fmt: skip
    elif kind == "delete":
        conn.execute(
            "DELETE FROM campaign_metrics"
            " WHERE id = (SELECT id FROM campaign_metrics ORDER BY id"
            " OFFSET %s %% greatest((SELECT count(*) FROM campaign_metrics), 1) LIMIT 1)",
            (op[1],),
        )
    elif kind == "export":  # sync bookkeeping: nothing the panel reads
        conn.execute(
            "UPDATE campaign_metrics SET exported_version = version, exported_at = now()"
            " WHERE id %% 3 = %s",
            (op[1] % 3,),
        )
    else:
        refresh(conn, op[1])
    conn.commit()


@pytest.fixture
def conn(database_url: str) -> Any:
    with psycopg.connect(database_url) as c:
        yield c


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_rollup_plus_stale_rows_equal_sql_at_every_moment(
    conn: psycopg.Connection[Any], ops: list[tuple[Any, ...]]
) -> None:
    conn.execute("TRUNCATE campaign_metrics")  # the truncate trigger empties rollups and log
    conn.commit()
    serial = [0]
    for op in ops:
        apply(conn, op, serial)
        assert_panel_equals_sql(conn)
    while refresh(conn, 3) > 0:
        assert_panel_equals_sql(conn)
    assert_rollups_exact(conn)
    assert conn.execute("SELECT count(*) FROM apex_metrics_rollup_stale").fetchone() == (0,)


def test_an_old_changed_cost_shows_up(conn: psycopg.Connection[Any]) -> None:
    old = BASE - timedelta(days=21)
    conn.execute(
        "INSERT INTO campaign_metrics (campaign_id, run_id, cost_usd, created_at)"
        " VALUES ('a', 'old-1', 1, %s), ('a', 'old-2', 2, %s)",
        (old, old),
    )
    conn.commit()
    refresh(conn, 100)
    conn.execute("UPDATE campaign_metrics SET cost_usd = 5 WHERE run_id = 'old-1'")
    conn.commit()
    window = Window(old - timedelta(days=2), old + timedelta(days=2))
    total = conn.execute(Q["totals"], args(window)).fetchone()
    assert total is not None and Decimal(total[1]) == 7  # before the refresher ran
    refresh(conn, 100)
    day = conn.execute(
        "SELECT cost_usd FROM apex_metrics_rollup WHERE grain = '1 day' AND t = %s",
        (old.replace(hour=0),),
    ).fetchone()
    assert day is not None and Decimal(day[0]) == 7


# --- the refresher dying mid-batch, two refreshers at once ----------------------------------------


def test_refresher_killed_mid_batch_loses_and_doubles_nothing(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    conn.execute(
        "INSERT INTO campaign_metrics (campaign_id, run_id, cost_usd, latency_p95_ms, created_at)"
        " SELECT 'a', 'k' || g, g, g * 10, %s + g * interval '7 minutes'"
        " FROM generate_series(1, 500) g",
        (BASE - timedelta(days=2),),
    )
    conn.commit()
    victim = psycopg.connect(database_url)
    pid = victim.info.backend_pid
    victim.execute(Q["refresh_rollup"], {"max_hours": 1000, "before": "infinity"})  # not committed
    folded = victim.execute("SELECT count(*) FROM apex_metrics_rollup").fetchone()
    assert folded is not None and folded[0] > 0
    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    conn.commit()
    with pytest.raises(psycopg.OperationalError):
        victim.commit()
    victim.close()
    assert conn.execute("SELECT count(*) FROM apex_metrics_rollup").fetchone() == (0,)
    assert_panel_equals_sql(conn)
    report = asyncio.run(refresh_all(database_url))
    assert report.hours > 0
    assert_rollups_exact(conn)
    assert_panel_equals_sql(conn)
    assert asyncio.run(refresh_all(database_url)).hours == 0  # nothing folded twice


def test_one_refresher_at_a_time(conn: psycopg.Connection[Any], database_url: str) -> None:
    conn.execute(
        "INSERT INTO campaign_metrics (campaign_id, run_id, created_at) VALUES ('a', 'x', %s)",
        (BASE,),
    )
    conn.commit()
    with psycopg.connect(database_url) as first:
        first.execute(Q["refresh_rollup"], {"max_hours": 10, "before": "infinity"})
        assert refresh(conn, 10) == -1  # busy: skipped
        first.commit()
    assert refresh(conn, 10) == 0
    assert_rollups_exact(conn)


# --- upgrading a populated database --------------------------------------------------------------


def migrate_before(c: psycopg.Connection[Any], version: int, *, runs: int) -> None:
    """Apply the migrations older than ``version`` as ``db migrate`` would, then add ``runs``
    runs spread back from BASE every 13 minutes (5 campaigns, 3 phases)."""
    c.execute(load_queries("queries.sql")["create_migrations_table"])
    for m in load_migrations():
        if m.version >= version:
            break
        with c.transaction():
            c.execute(m.sql)
            c.execute(
                "INSERT INTO apex_metrics_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (m.version, m.name, db.checksum(m.sql)),
            )
    c.execute(
        "INSERT INTO campaign_metrics (campaign_id, run_id, phase, cost_usd, latency_p95_ms,"
        " created_at) SELECT 'c' || g %% 5, 'u' || g, (g %% 3)::text, g, g %% 900,"
        " %s - g * interval '13 minutes' FROM generate_series(1, %s) g",
        (BASE, runs),
    )


async def test_upgrade_from_the_old_triggers_rebuilds_the_rollups(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    with psycopg.connect(url, autocommit=True) as c:
        migrate_before(c, 9, runs=3000)
        assert c.execute("SELECT count(*) FROM apex_metrics_panel_rollup").fetchone() != (0,)
    report = await db.migrate(url)
    assert [n for n in report.applied if n.startswith("0009")]
    with psycopg.connect(url) as c:
        assert c.execute("SELECT to_regclass('apex_metrics_panel_rollup')").fetchone() == (None,)
        stale = c.execute("SELECT count(DISTINCT hour) FROM apex_metrics_rollup_stale").fetchone()
        assert stale is not None and stale[0] > 600
        assert_panel_equals_sql(c)
        done: list[tuple[int, int]] = []
        from apex_metrics.rollup import catch_up

        async with await db.connect(url) as aconn:
            result = await catch_up(aconn, max_hours=100, progress=lambda d, t: done.append((d, t)))
        assert result.hours == stale[0] and len(done) == result.batches > 1
        assert done[-1] == (stale[0], stale[0])
        assert_rollups_exact(c)
        assert_panel_equals_sql(c)


# --- the panel process: its refresher, and a new run seen within a second -------------------------


async def test_the_panel_sees_a_new_run_within_a_second_and_folds_it(database_url: str) -> None:
    import time

    import httpx

    from apex_metrics.panel.app import PanelConfig, create_app

    app = create_app(PanelConfig(source="postgres", database_url=database_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://panel.test") as client,
            await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn,
        ):
            async with app.state.panel.broadcaster.subscribe() as queue:
                await conn.execute(
                    "INSERT INTO campaign_metrics (campaign_id, run_id, cost_usd)"
                    " VALUES ('fresh', 'fresh-1', 1.5)"
                )
                committed = time.perf_counter()
                await asyncio.wait_for(queue.get(), 1.0)  # the change event, within 1 s
            body = (await client.get("/api/kpis", params={"window": "1h"})).json()
            tiles = {t["key"]: t["value"] for t in body["tiles"]}
            assert tiles["runs"] == 1 and tiles["cost_usd"] == "1.50000"
            assert time.perf_counter() - committed < 1.0
            # The panel's own refresher folds a closed hour at once (the open one every 5 s).
            await conn.execute(
                "INSERT INTO campaign_metrics (campaign_id, run_id, cost_usd, created_at)"
                " VALUES ('fresh', 'fresh-0', 2, now() - interval '3 hours')"
            )
            for _ in range(50):
                cur = await conn.execute(
                    "SELECT count(*) FROM apex_metrics_rollup_stale"
                    " WHERE hour < now() - interval '2 hours'"
                )
                if (await cur.fetchone()) == (0,):
                    break
                await asyncio.sleep(0.1)
            cur = await conn.execute(
                "SELECT runs FROM apex_metrics_rollup WHERE grain = '1 hour'"
                " AND campaign_id = 'fresh' AND t < now() - interval '2 hours'"
            )
            assert await cur.fetchone() == (1,)


def test_panel_connections_never_jit_compile() -> None:
    from psycopg import conninfo

    from apex_metrics.panel.sources import panel_conninfo

    url = panel_conninfo("postgresql://u@h:5432/d?options=-c%20statement_timeout%3D5000")
    options = conninfo.conninfo_to_dict(url)["options"]
    assert options == "-c statement_timeout=5000 -c jit=off"
    assert conninfo.conninfo_to_dict(panel_conninfo("postgresql://u@h/d"))["options"] == (
        "-c jit=off"
    )


async def test_upgrade_to_the_campaign_histogram_builds_it_once(empty_database_url: str) -> None:
    """From 0011 with rollups built: 0012 drops the covering index, logs every hour, and one
    catch-up fills the campaign histogram (the other rollups' deltas are zero)."""
    url = empty_database_url
    with psycopg.connect(url, autocommit=True) as c:
        migrate_before(c, 12, runs=2000)
        while refresh(c, 500):
            pass
        assert c.execute("SELECT to_regclass('apex_metrics_panel_campaign_created')").fetchone()
        before = c.execute("SELECT count(*), sum(runs) FROM apex_metrics_rollup").fetchone()
    report = await db.migrate(url)
    assert [n for n in report.applied if n.startswith("0012")]
    with psycopg.connect(url) as c:
        gone = c.execute("SELECT to_regclass('apex_metrics_panel_campaign_created')").fetchone()
        assert gone == (None,)
        assert_panel_equals_sql(c)  # stale hours read raw until the catch-up
        from apex_metrics.rollup import catch_up

        async with await db.connect(url) as aconn:
            result = await catch_up(aconn)
        assert result.hours > 400
        assert c.execute("SELECT count(*), sum(runs) FROM apex_metrics_rollup").fetchone() == before
        assert_rollups_exact(c)
        assert_panel_equals_sql(c)
