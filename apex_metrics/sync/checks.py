"""Ground truth for tests and benchmarks: synthetic pending rows and the end-state check.

After a full drain, every run in PostgreSQL must be in Dataverse once with its latest values:
``compare`` counts lost, duplicated, stale and extra keys (the Jepsen total-queue idea).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from apex_metrics.metric import (
    ALTERNATE_KEY_COLUMN,
    COLUMNS,
    ENTITY_SET,
    PRIMARY_NAME,
    dataverse_body,
)

INSERT_MANY = """
INSERT INTO campaign_metrics (campaign_id, run_id, phase, agents_total, agents_successful,
    assets_generated, tokens_in, tokens_out, cost_usd, latency_p95_ms, latency_avg_ms,
    success_rate, created_at)
SELECT 'camp-' || (g %% 7), %(prefix)s || g, '1-2', 10, g %% 11, g %% 5, 1000 + g, 2000 + g,
       (g %% 1000) / 100.0 + 0.12345, 100 + g %% 50, 50 + g %% 30, (g %% 11) * 10,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second'
FROM generate_series(1, %(n)s) AS g
"""


async def insert_rows(url: str, n: int, prefix: str = "run-") -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(INSERT_MANY, {"n": n, "prefix": prefix})
        await conn.commit()
        await conn.execute("ANALYZE campaign_metrics")  # as a bulk import should (autovacuum lags)
        await conn.commit()


async def execute(url: str, query: str, params: dict[str, Any] | None = None) -> list[Any]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(query, params)
        rows = await cur.fetchall() if cur.description else []
        await conn.commit()
        return rows


async def pg_expected(url: str) -> dict[str, dict[str, Any]]:
    """Every row as the Dataverse body it should produce."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT * FROM campaign_metrics")
        return {r["run_id"]: dataverse_body(r) for r in await cur.fetchall()}


@dataclass
class Verdict:
    rows: int
    lost: int
    duplicated: int
    stale: int
    extra: int

    def line(self, name: str) -> str:
        return (
            f"{name}: rows={self.rows} lost={self.lost} duplicated={self.duplicated} "
            f"stale={self.stale} extra={self.extra}"
        )


def compare(
    expected: dict[str, dict[str, Any]], actual: dict[str, dict[str, Any]], copies: dict[str, int]
) -> Verdict:
    """Jepsen-style classification of the final state (after a full drain)."""
    lost = sum(1 for k in expected if k not in actual)
    dup = sum(1 for k, n in copies.items() if n > 1)
    stale = sum(1 for k, body in expected.items() if k in actual and not same(body, actual[k]))
    extra = sum(1 for k in actual if k not in expected)
    return Verdict(len(expected), lost, dup, stale, extra)


def same(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    for col, value in expected.items():
        got = actual.get(col)
        if isinstance(value, float) or isinstance(got, float):
            if value is None or got is None or Decimal(str(value)) != Decimal(str(got)):
                return False
        elif value != got:
            return False
    return True


async def dataverse_state(
    source: Any, entity_set: str = ENTITY_SET
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Every row in Dataverse by run id (body columns only), and how often each key occurs."""
    select = [ALTERNATE_KEY_COLUMN, PRIMARY_NAME, *(c.dataverse for c in COLUMNS)]
    rows: dict[str, dict[str, Any]] = {}
    copies: dict[str, int] = {}
    async for row in source.query(entity_set, select=list(dict.fromkeys(select))):
        key = str(row[ALTERNATE_KEY_COLUMN])
        copies[key] = copies.get(key, 0) + 1
        rows[key] = {k: v for k, v in row.items() if k != ALTERNATE_KEY_COLUMN and k in select}
    return rows, copies


async def verdict(url: str, source: Any) -> Verdict:
    """Compare PostgreSQL (the truth) with what Dataverse holds now."""
    actual, copies = await dataverse_state(source)
    return compare(await pg_expected(url), actual, copies)
