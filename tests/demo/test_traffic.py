from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

import pytest

from apex_metrics.traffic import PROFILES, TrafficGenerator, percentile_cont


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
