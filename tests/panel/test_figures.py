"""KPI and series figures of the Postgres source equal the same figures computed directly in SQL
over the raw rows, for every window and filter; the rollup stays equal to the raw rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from apex_metrics.panel.app import PanelConfig
from apex_metrics.panel.kpis import change
from apex_metrics.rollup import refresh_all

CAMPAIGNS = ("spring-launch", "q4-retention", "o'brien test", "eu-rollout")
FILTERS: list[dict[str, str]] = [
    {},
    {"campaign": "spring-launch"},
    {"campaign": "o'brien test"},
    {"phase": "2-3"},
    {"campaign": "q4-retention", "phase": "1"},
]


def windows() -> list[dict[str, str]]:
    now = datetime.now(UTC).replace(microsecond=0)
    custom = {
        "window": "custom",
        "from": (now - timedelta(hours=50, minutes=-17, seconds=11)).isoformat(),
        "to": (now - timedelta(hours=3, minutes=-5)).isoformat(),
    }
    short = {
        "window": "custom",
        "from": (now - timedelta(minutes=40)).isoformat(),
        "to": (now - timedelta(minutes=12)).isoformat(),
    }
    return [{"window": w} for w in ("1h", "24h", "7d", "30d")] + [custom, short]


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def tiles_by_key(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in body["tiles"]}


async def check_kpis(h: Any, client: httpx.AsyncClient, url: str, params: dict[str, str]) -> None:
    response = await client.get("/api/kpis", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    start, end = _when(body["window"]["start"]), _when(body["window"]["end"])
    campaign, phase = params.get("campaign"), params.get("phase")
    now_ref = h.reference(url, start, end, campaign, phase)
    before = h.reference(url, _when(body["previous"]["start"]), start, campaign, phase)
    tiles = tiles_by_key(body)
    for key, expected in now_ref.items():
        assert h.canon(tiles[key]["value"]) == expected, (params, key)
        assert h.canon(tiles[key]["previous"]) == before[key], (params, key, "previous")
        want = change(
            None if expected is None else Decimal(expected),
            None if before[key] is None else Decimal(before[key]),
        )
        assert h.canon(tiles[key]["change_pct"]) == h.canon(want), (params, key, "change")


@pytest.mark.parametrize("rollup", [True, False], ids=["rollup", "raw"])
async def test_kpis_equal_sql_for_every_window_and_filter(
    h: Any, seeded_url: str, rollup: bool
) -> None:
    config = PanelConfig(source="postgres", database_url=seeded_url, use_rollup=rollup)
    async with h.panel_client(config) as client:
        for window in windows():
            for filters in FILTERS:
                await check_kpis(h, client, seeded_url, {**window, **filters})


async def test_kpis_are_not_empty(client: httpx.AsyncClient) -> None:
    """The seeded data really exercises every tile (guards against comparing empty sets)."""
    body = (await client.get("/api/kpis", params={"window": "30d"})).json()
    tiles = tiles_by_key(body)
    assert tiles["runs"]["value"] > 500
    assert tiles["latency_p95_ms"]["value"] > 0
    assert Decimal(tiles["success_rate"]["value"]) > 0
    assert tiles["runs"]["change_pct"] is not None


async def test_series_equal_sql(h: Any, client: httpx.AsyncClient, seeded_url: str) -> None:
    keys = ("runs", "cost_usd", "tokens_in", "tokens_out", "success_rate", "latency_p95_ms")
    for window in windows():
        for filters in FILTERS[:4]:
            params = {**window, **filters}
            body = (await client.get("/api/series", params=params)).json()
            start, end = _when(body["window"]["start"]), _when(body["window"]["end"])
            ref = h.reference_series(
                seeded_url, start, end, body["bucket_seconds"],
                params.get("campaign"), params.get("phase"),
            )  # fmt: skip
            seen = 0
            for point in body["points"]:
                t = _when(point["t"])
                want = ref.get(t)
                if want is None:
                    assert point["runs"] == 0, (params, t)
                    continue
                seen += 1
                for key in keys:
                    assert h.canon(point[key]) == want[key], (params, t, key)
            assert seen == len(ref), params


async def test_campaigns_equal_sql(h: Any, client: httpx.AsyncClient, seeded_url: str) -> None:
    for window in windows():
        body = (await client.get("/api/campaigns", params=window)).json()
        start, end = _when(body["window"]["start"]), _when(body["window"]["end"])
        got = {row["campaign_id"]: row for row in body["campaigns"]}
        for campaign in CAMPAIGNS:
            ref = h.reference(seeded_url, start, end, campaign, None)
            if ref["runs"] == "0":
                assert campaign not in got
                continue
            for key in ("runs", "cost_usd", "success_rate", "cost_per_asset", "latency_avg_ms",
                        "latency_p95_ms"):  # fmt: skip
                assert h.canon(got[campaign][key]) == ref[key], (window, campaign, key)
        costs = [Decimal(row["cost_usd"]) for row in body["campaigns"]]
        assert costs == sorted(costs, reverse=True)


async def test_runs_and_csv_follow_filters(client: httpx.AsyncClient, seeded_url: str) -> None:
    params = {"window": "7d", "campaign": "o'brien test", "limit": "1000"}
    body = (await client.get("/api/runs", params=params)).json()
    start, end = _when(body["window"]["start"]), _when(body["window"]["end"])
    with psycopg.connect(seeded_url) as conn:
        want = [
            r[0]
            for r in conn.execute(
                "SELECT run_id FROM campaign_metrics WHERE campaign_id = %s AND created_at >= %s"
                " AND created_at < %s ORDER BY created_at DESC, id DESC LIMIT 1000",
                ("o'brien test", start, end),
            )
        ]
    assert [r["run_id"] for r in body["runs"]] == want and want
    csv_text = (await client.get("/api/runs.csv", params={**params, "window": "custom",
        "from": start.isoformat(), "to": end.isoformat()})).text  # fmt: skip
    lines = csv_text.strip().split("\n")
    assert lines[0].startswith("run_id,campaign_id,phase,")
    assert [line.split(",")[0] for line in lines[1:]] == want


ROLLUP_EQUALS_ROWS = """
    SELECT date_bin(%(grain)s::interval, created_at, timestamptz '2000-01-01 00:00:00+00'),
           campaign_id, phase, count(*), coalesce(sum(cost_usd), 0),
           coalesce(sum(agents_successful), 0), coalesce(sum(latency_avg_ms), 0),
           count(latency_avg_ms), count(latency_p95_ms)
    FROM campaign_metrics GROUP BY 1, 2, 3
