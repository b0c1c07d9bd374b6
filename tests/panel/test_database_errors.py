"""A database failing under a running panel: every API answer is the same 503, never a 500."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from apex_metrics.panel.app import PanelConfig

UNAVAILABLE = {"error": "the database is unavailable; retrying"}


async def test_database_error_answers_503_and_logs_the_cause(
    h: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = PanelConfig(source="postgres", database_url=database_url, refresh_rollup=False)
    async with h.panel_client(config) as client:
        assert (await client.get("/api/sync")).status_code == 200
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE campaign_metrics RENAME TO campaign_metrics_away")
            try:
                with caplog.at_level(logging.WARNING, logger="apex_metrics.panel.app"):
                    answer = await client.get("/api/sync")
            finally:
                conn.execute("ALTER TABLE campaign_metrics_away RENAME TO campaign_metrics")
        assert answer.status_code == 503
        assert answer.json() == UNAVAILABLE
        logged = [r.getMessage() for r in caplog.records if r.name == "apex_metrics.panel.app"]
        assert any(
            m.startswith("panel: database error: ") and "campaign_metrics" in m for m in logged
        ), logged
        assert (await client.get("/api/sync")).status_code == 200
