"""A database failing under a running panel: every API answer is the same 503, never a 500."""

from __future__ import annotations

import asyncio
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

    def rename(old: str, new: str) -> None:
        # In a thread: the panel runs in this event loop, and its watcher's transaction (which
        # holds a lock on the table) ends only when the loop runs on.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '20s'")
            conn.execute(f"ALTER TABLE {old} RENAME TO {new}")

    async with h.panel_client(config) as client:
        assert (await client.get("/api/sync")).status_code == 200
        await asyncio.to_thread(rename, "campaign_metrics", "campaign_metrics_away")
        try:
            with caplog.at_level(logging.WARNING, logger="apex_metrics.panel.app"):
                answer = await client.get("/api/sync")
        finally:
            await asyncio.to_thread(rename, "campaign_metrics_away", "campaign_metrics")
        assert answer.status_code == 503
        assert answer.json() == UNAVAILABLE
        logged = [r.getMessage() for r in caplog.records if r.name == "apex_metrics.panel.app"]
        assert any(
            m.startswith("panel: database error: ") and "campaign_metrics" in m for m in logged
        ), logged
        assert (await client.get("/api/sync")).status_code == 200
