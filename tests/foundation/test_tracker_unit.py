"""RunTracker's figures without a database: p95 and mean are rounded, never truncated."""

from __future__ import annotations

from typing import Any

import pytest

from apex_metrics.tracker import RunTracker


@pytest.mark.unit
@pytest.mark.parametrize(
    ("latencies", "p95", "avg"),
    [
        ([100, 200, 401], 381, 234),  # p95 380.9, mean 233.67: truncation says 380 and 233
        ([0, 5], 5, 2),  # p95 4.75 -> 5; mean 2.5 -> 2 (half to even)
        ([1, 2], 2, 2),  # p95 1.95 -> 2; mean 1.5 -> 2 (half to even)
        ([10, 20, 30, 40, 51], 49, 30),  # p95 = 40 + 0.8 * 11 = 48.8 -> 49; mean 30.2 -> 30
        ([100, 200, 400], 380, 233),  # exact p95
        ([0.4, 0.6], 1, 0),  # p95 0.59 -> 1; mean 0.5 -> 0 (half to even)
    ],
)
def test_p95_and_mean_are_rounded_half_even(latencies: list[Any], p95: int, avg: int) -> None:
    run = RunTracker(recorder=None, campaign_id="c", run_id="r")  # type: ignore[arg-type]
    for latency in latencies:
        run.call(latency_ms=latency)
    metric = run.metric()
    assert (metric.latency_p95_ms, metric.latency_avg_ms) == (p95, avg)
