"""Unit tests of the retry policy, flow control, SQL file and log format (no I/O)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time

from apex_metrics.sql import load_queries
from apex_metrics.sync.logs import JsonFormatter
from apex_metrics.sync.policy import MIN_PAUSE, FlowControl, RetryPolicy


def test_invalid_rows_are_dead_at_once_transient_ones_back_off() -> None:
    policy = RetryPolicy(max_attempts=4, base_wait=1.0, max_wait=5.0)
    assert policy.decide(transient=False, attempts=1).dead
    rng = random.Random(1)
    waits = [policy.decide(transient=True, attempts=n, rng=rng) for n in (1, 2, 3)]
    assert not any(w.dead for w in waits)
    assert 0.5 <= waits[0].delay <= 1.0 and 1.0 <= waits[1].delay <= 2.0
    assert 2.0 <= waits[2].delay <= 4.0
    assert policy.decide(transient=True, attempts=4).dead  # max attempts reached
    assert all(2.5 <= policy.backoff(30, rng) <= 5.0 for _ in range(50))  # capped


async def test_429_pauses_everyone_and_halves_concurrency() -> None:
    flow = FlowControl(8)
    assert flow.on_throttled(0) == MIN_PAUSE  # Retry-After: 0 is no reason to hammer
    assert flow.limit == 4 and flow.paused_for > 0.5
    flow = FlowControl(8)
    pause = flow.on_throttled(0.2)
    assert 0.2 <= pause <= 0.25  # honoured, with a small floor
    stop = asyncio.Event()
    started = time.monotonic()
    await asyncio.wait_for(flow.wait_ready(stop), 5)
    assert time.monotonic() - started >= 0.15
    for _ in range(100):
        flow.on_success()
    assert flow.limit == 8  # additive increase back to the cap, never above


async def test_slots_respect_the_limit() -> None:
    flow = FlowControl(4)
    flow.on_throttled(0.01)  # limit 2
    peak = 0

    async def job() -> None:
        nonlocal peak
        async with flow.slot():
            peak = max(peak, flow.in_flight)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(asyncio.gather(*(job() for _ in range(10))), 5)
    assert peak == 2


def test_sync_sql_has_every_query() -> None:
    names = set(load_queries("sync.sql"))
    assert {
        "claim_batch",
        "ack_delivered",
        "record_failures",
        "release_claim",
        "queue_counts",
        "retry_dead_all",
        "replay_since",
        "reconcile_compare",
    } <= names


def test_json_logs_carry_structured_fields() -> None:
    record = logging.makeLogRecord(
        {"msg": "dead-lettered %d row(s)", "args": (2,), "levelname": "WARNING", "name": "x"}
    )
    record.event = "dead_lettered"
    record.keys = ["a", "b"]
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "dead-lettered 2 row(s)"
    assert data["event"] == "dead_lettered" and data["keys"] == ["a", "b"]
    assert data["level"] == "warning" and data["ts"].endswith("+00:00")


def test_fast_body_equals_the_model() -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    from apex_metrics.metric import FIELD_NAMES, Metric
    from apex_metrics.sync.sink import dataverse_body

    full = Metric(
        campaign_id="c",
        run_id="r-1",
        phase="2-3",
        agents_total=5,
        agents_successful=4,
        assets_generated=2,
        tokens_in=10,
        tokens_out=20,
        cost_usd=Decimal("0.00001"),
        latency_p95_ms=9,
        latency_avg_ms=3,
        success_rate=Decimal("80.00"),
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC),
    )
    empty = Metric(campaign_id="c", run_id="r-2")
    for metric in (full, empty):
        row = {name: getattr(metric, name) for name in FIELD_NAMES}
        assert dataverse_body(row) == metric.to_dataverse()
