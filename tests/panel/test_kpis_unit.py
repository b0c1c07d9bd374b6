"""KPI math without I/O, and the Python latency buckets against their SQL twin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg

from apex_metrics.panel.kpis import (
    Totals,
    Window,
    bucket_starts,
    bucket_width,
    change,
    latency_bucket,
    latency_bucket_upper,
    p95_from_histogram,
)
from apex_metrics.panel.params import BadParameter, parse_filters

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def test_latency_buckets_match_sql_and_bound_the_error(database_url: str) -> None:
    values = sorted(
        {0, 1, 63, 64, 65, 127, 128, 2**31 - 1}
        | {2**e + d for e in range(6, 31) for d in (-1, 0, 1)}
        | set(range(0, 5000, 7))
    )
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT v, apex_metrics_latency_bucket(v),"
            " apex_metrics_latency_bucket_upper(apex_metrics_latency_bucket(v))"
            " FROM unnest(%s::int[]) AS v",
            (values,),
        ).fetchall()
    for v, bucket, upper in rows:
        assert latency_bucket(v) == bucket, v
        assert latency_bucket_upper(bucket) == upper, v
        assert v <= upper <= v + v / 32 + 1, v
    buckets = [latency_bucket(v) for v in values]
    assert buckets == sorted(buckets)


def test_p95_uses_nearest_rank_over_buckets() -> None:
    assert p95_from_histogram({}) is None
    assert p95_from_histogram({10: 19, 20: 1}) == 10  # 19/20 = 95 %
    assert p95_from_histogram({10: 18, 20: 2}) == 20
    assert p95_from_histogram({10: 0, 30: 5}) == 30


def test_success_rate_is_weighted_by_agents() -> None:
    small = Totals(runs=1, agents_total=2, agents_successful=0)  # a run at 0 %
    big = Totals(runs=1, agents_total=200, agents_successful=200)  # a run at 100 %
    small.add(big)
    assert small.success_rate == Decimal("99.01")  # not the 50 % average of the two runs
    assert Totals().success_rate is None and Totals().cost_per_asset is None
    money = Totals(cost_usd=Decimal("1.00000"), assets_generated=3, agents_successful=7)
    assert money.cost_per_asset == Decimal("0.33333")
    assert money.cost_per_successful_agent == Decimal("0.14286")


def test_change_against_previous() -> None:
    assert change(Decimal("110"), Decimal("100")) == Decimal("10.00")
    assert change(5, 0) is None and change(None, 3) is None
    assert change(0, 4) == Decimal("-100.00")


def test_tiers_and_bucket_widths() -> None:
    w = Window(T0 - timedelta(days=30, minutes=17), T0 + timedelta(minutes=5))
    tiers = w.tiers()
    assert (tiers.h1, tiers.h2) == (T0 - timedelta(days=30), T0)
    assert (tiers.d1, tiers.d2) == (
        datetime(2026, 2, 9, tzinfo=UTC),
        datetime(2026, 3, 10, tzinfo=UTC),
    )
    inside_hour = Window(T0 + timedelta(minutes=1), T0 + timedelta(minutes=59))
    assert inside_hour.tiers().h1 == inside_hour.end
    no_day = Window(T0 - timedelta(hours=5, minutes=1), T0).tiers()
    assert no_day.d1 == no_day.d2 == no_day.h2 == T0
    assert bucket_width(Window(T0 - timedelta(hours=1), T0)) == 60
    assert bucket_width(Window(T0 - timedelta(hours=24), T0)) == 3600
    assert bucket_width(Window(T0 - timedelta(days=7), T0)) == 3600
    assert bucket_width(Window(T0 - timedelta(days=30), T0)) == 86400
    starts = bucket_starts(Window(T0 - timedelta(minutes=90), T0), 3600)
    assert starts == [T0 - timedelta(hours=2), T0 - timedelta(hours=1)]


def test_rolling_windows_end_now() -> None:
    f = parse_filters({"window": "7d", "campaign": "c"}, now=lambda: T0)
    assert f.window == Window(T0 - timedelta(days=7), T0)
    assert f.query_args() == {"window": "7d", "campaign": "c"}
    try:
        parse_filters({"window": "custom", "from": "2026-01-01", "to": "2026-01-01"})
    except BadParameter as exc:
        assert exc.name == "to" and "later" in exc.rule
    else:
        raise AssertionError("equal bounds accepted")
