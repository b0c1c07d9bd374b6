"""The triggers' statements and the sync engine's connections are never JIT-compiled.

The statement-level triggers read transition tables, which the planner always estimates at 1,000
rows; with PostgreSQL's JIT on (its default where the server has LLVM) their statements were
compiled at every firing, about a second each, stalling claims, acknowledgements and inserts.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import conninfo

from apex_metrics.sync.engine import engine_conninfo

TRIGGER_FUNCTIONS = (
    "apex_metrics_notify_pending",
    "apex_metrics_rollup_mark_stale",
    "apex_metrics_rollup_refresh",
)


def test_trigger_functions_turn_jit_off(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT proname, proconfig FROM pg_proc WHERE proname = ANY(%s)",
            (list(TRIGGER_FUNCTIONS),),
        ).fetchall()
    assert {name for name, _ in rows} == set(TRIGGER_FUNCTIONS)
    assert all("jit=off" in config for _, config in rows), rows


def _plans(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> list[str]:
    """Every plan auto_explain reports while ``statement`` runs (nested statements included)."""
    plans: list[str] = []

    def keep(diag: psycopg.errors.Diagnostic) -> None:
        plans.append(diag.message_primary or "")

    conn.add_notice_handler(keep)
    try:
        conn.execute(statement)
    finally:
        conn.remove_notice_handler(keep)
    return [p for p in plans if "Query Text:" in p]


def test_trigger_statements_are_not_compiled_even_when_jit_is_forced(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        available = conn.execute("SELECT pg_jit_available()").fetchone()
        if not (available and available[0]):
            pytest.skip("this PostgreSQL server has no JIT provider: nothing can be compiled")
        conn.execute("LOAD 'auto_explain'")
        for name, value in {
            "jit": "on",
            "jit_above_cost": "0",  # compile everything that may be compiled ...
            "auto_explain.log_min_duration": "0",
            "auto_explain.log_nested_statements": "on",
            "auto_explain.log_level": "notice",  # ... and send every plan to this client
        }.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        typed = [
            "INSERT INTO campaign_metrics (campaign_id, run_id) VALUES ('c', 'r')",
            "UPDATE campaign_metrics SET tokens_in = 7 WHERE run_id = 'r'",
            "DELETE FROM campaign_metrics WHERE run_id = 'r'",
        ]
        seen = [plan for statement in typed for plan in _plans(conn, statement)]

    def query_text(plan: str) -> str:
        return plan.split("Query Text:", 1)[1].strip()

    top = [p for p in seen if query_text(p).splitlines()[0] in typed]
    nested = [p for p in seen if p not in top]
    # The check can fail: the statements typed here were compiled ...
    assert len(top) == 3 and all("JIT:" in p for p in top), top
    # ... while those the triggers ran (notify + rollups: at least one per firing) were not.
    assert len(nested) >= 6, [query_text(p)[:60] for p in nested]
    assert not [query_text(p)[:200] for p in nested if "JIT:" in p]


def test_the_engine_connects_with_jit_off(database_url: str) -> None:
    url = engine_conninfo(database_url)
    with psycopg.connect(url) as conn:
        assert conn.execute("SHOW jit").fetchone() == ("off",)
        assert conn.execute("SHOW application_name").fetchone() == ("apex-metrics-sync",)


def test_engine_conninfo_keeps_the_options_of_the_url(database_url: str) -> None:
    url = engine_conninfo(conninfo.make_conninfo(database_url, options="-c statement_timeout=1234"))
    with psycopg.connect(url) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert conn.execute("SHOW jit").fetchone() == ("off",)
