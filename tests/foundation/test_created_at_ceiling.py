from __future__ import annotations

import psycopg
import pytest


def test_created_at_past_9999_is_refused_by_the_database(database_url: str) -> None:
    insert = "INSERT INTO campaign_metrics (campaign_id, run_id, created_at) VALUES ('c', %s, %s)"
    with psycopg.connect(database_url) as conn:
        conn.execute(insert, ("last-second", "9999-12-31 23:59:59+00"))
        with pytest.raises(psycopg.errors.CheckViolation, match="created_at_check"):
            conn.execute(insert, ("too-late", "10000-01-01 00:00:00+00"))
