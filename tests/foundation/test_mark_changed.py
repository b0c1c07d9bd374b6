"""``apex_metrics_mark_changed`` bumps version on a data change, and runs only for updates that
set a data column or version: the sync engine's bookkeeping updates (two per delivered row) do
not pay for it."""

from __future__ import annotations

import psycopg

from apex_metrics.sync.queue import Q

INSERT = """
INSERT INTO campaign_metrics (campaign_id, run_id, phase, agents_total, agents_successful,
    assets_generated, tokens_in, tokens_out, cost_usd, created_at)
SELECT 'c', 'mark-' || n, 'final', 2, 1, 0, 10, 20, 0.5, now() FROM generate_series(1, 5) n
"""


def _calls(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
        " WHERE funcname = 'apex_metrics_mark_changed'"
    ).fetchone()
    assert row is not None
    return int(row[0])  # type: ignore[call-overload]


def _versions(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT run_id, version, updated_at FROM campaign_metrics ORDER BY run_id"
    ).fetchall()


def test_bookkeeping_updates_skip_the_trigger_and_data_updates_bump_version(
    database_url: str,
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET track_functions = 'pl'")  # counts plpgsql calls (superuser setting)
        conn.execute(INSERT)
        before = _versions(conn)
        with conn.transaction():  # the engine's claim and acknowledgement: no call
            claimed = conn.execute(
                Q["claim_batch"], {"owner": "t/1", "limit": 10, "lease_seconds": 60}
            ).fetchall()
            assert len(claimed) == 5
            conn.execute(
                Q["ack_delivered"],
                {
                    "owner": "t/1",
                    "ids": [r[0] for r in claimed],
                    "versions": [r[1] for r in claimed],
                },
            )
            conn.execute(
                "UPDATE campaign_metrics SET exported_at = now(), sync_last_error_code = 'x'"
            )
            assert _calls(conn) == 0
        assert _versions(conn) == before
        with conn.transaction():  # a data column set (even to its value): one call per row
            conn.execute("UPDATE campaign_metrics SET tokens_in = 10 WHERE run_id = 'mark-1'")
            conn.execute("UPDATE campaign_metrics SET tokens_in = 11 WHERE run_id = 'mark-2'")
            conn.execute(
                "UPDATE campaign_metrics SET version = version + 5 WHERE run_id = 'mark-3'"
            )
            assert _calls(conn) == 3
        after = {run: (version, at) for run, version, at in _versions(conn)}
        old = {run: (version, at) for run, version, at in before}
        assert after["mark-1"] == old["mark-1"]  # same value: not a change
        assert after["mark-2"][0] == old["mark-2"][0] + 1  # type: ignore[operator]
        assert after["mark-2"][1] != old["mark-2"][1]
        assert after["mark-3"][0] == old["mark-3"][0] + 5  # type: ignore[operator]
        assert after["mark-4"] == old["mark-4"] and after["mark-5"] == old["mark-5"]
