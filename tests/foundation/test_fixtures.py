"""The shared database fixtures do what tests/conftest.py promises."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg


def test_database_url_is_migrated_and_private(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM campaign_metrics").fetchone() == (0,)
        (versions,) = conn.execute("SELECT count(*) FROM apex_metrics_migrations").fetchone() or (
            0,
        )
        assert versions >= 1
        conn.execute("INSERT INTO campaign_metrics (campaign_id, run_id) VALUES ('c', 'only-here')")


def test_clones_do_not_share_rows(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM campaign_metrics").fetchone() == (0,)


def test_empty_database_has_no_tables(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert row == (0,)


def test_environment_is_clean(tmp_path: Path) -> None:
    assert not [k for k in os.environ if k.upper().startswith("APEX_")]
    assert Path.cwd() != Path(__file__).parent
