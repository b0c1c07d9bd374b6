"""Unit tests of the SQL file, the log format and the row → body map (no I/O)."""

from __future__ import annotations

import json
import logging

import pytest

from apex_metrics.sql import load_queries
from apex_metrics.sync.logs import JsonFormatter

pytestmark = pytest.mark.unit


def test_sync_sql_has_every_query() -> None:
    names = set(load_queries("sync.sql"))
    assert {
        "claim_batch",
        "ack_delivered",
        "record_failures",
        "release_claim",
        "sync_health",
        "sync_health_installed",
        "last_runs",
        "retry_dead_all",
        "replay_since",
        "reconcile_compare",
        "take_slot",
        "give_back_slot",
        "pause_all",
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
