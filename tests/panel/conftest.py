"""Fixtures of the panel tests: seeded databases, the app in process, the app under uvicorn,
and the reference figures computed directly in SQL over campaign_metrics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from pydantic import SecretStr

from apex_metrics.panel.app import PanelConfig, create_app, end_streams
from apex_metrics.rollup import refresh_all
from apex_metrics.testing import free_port

CAMPAIGNS = ("spring-launch", "q4-retention", "o'brien test", "eu-rollout")
PHASES = ("1", "2", "2-3", None)
TOKEN = "test-panel-token-7f3a"

INSERT = """
INSERT INTO campaign_metrics (campaign_id, run_id, phase, agents_total, agents_successful,
    assets_generated, tokens_in, tokens_out, cost_usd, latency_p95_ms, latency_avg_ms,
    success_rate, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


def random_run(rng: random.Random, created_at: datetime, run_id: str) -> tuple[Any, ...]:
    agents = rng.choice([None, 0, *range(1, 40)]) if rng.random() < 0.05 else rng.randint(1, 60)
    ok = None if agents is None else rng.randint(0, agents)
    p95 = None if rng.random() < 0.05 else int(rng.lognormvariate(7.5, 0.8))
    avg = None if rng.random() < 0.05 else rng.randint(5, 4000)
    rate = (
        None if not agents or ok is None else (Decimal(ok) * 100 / agents).quantize(Decimal("0.01"))
    )
    return (
        rng.choice(CAMPAIGNS),
        run_id,
        rng.choice(PHASES),
        agents,
        ok,
        None if rng.random() < 0.03 else rng.randint(0, 30),
        rng.randint(0, 200_000),
        rng.randint(0, 50_000),
        Decimal(rng.randint(0, 900_000)) / Decimal(100_000),
        p95,
        avg,
        rate,
        created_at,
    )


def seed_runs(url: str, n: int = 2500, seed: int = 6) -> datetime:
    """``n`` random runs over the last 62 days (denser in the last day); returns 'now'."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        if i % 5 == 0:
            age = timedelta(seconds=rng.uniform(0, 86_400))
        elif i % 11 == 0:
            age = timedelta(seconds=rng.uniform(0, 3_600))
        else:
            age = timedelta(seconds=rng.uniform(0, 62 * 86_400))
        # Whole seconds, as Dataverse keeps them: both stores then hold identical rows.
        rows.append(random_run(rng, (now - age).replace(microsecond=0), f"run-{seed}-{i}"))
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(INSERT, rows)
    return now


REF_TOTALS = """
SELECT count(*), coalesce(sum(cost_usd), 0), coalesce(sum(tokens_in), 0),
       coalesce(sum(tokens_out), 0), coalesce(sum(agents_total), 0),
       coalesce(sum(agents_successful), 0), coalesce(sum(assets_generated), 0),
       round(avg(latency_avg_ms), 2),
       round(sum(agents_successful) * 100::numeric / nullif(sum(agents_total), 0), 2),
       round(sum(cost_usd) / nullif(sum(assets_generated), 0), 5),
       round(sum(cost_usd) / nullif(sum(agents_successful), 0), 5)
FROM campaign_metrics
WHERE created_at >= %(start)s AND created_at < %(end)s
  AND (%(campaign)s::text IS NULL OR campaign_id = %(campaign)s)
  AND (%(phase)s::text IS NULL OR phase = %(phase)s)
"""

# Nearest rank over the bucketed values: rank ceil(0.95 n), in integers.
REF_P95 = """
SELECT apex_metrics_latency_bucket_upper(b)
FROM (
    SELECT apex_metrics_latency_bucket(latency_p95_ms) AS b,
           row_number() OVER (ORDER BY apex_metrics_latency_bucket(latency_p95_ms)) AS rn,
           count(*) OVER () AS n
    FROM campaign_metrics
    WHERE latency_p95_ms IS NOT NULL AND created_at >= %(start)s AND created_at < %(end)s
      AND (%(campaign)s::text IS NULL OR campaign_id = %(campaign)s)
      AND (%(phase)s::text IS NULL OR phase = %(phase)s)
) s
WHERE rn = (95 * n + 99) / 100
"""

REF_SERIES = """
WITH r AS (
    SELECT date_bin(make_interval(secs => %(width)s), created_at,
                    timestamptz '2000-01-01 00:00:00+00') AS t, *
    FROM campaign_metrics
    WHERE created_at >= %(start)s AND created_at < %(end)s
      AND (%(campaign)s::text IS NULL OR campaign_id = %(campaign)s)
      AND (%(phase)s::text IS NULL OR phase = %(phase)s)
),
ranked AS (
    SELECT t, apex_metrics_latency_bucket(latency_p95_ms) AS b,
           row_number() OVER (PARTITION BY t
                              ORDER BY apex_metrics_latency_bucket(latency_p95_ms)) AS rn,
           count(*) OVER (PARTITION BY t) AS n
    FROM r WHERE latency_p95_ms IS NOT NULL
)
SELECT r.t, count(*), coalesce(sum(cost_usd), 0), coalesce(sum(tokens_in), 0),
       coalesce(sum(tokens_out), 0),
       round(sum(agents_successful) * 100::numeric / nullif(sum(agents_total), 0), 2),
       (SELECT apex_metrics_latency_bucket_upper(b) FROM ranked
        WHERE ranked.t = r.t AND rn = (95 * n + 99) / 100)
FROM r GROUP BY r.t ORDER BY r.t
"""

TILE_COLUMNS = (
    "runs", "cost_usd", "tokens_in", "tokens_out", "agents_total", "agents_successful",
    "assets_generated", "latency_avg_ms", "success_rate", "cost_per_asset",
    "cost_per_successful_agent",
)  # fmt: skip


def canon(value: Any) -> str | None:
    """Compare figures as normalized decimal strings (JSON carries decimals as strings)."""
    if value is None:
        return None
    return format(Decimal(str(value)).normalize(), "f")


def reference(
    url: str, start: datetime, end: datetime, campaign: str | None, phase: str | None
) -> dict[str, str | None]:
    args = {"start": start, "end": end, "campaign": campaign, "phase": phase}
    with psycopg.connect(url) as conn:
        row = conn.execute(REF_TOTALS, args).fetchone()
        p95 = conn.execute(REF_P95, args).fetchone()
    assert row is not None
    out = {key: canon(value) for key, value in zip(TILE_COLUMNS, row, strict=True)}
    out["latency_p95_ms"] = canon(p95[0]) if p95 else None
    return out


def reference_series(
    url: str, start: datetime, end: datetime, width: int, campaign: str | None, phase: str | None
) -> dict[datetime, dict[str, str | None]]:
    args = {"start": start, "end": end, "width": width, "campaign": campaign, "phase": phase}
    with psycopg.connect(url) as conn:
        rows = conn.execute(REF_SERIES, args).fetchall()
    keys = ("runs", "cost_usd", "tokens_in", "tokens_out", "success_rate", "latency_p95_ms")
    return {r[0]: {k: canon(v) for k, v in zip(keys, r[1:], strict=True)} for r in rows}


@pytest.fixture
def seeded_url(database_url: str) -> str:
    """Seeded, with the rollups refreshed (the panel's own refresher keeps them so)."""
    seed_runs(database_url)
    # in a thread of its own: a browser test's Playwright (or an async test) has a loop running
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(refresh_all(database_url))).result()
    return database_url


@contextlib.asynccontextmanager
async def panel_client(config: PanelConfig) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process (lifespan run by hand) behind an httpx client."""
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://panel.test") as c:
            yield c


@pytest.fixture
async def client(seeded_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with panel_client(PanelConfig(source="postgres", database_url=seeded_url)) as c:
        yield c


@dataclass
class Served:
    url: str
    port: int
    database_url: str
    server: uvicorn.Server
    thread: threading.Thread


def start_server(config: PanelConfig, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config), host="127.0.0.1", port=port, log_level="warning", ws="none",
            lifespan="on", timeout_graceful_shutdown=5,
        )
    )  # fmt: skip
    thread = threading.Thread(target=server.run, name=f"panel-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the panel did not start")
        time.sleep(0.05)
    return server, thread


def stop_server(server: uvicorn.Server, thread: threading.Thread) -> None:
    end_streams(server.config.app)  # what serve()'s signal handler does
    server.should_exit = True
    thread.join(timeout=15)
    assert not thread.is_alive(), "the panel did not stop"


@contextlib.contextmanager
def serve_panel(database_url: str, port: int | None = None) -> Iterator[Served]:
    port = port or free_port()
    config = PanelConfig(source="postgres", database_url=database_url, watch_interval=0.5)
    server, thread = start_server(config, port)
    try:
        yield Served(f"http://127.0.0.1:{port}", port, database_url, server, thread)
    finally:
        stop_server(server, thread)


@pytest.fixture
def served(seeded_url: str) -> Iterator[Served]:
    with serve_panel(seeded_url) as s:
        yield s


@pytest.fixture
def token_config(database_url: str) -> PanelConfig:
    return PanelConfig(source="postgres", database_url=database_url, token=SecretStr(TOKEN))


@pytest.fixture
def h() -> types.ModuleType:
    """This module: the helpers above (reference SQL, servers), for the test modules."""
    return sys.modules[__name__]
