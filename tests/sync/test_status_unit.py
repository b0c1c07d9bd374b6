"""Unit tests of the sync health reader's values, the panel's and verify's rendering of them, and
the one-owner rule: no other module defines a sync health figure (no I/O)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import pytest

from apex_metrics.ops.verify import backlog_figure
from apex_metrics.panel.sources import NOT_INSTALLED, run_outcome, sync_health_json
from apex_metrics.sql import load_queries
from apex_metrics.sync.queue import Failure, RunSummary
from apex_metrics.sync.status import Health, Status

pytestmark = pytest.mark.unit

HEALTH = Health(pending=9, in_flight=4, dead=2, retrying=3, lag_seconds=200.12345)
PACKAGE = Path(str(resources.files("apex_metrics")))


def test_health_to_dict_keeps_every_figure() -> None:
    assert HEALTH.to_dict() == {
        "pending": 9,
        "in_flight": 4,
        "dead": 2,
        "retrying": 3,
        "lag_seconds": 200.123,
    }


def test_status_shows_the_health_figures_as_they_are() -> None:
    status = Status(health=HEALTH, delivered_last_minute=120, delivered_last_hour=3000)
    assert (status.pending, status.in_flight, status.dead, status.retrying) == (9, 4, 2, 3)
    assert status.lag_seconds == HEALTH.lag_seconds and status.rows_per_second == 2.0
    data = status.to_dict()
    assert {k: data[k] for k in HEALTH.to_dict()} == HEALTH.to_dict()
    assert data["throughput"] == {
        "delivered_last_minute": 120,
        "delivered_last_hour": 3000,
        "rows_per_second": 2.0,
    }
    assert list(data) == [
        "pending", "in_flight", "dead", "retrying", "lag_seconds", "throughput", "last_errors",
        "last_runs",
    ]  # fmt: skip


def test_panel_passes_the_figures_through() -> None:
    started = datetime(2026, 1, 1, tzinfo=UTC)
    run = {"id": 1, "started_at": started, "ended_at": started, "error": None, "failed": 0,
           "dead_lettered": 0}  # fmt: skip
    body = sync_health_json(HEALTH, [run])
    assert body["sync_engine"] is True and body["message"] is None
    assert {k: body[k] for k in HEALTH.to_dict()} == HEALTH.to_dict()
    assert body["runs"] == [{**run, "outcome": "ok"}]


def test_panel_without_the_view_shows_no_figures() -> None:
    body = sync_health_json(None, [])
    assert body["sync_engine"] is False and body["message"] == NOT_INSTALLED
    assert all(body[k] is None for k in HEALTH.to_dict()) and body["runs"] == []


@pytest.mark.parametrize(
    ("ended", "error", "failed", "dead", "outcome"),
    [
        (None, None, 0, 0, "running"),
        ("t", "boom", 0, 0, "failed"),
        ("t", "boom", 2, 1, "failed"),
        ("t", None, 2, 0, "partial"),
        ("t", None, 0, 1, "partial"),
        ("t", None, 0, 0, "ok"),
    ],
)
def test_run_outcome(
    ended: str | None, error: str | None, failed: int, dead: int, outcome: str
) -> None:
    run = {"ended_at": ended, "error": error, "failed": failed, "dead_lettered": dead}
    assert run_outcome(run) == outcome


def test_verify_backlog_figure_names_every_count() -> None:
    assert backlog_figure(HEALTH) == "9 pending (3 retrying), 4 in flight, 2 dead"


def test_sync_health_is_defined_once() -> None:
    """The figures are computed in v_sync_health only: the panel's SQL and code, verify and the
    sync engine's other queries never count leases or dead rows themselves."""
    definitions = [
        name for name, sql in load_queries("sync.sql").items() if "count(*) FILTER" in sql
    ]
    assert definitions == []
    assert "FROM v_sync_health" in load_queries("sync.sql")["sync_health"]
    for path in [PACKAGE / "sql" / "panel.sql", *(PACKAGE / "panel").glob("*.py")]:
        text = path.read_text(encoding="utf-8")
        for word in (
            "sync_leases",
            "lease_until",
            "sync_dead_version",
            "v_campaign_metrics_pending",
        ):
            assert word not in text, (path.name, word)
    verify = (PACKAGE / "ops" / "verify.py").read_text(encoding="utf-8")
    for word in ("lease_until", "sync_dead_version", "min(updated_at)"):
        assert word not in verify, word


def test_failure_takes_keywords_only() -> None:
    with pytest.raises(TypeError):
        Failure(1, 1, False, 0.0, True, "500", "boom")  # type: ignore[misc]
    failure = Failure(id=1, version=1, dead=False, delay=0.0, counted=True, code="", message="")
    assert failure.id == 1


def test_run_summary_is_a_value() -> None:
    summary = RunSummary(created=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.requeued = 1  # type: ignore[misc]
