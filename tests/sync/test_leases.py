"""Leases in sync_leases (0007): a claim locks its rows without rewriting them, a lease is taken
once, an expired one is taken over, deleted rows take theirs along, and 0007 carries over the
leases and attempts that an earlier schema kept on the row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from apex_metrics import db
from apex_metrics.sql import load_migrations, load_queries
from apex_metrics.sync.checks import execute, insert_rows
from apex_metrics.sync.queue import Claim, Failure, Queue, RunSummary, Settled

Q = load_queries("sync.sql")


@pytest.fixture
async def queue(database_url: str) -> AsyncIterator[Queue]:
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        await pool.open()
        yield Queue(pool)


async def versions_on_disk(url: str) -> dict[int, tuple[str, str]]:
    """Where each row's current version is (ctid) and which transaction wrote it (xmin)."""
    rows = await execute(url, "SELECT id, ctid::text, xmin::text FROM campaign_metrics")
    return {int(r[0]): (str(r[1]), str(r[2])) for r in rows}


async def deliver_all(queue: Queue, claim: Claim) -> Settled:
    """Settle a claim as if Dataverse took every row of it."""
    delivered = [(r["id"], r["version"]) for r in claim.rows]
    return await queue.settle(claim, delivered, [], RunSummary(created=len(delivered)))


async def leases(url: str) -> dict[int, tuple[Any, ...]]:
    rows = await execute(
        url,
        "SELECT id, lease_owner, lease_until > clock_timestamp(), attempts, attempt_version"
        " FROM sync_leases",
    )
    return {int(r[0]): tuple(r[1:]) for r in rows}


async def test_claim_leases_rows_without_rewriting_them(database_url: str, queue: Queue) -> None:
    await insert_rows(database_url, 30)
    before = await versions_on_disk(database_url)
    first = await queue.claim(owner="a/1", worker="a", limit=10, lease_seconds=60)
    second = await queue.claim(owner="b/1", worker="b", limit=100, lease_seconds=60)
    assert first is not None and second is not None
    ids_a = [r["id"] for r in first.rows]
    ids_b = [r["id"] for r in second.rows]
    assert ids_a == sorted(before)[:10]  # oldest first
    assert ids_b == sorted(before)[10:]  # the leased ones are passed over
    assert all(r["attempts"] == 1 and r["version"] == 1 for r in first.rows)
    assert await versions_on_disk(database_url) == before  # no row version written
    held = await leases(database_url)
    assert {i: held[i][0] for i in ids_a} == dict.fromkeys(ids_a, "a/1")
    assert all(held[i][:4] == ("b/1", True, 1, 1) for i in ids_b)
    assert await queue.claim(owner="c/1", worker="c", limit=10, lease_seconds=60) is None

    settled = await deliver_all(queue, first)
    assert (settled.acked, settled.requeued, settled.lost_lease) == (10, 0, 0)
    assert set(await leases(database_url)) == set(ids_b)  # delivered: lease gone
    exported = await execute(
        database_url,
        "SELECT count(*) FROM campaign_metrics WHERE exported_version = version"
        " AND exported_at IS NOT NULL",
    )
    assert exported == [(10,)]


async def test_expired_lease_is_taken_over_and_fences_the_old_owner(
    database_url: str, queue: Queue
) -> None:
    await insert_rows(database_url, 3)
    old = await queue.claim(owner="old/1", worker="old", limit=10, lease_seconds=60)
    assert old is not None
    await execute(database_url, "UPDATE sync_leases SET lease_until = now() - interval '1 s'")
    new = await queue.claim(owner="new/1", worker="new", limit=10, lease_seconds=60)
    assert new is not None and [r["attempts"] for r in new.rows] == [2, 2, 2]
    late = await deliver_all(queue, old)
    assert (late.acked, late.lost_lease) == (0, 3)  # no longer its rows: nothing written
    assert all(v[0] == "new/1" for v in (await leases(database_url)).values())
    pending = await execute(
        database_url, "SELECT count(*) FROM campaign_metrics WHERE exported_version < version"
    )
    assert pending == [(3,)]


async def test_failure_keeps_attempts_and_release_gives_one_back(
    database_url: str, queue: Queue
) -> None:
    await insert_rows(database_url, 2)
    claim = await queue.claim(owner="w/1", worker="w", limit=10, lease_seconds=60)
    assert claim is not None
    first, second = claim.rows
    await queue.settle(
        claim,
        [],
        [
            Failure(
                id=first["id"], version=first["version"], dead=False, delay=0.0, counted=True,
                code="500", message="boom",
            ),
            Failure(
                id=second["id"], version=second["version"], dead=True, delay=0.0, counted=True,
                code="0x80044331", message="bad",
            ),
        ],
        RunSummary(failed=2),
    )  # fmt: skip
    held = await leases(database_url)
    assert held[first["id"]] == (None, None, 1, 1)  # released, attempt counted
    assert held[second["id"]] == (None, None, 1, 1)  # dead: its attempts stay for status
    again = await queue.claim(owner="w/2", worker="w", limit=10, lease_seconds=60)
    assert again is not None and [(r["id"], r["attempts"]) for r in again.rows] == [
        (first["id"], 2)
    ]
    await queue.release(again, delay=30.0)
    assert (await leases(database_url))[first["id"]] == (None, None, 1, 1)
    waiting = await execute(
        database_url,
        "SELECT sync_next_attempt_at > clock_timestamp() + interval '20 s'"
        " FROM campaign_metrics WHERE id = %(id)s",
        {"id": first["id"]},
    )
    assert waiting == [(True,)]


