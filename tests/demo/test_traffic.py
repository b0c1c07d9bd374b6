from __future__ import annotations

import itertools
import statistics
from datetime import UTC, datetime, timedelta

import pytest

from apex_metrics.ops.traffic import PROFILES, TrafficGenerator, percentile_cont, runs_per_hour_at


def test_percentile_cont_matches_postgres_definition() -> None:
    # SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY x) FROM unnest('{1,2,3,4,10}') → 8.8
    assert percentile_cont([10, 1, 3, 2, 4], 0.95) == pytest.approx(8.8)
    assert percentile_cont([5], 0.95) == 5
    with pytest.raises(ValueError):
        percentile_cont([], 0.5)


def test_same_seed_gives_same_runs() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    a = [TrafficGenerator(7).run(at=at) for _ in range(3)]
    b = [TrafficGenerator(7).run(at=at) for _ in range(3)]
    assert a == b


def test_runs_are_valid_and_varied() -> None:
    gen = TrafficGenerator(3)
    runs = [gen.run() for _ in range(400)]
    assert {r.campaign_id for r in runs} == {p.campaign_id for p in PROFILES}
    assert len({r.run_id for r in runs}) == len(runs)
    for r in runs:
        assert r.agents_total is not None and r.agents_successful is not None
        assert 0 <= r.agents_successful <= r.agents_total
        assert r.cost_usd is not None and r.cost_usd > 0
    rates = [float(r.success_rate or 0) for r in runs]
    assert min(rates) < 80 < statistics.mean(rates)  # some failures, mostly healthy


def test_backfill_covers_the_window_in_order() -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    runs = list(TrafficGenerator(5).backfill(2, per_hour=10, now=now))
    times = [r.created_at for r in runs]
    assert times == sorted(times)
    assert times[0] >= now - timedelta(days=2) and times[-1] < now
    assert 200 < len(runs) < 1000


def test_backfill_after_fills_only_the_gap() -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    after = now - timedelta(hours=3)
    runs = list(TrafficGenerator(5).backfill(7, per_hour=100, now=now, after=after))
    assert runs and min(r.created_at for r in runs) > after
    assert 150 < len(runs) < 500  # three hours, not a week


def test_history_and_live_traffic_share_one_smooth_density() -> None:
    """The demo's last hour must not look like an incident: no hour differs from the one
    before by more than ~15 %, and a day averages the configured rate."""
    start = datetime(2026, 6, 1, tzinfo=UTC)
    hourly = [runs_per_hour_at(start + timedelta(hours=h), 100) for h in range(48)]
    assert statistics.mean(hourly[:24]) == pytest.approx(100, rel=0.01)
    steps = [abs(b - a) / a for a, b in itertools.pairwise(hourly)]
    assert max(steps) < 0.15
    # The live generator draws its gaps from the same density as the backfill.
    gen = TrafficGenerator(9)
    at = datetime(2026, 6, 1, 14, tzinfo=UTC)
    gaps = [gen.next_gap(at, 360) for _ in range(4000)]
    assert 3600 / statistics.mean(gaps) == pytest.approx(runs_per_hour_at(at, 360), rel=0.06)
    history = list(TrafficGenerator(9).backfill(1, per_hour=360, now=at + timedelta(hours=1)))
    last_hour = [r for r in history if r.created_at >= at]
    before = [r for r in history if at - timedelta(hours=1) <= r.created_at < at]
    assert abs(len(last_hour) - len(before)) / len(before) < 0.25
