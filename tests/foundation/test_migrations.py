"""db migrate: fresh, repeated, concurrent, adopting the original table; schema.sql agrees."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from apex_metrics import db
from apex_metrics.sql import load_migrations, load_queries, read_sql

SEED_TABLE = """
CREATE TABLE campaign_metrics (
    id serial PRIMARY KEY,
    campaign_id varchar(64) NOT NULL,
    run_id varchar(64) NOT NULL UNIQUE,
    phase varchar(16),
    agents_total integer,
    agents_successful integer,
    assets_generated integer,
    tokens_in integer,
    tokens_out integer,
    cost_usd numeric(10,5),
    latency_p95_ms integer,
    latency_avg_ms integer,
    success_rate numeric(5,2),
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    exported_at timestamptz
);
CREATE INDEX idx_campaign_metrics_exported_at ON campaign_metrics (exported_at);
"""


def execute(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def schema_dump(url: str) -> str:
    """pg_dump --schema-only, without the migrations bookkeeping and comment lines."""
    params = conninfo.conninfo_to_dict(url)
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--no-privileges",
         "--exclude-table=apex_metrics_migrations", "-d", url],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("--")]
    assert params["dbname"] not in "\n".join(lines)
    return "\n".join(ln for ln in lines if not ln.startswith("\\"))


async def test_fresh_database_gets_every_migration(empty_database_url: str) -> None:
    report = await db.migrate(empty_database_url)
    names = [m.name for m in load_migrations()]
    assert report.applied == names and report.already_applied == []
    assert report.version == load_migrations()[-1].version
    versions = execute(empty_database_url, "SELECT version, name FROM apex_metrics_migrations")
    assert [name for _, name in versions] == names
    assert any("schema now at version" in line for line in report.lines())


async def test_second_run_does_nothing(empty_database_url: str) -> None:
    await db.migrate(empty_database_url)
    before = schema_dump(empty_database_url)
    report = await db.migrate(empty_database_url)
    assert report.applied == [] and len(report.already_applied) == len(load_migrations())
    assert "nothing to do" in report.lines()[-1]
    assert schema_dump(empty_database_url) == before


async def test_concurrent_migrations_apply_each_file_once(empty_database_url: str) -> None:
    reports = await asyncio.gather(*(db.migrate(empty_database_url) for _ in range(4)))
    applied = [name for r in reports for name in r.applied]
    assert sorted(applied) == sorted(m.name for m in load_migrations())
    assert execute(empty_database_url, "SELECT count(*) FROM apex_metrics_migrations") == [
        (len(load_migrations()),)
    ]


async def test_adopts_the_original_table_with_its_rows(empty_database_url: str) -> None:
    url = empty_database_url
    execute(url, SEED_TABLE)
    execute(
        url,
        "INSERT INTO campaign_metrics (campaign_id, run_id, tokens_in, created_at, exported_at)"
        " SELECT 'c', 'seed-' || n, n, now() - interval '1 day',"
        "        CASE WHEN n % 3 = 0 THEN now() END"
        " FROM generate_series(1, 30) n",
    )
    execute(url, "DELETE FROM campaign_metrics WHERE run_id = 'seed-30'")  # ids have a gap
    report = await db.migrate(url)
    assert any("29 rows kept, 9 already exported" in n for n in report.notices)
    assert execute(url, "SELECT count(*) FROM campaign_metrics") == [(29,)]
    assert execute(url, "SELECT count(*) FROM v_campaign_metrics_pending") == [(20,)]
    exported = execute(
        url,
        "SELECT count(*) FROM campaign_metrics"
        " WHERE exported_at IS NOT NULL AND exported_version = version",
    )
    assert exported == [(9,)]
    # new rows continue after the last id, and the unique run id still holds
    new_id = execute(
        url, "INSERT INTO campaign_metrics (campaign_id, run_id) VALUES ('c', 'new') RETURNING id"
    )
    assert new_id == [(31,)]
    with pytest.raises(psycopg.errors.UniqueViolation):
        execute(url, "INSERT INTO campaign_metrics (campaign_id, run_id) VALUES ('c', 'seed-1')")


async def test_adopted_table_has_the_fresh_schema(
    empty_database_url: str, database_url: str
) -> None:
    execute(empty_database_url, SEED_TABLE)
    execute(
        empty_database_url, "INSERT INTO campaign_metrics (campaign_id, run_id) VALUES ('c', 'x')"
    )
    await db.migrate(empty_database_url)
    assert schema_dump(empty_database_url) == schema_dump(database_url)


def test_schema_sql_matches_the_migrations(empty_database_url: str, database_url: str) -> None:
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(read_sql("schema.sql"))
    assert schema_dump(empty_database_url) == schema_dump(database_url)


def test_schema_sql_has_a_section_per_part() -> None:
    text = read_sql("schema.sql")
    for part in ("foundation", "sync engine", "panel"):
        assert f"-- {part} (" in text


def test_query_files_parse() -> None:
    queries = load_queries("queries.sql")
    assert {"upsert_metric", "create_stage", "upsert_from_stage", "schema_version"} <= set(queries)
    assert all(q.strip() for q in queries.values())


async def test_failed_migration_changes_nothing(empty_database_url: str) -> None:
    url = empty_database_url
    execute(url, SEED_TABLE)
    execute(
        url, "INSERT INTO campaign_metrics (campaign_id, run_id, tokens_in) VALUES ('c', 'x', -5)"
    )
    with pytest.raises(db.DatabaseError, match="0001_campaign_metrics failed") as info:
        await db.migrate(url)
    assert "tokens_in" in str(info.value)
    assert execute(url, "SELECT tokens_in FROM campaign_metrics") == [(-5,)]
    assert execute(url, "SELECT count(*) FROM apex_metrics_migrations") == [(0,)]
    columns = execute(
        url, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'campaign_metrics'"
    )
    assert columns == [(16,)]


async def test_changed_applied_migration_is_reported(empty_database_url: str) -> None:
    await db.migrate(empty_database_url)
    execute(
        empty_database_url, "UPDATE apex_metrics_migrations SET checksum = 'x' WHERE version = 1"
    )
    report = await db.migrate(empty_database_url)
    assert report.applied == []
    assert any("0001_campaign_metrics changed" in notice for notice in report.notices)