async def test_settle_returns_the_run_it_recorded_and_leaves_the_summary_alone(
    database_url: str, queue: Queue
) -> None:
    await insert_rows(database_url, 3)
    claim = await queue.claim(owner="w/1", worker="w", limit=10, lease_seconds=60)
    assert claim is not None
    first, second, third = claim.rows
    await execute(
        database_url,
        "UPDATE campaign_metrics SET tokens_in = tokens_in + 1 WHERE id = %(id)s",
        {"id": second["id"]},
    )  # changed in flight: delivered, but still pending
    summary = RunSummary(created=2, failed=1)
    dead = Failure(
        id=third["id"], version=third["version"], dead=True, delay=0.0, counted=True,
        code="0x80044331", message="bad",
    )  # fmt: skip
    settled = await queue.settle(
        claim, [(first["id"], first["version"]), (second["id"], second["version"])], [dead], summary
    )
    assert summary == RunSummary(created=2, failed=1)  # the caller's value, unchanged
    assert settled.run == RunSummary(created=2, failed=1, requeued=1, dead_lettered=1)
    assert (settled.acked, settled.requeued, settled.dead) == (1, 1, 1)
    recorded = await execute(
        database_url,
        "SELECT created, failed, requeued, dead_lettered FROM sync_runs WHERE id = %(id)s",
        {"id": claim.run_id},
    )
    assert recorded == [(2, 1, 1, 1)]


async def test_deleted_and_truncated_rows_take_their_leases(
    database_url: str, queue: Queue
) -> None:
    await insert_rows(database_url, 5)
    assert await queue.claim(owner="w/1", worker="w", limit=10, lease_seconds=60) is not None
    await execute(database_url, "DELETE FROM campaign_metrics WHERE run_id IN ('run-1', 'run-2')")
    assert len(await leases(database_url)) == 3
    await execute(database_url, "TRUNCATE campaign_metrics RESTART IDENTITY")
    assert await leases(database_url) == {}
    await insert_rows(database_url, 2)  # ids 1 and 2 again: nothing holds them up
    claim = await queue.claim(owner="w/2", worker="w", limit=10, lease_seconds=60)
    assert claim is not None and [r["attempts"] for r in claim.rows] == [1, 1]


async def test_0007_carries_over_leases_and_attempts(empty_database_url: str) -> None:
    url = empty_database_url
    earlier = [m for m in load_migrations() if m.version < 7]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(db.Q["create_migrations_table"])
        for m in earlier:
            conn.execute(m.sql)
            conn.execute(
                db.Q["record_migration"],
                {"version": m.version, "name": m.name, "checksum": db.checksum(m.sql)},
            )
        conn.execute(
            "INSERT INTO campaign_metrics (campaign_id, run_id) "
            "SELECT 'c', 'r-' || n FROM generate_series(1, 4) n"
        )
        conn.execute(
            "UPDATE campaign_metrics SET sync_lease_owner = 'p/w0/1',"
            " sync_lease_until = now() + interval '1 min', sync_attempts = 2,"
            " sync_attempt_version = 1 WHERE run_id = 'r-1'"
        )
        conn.execute(
            "UPDATE campaign_metrics SET sync_attempts = 4, sync_attempt_version = 1,"
            " sync_dead_version = 1 WHERE run_id = 'r-2'"
        )
    report = await db.migrate(url)
    assert [name for name in report.applied] == [m.name for m in load_migrations()[len(earlier) :]]
    carried = await execute(
        url,
        "SELECT c.run_id, l.lease_owner, l.lease_until > now(), l.attempts, l.attempt_version"
        " FROM sync_leases AS l JOIN campaign_metrics AS c ON c.id = l.id ORDER BY c.run_id",
    )
    assert carried == [("r-1", "p/w0/1", True, 2, 1), ("r-2", None, None, 4, 1)]
    columns = await execute(
        url,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = 'campaign_metrics' AND column_name LIKE 'sync_%%'"
        " ORDER BY ordinal_position",
    )
    assert [c[0] for c in columns] == [
        "sync_next_attempt_at", "sync_dead_version", "sync_last_error_code", "sync_last_error",
        "sync_last_error_at",
    ]  # fmt: skip


async def test_rows_being_acknowledged_are_locked_even_when_changed_in_flight(
    database_url: str, queue: Queue
) -> None:
    """The acknowledgement locks every row whose lease it ends (a row changed in flight too)
    before it ends the lease, so a claim passes over them instead of taking the lease: the lock
    order of the claim (row, then lease) holds, and the two never wait for each other."""
    await insert_rows(database_url, 1)
    old = await queue.claim(owner="old/1", worker="old", limit=10, lease_seconds=60)
    assert old is not None
    await execute(database_url, "UPDATE sync_leases SET lease_until = now() - interval '1 s'")
    await execute(database_url, "UPDATE campaign_metrics SET tokens_in = 99")  # version 2
    sent = {"owner": "old/1", "ids": [old.rows[0]["id"]], "versions": [old.rows[0]["version"]]}
    with psycopg.connect(database_url) as acking:
        acked = acking.execute(Q["ack_delivered"], sent).fetchall()
        assert acked == [(sent["ids"][0], False)]  # changed in flight: stays pending
        with psycopg.connect(database_url, autocommit=True) as claiming:
            claiming.execute("SET statement_timeout = '5s'")  # a wait would fail the test
            passed_over = claiming.execute(
                Q["claim_batch"], {"owner": "new/1", "limit": 10, "lease_seconds": 60}
            ).fetchall()
        assert passed_over == []
        acking.execute(Q["end_leases"], sent)
        acking.commit()
    again = await queue.claim(owner="new/2", worker="new", limit=10, lease_seconds=60)
    assert again is not None
    assert [(r["version"], r["attempts"], r["tokens_in"]) for r in again.rows] == [(2, 1, 99)]