"""
ROLLUP_ROWS = """
    SELECT t, campaign_id, phase, runs, cost_usd, agents_successful, latency_avg_sum,
           latency_avg_runs, latency_p95_runs
    FROM apex_metrics_rollup WHERE grain = %(grain)s::interval
"""
HIST_EQUALS_ROWS = """
    SELECT date_bin(%(grain)s::interval, created_at, timestamptz '2000-01-01 00:00:00+00'), phase,
           apex_metrics_latency_bucket(latency_p95_ms), count(*)
    FROM campaign_metrics WHERE latency_p95_ms IS NOT NULL GROUP BY 1, 2, 3
"""
HIST_ROWS = """
    SELECT t, phase, bucket, runs FROM apex_metrics_rollup_hist WHERE grain = %(grain)s::interval
"""


def assert_rollups_exact(conn: psycopg.Connection[Any]) -> None:
    """Both grains of the rollup and histogram hold exactly the rows' sums (no extra rows)."""
    for grain in ("1 hour", "1 day"):
        args = {"grain": grain}
        for rows, rollup in ((ROLLUP_EQUALS_ROWS, ROLLUP_ROWS), (HIST_EQUALS_ROWS, HIST_ROWS)):
            assert conn.execute(rows + " EXCEPT " + rollup, args).fetchall() == [], grain
            assert conn.execute(rollup + " EXCEPT " + rows, args).fetchall() == [], grain


async def test_rollup_tracks_inserts_updates_and_deletes(seeded_url: str) -> None:
    watermark = "SELECT coalesce(max(id), 0), count(*) FROM apex_metrics_rollup_stale"
    with psycopg.connect(seeded_url) as conn:
        assert_rollups_exact(conn)  # the fixture refreshed them
        before = conn.execute(watermark).fetchone()
        conn.execute("UPDATE campaign_metrics SET cost_usd = cost_usd + 1, phase = '9'"
                     " WHERE id % 7 = 0")  # fmt: skip
        conn.execute("UPDATE campaign_metrics SET created_at = created_at - interval '5 hours',"
                     " latency_p95_ms = NULL WHERE id % 13 = 0")  # fmt: skip
        conn.execute("DELETE FROM campaign_metrics WHERE id % 17 = 0")
        # Upserts (INSERT … ON CONFLICT DO UPDATE, as the recorder writes) fire both the insert
        # and the update trigger, each with its own rows.
        conn.execute(
            "INSERT INTO campaign_metrics (campaign_id, run_id, phase, cost_usd, latency_p95_ms,"
            " created_at) SELECT campaign_id || '-x', run_id, phase, cost_usd * 2, 77,"
            " created_at - interval '1 day' FROM campaign_metrics WHERE id % 5 = 0"
            " UNION ALL SELECT 'fresh', 'fresh-' || g, NULL, 1, 900, now() - g * interval '1 hour'"
            " FROM generate_series(1, 30) g"
            " ON CONFLICT (run_id) DO UPDATE SET campaign_id = EXCLUDED.campaign_id,"
            " cost_usd = EXCLUDED.cost_usd, latency_p95_ms = EXCLUDED.latency_p95_ms,"
            " created_at = EXCLUDED.created_at"
        )
        conn.commit()
        mid = conn.execute(watermark).fetchone()
        # Sync bookkeeping changes nothing the panel reads: nothing logged, no change event.
        conn.execute("UPDATE campaign_metrics SET exported_version = version, exported_at = now()")
        conn.commit()
        after = conn.execute(watermark).fetchone()
        assert before is not None and mid is not None and mid[0] > before[0]
        assert after == mid
        report = await refresh_all(seeded_url)
        assert report.hours > 0
        assert_rollups_exact(conn)
        assert conn.execute(watermark).fetchone() == (0, 0)


def test_p95_of_buckets_stays_within_bucket_error(seeded_url: str) -> None:
    """The reported p95 of run p95s is at most 1/32 above the exact percentile_disc."""
    with psycopg.connect(seeded_url) as conn:
        exact, ours = conn.execute(
            "SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_p95_ms),"
            " apex_metrics_latency_bucket_upper(percentile_disc(0.95) WITHIN GROUP"
            " (ORDER BY apex_metrics_latency_bucket(latency_p95_ms))) FROM campaign_metrics"
        ).fetchone()  # type: ignore[misc]
    assert exact <= ours <= exact * 33 / 32 + 1
