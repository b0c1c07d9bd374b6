"""One type for what became of rows: a batch's RunSummary, and a process's sum of them."""

from __future__ import annotations

import pytest

from apex_metrics.sync.queue import RunSummary
from apex_metrics.sync.worker import EngineStats

pytestmark = pytest.mark.unit


def test_summaries_add_every_count_and_no_error() -> None:
    one = RunSummary(1, 2, 3, 4, 5, 6, 7, error="boom")
    two = RunSummary(10, 20, 30, 40, 50, 60, 70)
    assert one + two == RunSummary(11, 22, 33, 44, 55, 66, 77)


def test_a_process_reports_the_sum_of_its_batches() -> None:
    stats = EngineStats(throttled=2)  # 429 answers: the process's own count
    for run in (RunSummary(created=3, throttled=4), RunSummary(updated=1, upserted=2, failed=1)):
        stats.rows = stats.rows + run
    assert (stats.created, stats.updated, stats.upserted, stats.failed) == (3, 1, 2, 1)
    assert stats.delivered == 6 and stats.rows.throttled == 4
    report = stats.as_dict()
    assert report["delivered"] == 6 and report["throttled"] == 2
