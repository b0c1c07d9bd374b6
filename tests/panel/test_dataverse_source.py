"""The Dataverse source: the same rows loaded into the emulator give the same figures as SQL.

The emulator's aggregate limit is lowered to 400 records so that every long window exercises
the split-and-combine path of the 50,000-record rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest

from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.flow import Flow
from apex_metrics.dataverse.provision import provision
from apex_metrics.dataverse.retry import RetryPolicy
from apex_metrics.emulator import CostModel, EmulatorConfig, create_app
from apex_metrics.metric import ALTERNATE_KEY_COLUMN, ENTITY_SET, FIELD_NAMES, Metric
from apex_metrics.panel.app import PanelConfig
from apex_metrics.settings import Settings

FILTERS: list[dict[str, str]] = [
    {},
    {"campaign": "o'brien test"},
    {"phase": "2-3"},
    {"campaign": "q4-retention", "phase": "1"},
]
FAST_RETRY = RetryPolicy(base_wait=0.01, max_wait=0.05)


def settings() -> Settings:
    return Settings(_env_file=None, dataverse_url="http://127.0.0.1:8765")  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def loaded_emulator(database_url: str) -> AsyncIterator[dict[str, Any]]:
    """An in-process emulator holding exactly the rows of ``database_url``."""
    emulator = create_app(
        EmulatorConfig(
            costs=CostModel.free(), key_activation_delay_seconds=0.05, max_aggregate_records=400
        )
    )
    options: dict[str, Any] = {
        "transport": httpx.ASGITransport(app=emulator),
        "flow": Flow(retry=FAST_RETRY),
    }
    async with open_dataverse(settings(), **options) as client:
        await provision(client, poll_interval=0.05, key_timeout=30)
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(f"SELECT {', '.join(FIELD_NAMES)} FROM campaign_metrics").fetchall()
        items = []
        for row in rows:
            metric = Metric(**dict(zip(FIELD_NAMES, row, strict=True)))
            items.append((metric.run_id, metric.to_dataverse()))
        outcomes = await client.upsert_many(ENTITY_SET, ALTERNATE_KEY_COLUMN, items)
        assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]
    yield options


@pytest.fixture
async def dv_client(h: Any, seeded_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with loaded_emulator(seeded_url) as options:
        config = PanelConfig(
            source="dataverse",
            database_url=seeded_url,
            settings=settings(),
            dataverse_options=options,
        )
        async with h.panel_client(config) as client:
            yield client


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def windows(h: Any) -> list[dict[str, str]]:
    from datetime import UTC, timedelta

    now = datetime.now(UTC)
    custom = {
        "window": "custom",
        "from": (now - timedelta(hours=50, minutes=-17, seconds=11, microseconds=5)).isoformat(),
        "to": (now - timedelta(hours=3, minutes=-5, microseconds=300)).isoformat(),
    }
    return [{"window": w} for w in ("1h", "24h", "7d", "30d")] + [custom]


async def test_dataverse_kpis_equal_sql(
    h: Any, dv_client: httpx.AsyncClient, seeded_url: str
) -> None:
    checked = 0
    for window in windows(h):
        for filters in FILTERS:
            params = {**window, **filters}
            body = (await dv_client.get("/api/kpis", params=params)).json()
            assert body["source"] == "dataverse"
            start, end = _when(body["window"]["start"]), _when(body["window"]["end"])
            want = h.reference(seeded_url, start, end, params.get("campaign"), params.get("phase"))
            before = h.reference(seeded_url, _when(body["previous"]["start"]), start,
                                 params.get("campaign"), params.get("phase"))  # fmt: skip
            tiles = {t["key"]: t for t in body["tiles"]}
            for key, expected in want.items():
                assert h.canon(tiles[key]["value"]) == expected, (params, key)
                assert h.canon(tiles[key]["previous"]) == before[key], (params, key)
            checked += int(want["runs"] or 0)
    assert checked > 1000


async def test_dataverse_series_campaigns_and_runs_equal_sql(
    h: Any, dv_client: httpx.AsyncClient, seeded_url: str
) -> None:
    keys = ("runs", "cost_usd", "tokens_in", "tokens_out", "success_rate", "latency_p95_ms")
    for window in ({"window": "24h"}, {"window": "7d", "phase": "1"}):
        body = (await dv_client.get("/api/series", params=window)).json()
        start, end = _when(body["window"]["start"]), _when(body["window"]["end"])
        ref = h.reference_series(seeded_url, start, end, body["bucket_seconds"], None,
                                 window.get("phase"))  # fmt: skip
        assert ref
        for point in body["points"]:
            want = ref.get(_when(point["t"]))
            if want is None:
                assert point["runs"] == 0
                continue
            for key in keys:
                assert h.canon(point[key]) == want[key], (window, point["t"], key)

    body = (await dv_client.get("/api/campaigns", params={"window": "30d"})).json()
    start, end = _when(body["window"]["start"]), _when(body["window"]["end"])
    assert body["campaigns"]
    for row in body["campaigns"]:
        want = h.reference(seeded_url, start, end, row["campaign_id"], None)
        for key in ("runs", "cost_usd", "success_rate", "latency_avg_ms", "cost_per_asset",
                    "latency_p95_ms"):  # fmt: skip
            assert h.canon(row[key]) == want[key], (row["campaign_id"], key)

    params = {"window": "24h", "campaign": "spring-launch", "limit": "30"}
    body = (await dv_client.get("/api/runs", params=params)).json()
    start, end = _when(body["window"]["start"]), _when(body["window"]["end"])
    with psycopg.connect(seeded_url) as conn:
        want_runs = [r[0] for r in conn.execute(
            "SELECT run_id FROM campaign_metrics WHERE campaign_id = 'spring-launch'"
            " AND created_at >= %s AND created_at < %s ORDER BY created_at DESC, run_id DESC"
            " LIMIT 30", (start, end))]  # fmt: skip
    assert [r["run_id"] for r in body["runs"]] == want_runs and want_runs
    sync = (await dv_client.get("/api/sync")).json()
    assert sync["source"] == "dataverse" and sync["sync_engine"] is True
    assert sync["last_run_at"] is not None
    assert isinstance(sync["lag_seconds"], float)  # 0.0 when nothing waits, never null
