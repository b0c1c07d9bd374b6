"""Two imports with overlapping run ids, in opposite orders, both finish (no deadlock), whether
the runs are new (COPY straight into the table) or already recorded (ordered upserts); a
deadlock is reported as one, not as a lost connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from psycopg.errors import DeadlockDetected

from apex_metrics.db import wrap_query_error
from apex_metrics.importer import import_file

HEADER = "campaign_id,run_id,cost_usd,created_at\n"


def write(path: Path, ids: list[int], cost: str) -> str:
    with path.open("w", encoding="utf-8") as out:
        out.write(HEADER)
        for n in ids:
            out.write(f"c{n % 7},run-{n:06d},{cost},2026-01-0{1 + n % 9}T10:00:00Z\n")
    return str(path)


@pytest.mark.parametrize("existing", [False, True], ids=["new-runs", "recorded-runs"])
async def test_overlapping_imports_in_opposite_orders_both_finish(
    database_url: str, tmp_path: Path, existing: bool
) -> None:
    first = write(tmp_path / "a.csv", list(range(0, 6000)), "1.00000")
    second = write(tmp_path / "b.csv", list(range(8999, 2999, -1)), "2.00000")
    if existing:
        await import_file(write(tmp_path / "seed.csv", list(range(0, 9000)), "0.50000"),
                          url=database_url)  # fmt: skip
    reports = await asyncio.wait_for(
        asyncio.gather(import_file(first, url=database_url), import_file(second, url=database_url)),
        timeout=60,
    )
    assert [r.inserted + r.updated for r in reports] == [6000, 6000]
    if existing:
        assert [r.updated for r in reports] == [6000, 6000]
    with psycopg.connect(database_url) as conn:
        count = conn.execute("SELECT count(*), count(DISTINCT run_id) FROM campaign_metrics")
        assert count.fetchone() == (9000, 9000)
        # Each run holds the value of one of the files that named it.
        wrong = conn.execute(
            "SELECT count(*) FROM campaign_metrics WHERE cost_usd NOT IN (1, 2)"
        ).fetchone()
        assert wrong == (0,)


def test_a_deadlock_is_not_blamed_on_the_connection() -> None:
    error = wrap_query_error(DeadlockDetected("deadlock detected"), "db:5432/x")
    assert "rolled the transaction back" in str(error) and "connection" not in str(error)


async def test_a_recorded_run_past_the_first_batch_falls_back_to_the_upsert(
    database_url: str, tmp_path: Path
) -> None:
    """The first batch is all new (COPY straight into the table), a later row is recorded
    already: the unique violation rolls the COPY back and the whole file is upserted."""
    await import_file(write(tmp_path / "old.csv", [12_000], "0.50000"), url=database_url)
    path = write(tmp_path / "mixed.csv", list(range(0, 12_001)), "1.00000")
    report = await import_file(path, url=database_url)
    assert (report.inserted, report.updated) == (12_000, 1)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT count(*), sum(cost_usd), max(version) FROM campaign_metrics")
        assert rows.fetchone() == (12_001, 12_001, 2)
