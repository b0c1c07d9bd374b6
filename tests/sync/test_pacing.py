"""The engine against the emulator charging Dataverse's costs, with a window of a few seconds so
that the service protection limits bite inside a test.

Three engines, each with its own client (as three processes would be), deliver a backlog. With
their slots shared in PostgreSQL they hold the one budget: every row arrives once, and after the
first two windows no request is refused for execution time, while the web servers' execution
time in the window comes close to the budget (so the limit was really approached). The control:
the same three engines pacing alone (slots in memory) go over the budget and get 0x80072321.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import pytest

from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.emulator import CostModel, EmulatorConfig, ServiceLimits
from apex_metrics.sync.checks import insert_rows, verdict
from apex_metrics.sync.commands import engine_config

from .conftest import Stack, client_engine, sync_settings

pytestmark = pytest.mark.slow

WINDOW = 4.0
BUDGET = 16.0  # execution seconds per window per web server: 4 s a second, as Dataverse's
SHORT = ServiceLimits(
    window_seconds=WINDOW,
    requests_per_window=80,  # 20 a second, as Dataverse's 6,000 per 300 s
    execution_seconds_per_window=BUDGET,
    web_servers=2,
)
DEADLINE = 60.0  # seconds: the backlog takes about 15 at the ceiling
BATCH = 25  # rows per request: 30 + 25 × 8 = 230 ms, a small share of a server's budget


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(key_activation_delay_seconds=0, limits=SHORT, costs=CostModel())


def execution_429s(stats: dict[str, Any]) -> int:
    return sum(int(s["throttled"].get("0x80072321", 0)) for s in stats["web_servers"])


async def three_engines(stack: Stack, *, shared: bool) -> tuple[list[Any], int, float]:
    """Deliver the backlog with three engines; returns their stats, the execution-time 429s
    after the first two windows, and the highest share of the budget a server used in a
    window (sampled every 0.25 s)."""
    settings = sync_settings(stack.database_url, stack.emulator, sync_lease_seconds=20.0)
    config = engine_config(settings, workers=4, once=True, batch_size=BATCH)
    config = dataclasses.replace(config, shared_budget=shared)
    peak = 0.0
    late = 0
    async with contextlib.AsyncExitStack() as clients:
        engines = [
            client_engine(config, await clients.enter_async_context(open_dataverse(settings)))
            for _ in range(3)
        ]
        started = time.monotonic()
        runs = asyncio.gather(*(engine.run() for engine in engines))
        warm: int | None = None
        while not runs.done():
            await asyncio.wait([runs], timeout=0.25)
            stats = await stack.stats()
            used = min(s["execution_seconds_in_window"] for s in stats["web_servers"])
            elapsed = time.monotonic() - started
            if elapsed >= 2 * WINDOW:
                if warm is None:
                    warm = execution_429s(stats)
                peak = max(peak, used / BUDGET)
            if elapsed > DEADLINE and not runs.done():
                for engine in engines:
                    engine.request_stop()
                await runs
                raise AssertionError(
                    f"not drained in {DEADLINE:g} s; 429s for execution time: "
                    f"{execution_429s(stats)}"
                )
        results = await runs
        if warm is not None:
            late = execution_429s(await stack.stats()) - warm
    return results, late, peak


async def test_three_engines_share_one_budget_and_hold_it(stack: Stack) -> None:
    await insert_rows(stack.database_url, 12_000)
    results, late, peak = await three_engines(stack, shared=True)
    check = await verdict(stack.database_url, stack.client)
    assert (check.lost, check.duplicated, check.stale, check.extra) == (0, 0, 0, 0), check
    assert all(r.delivered > 0 for r in results), "each engine took its share"
    assert late == 0, f"{late} execution-time 429s after the first two windows"
    assert peak >= 0.75, f"the servers used at most {peak:.0%} of their budget in a window"


async def test_engines_pacing_alone_go_over_the_budget(stack: Stack) -> None:
    """The control: without the shared slots, three engines spend three budgets and Dataverse
    (the emulator) refuses them for execution time. Stopped then, they lose nothing: one engine
    drains the rest and every row is there once."""
    settings = sync_settings(stack.database_url, stack.emulator, sync_lease_seconds=20.0)
    await insert_rows(stack.database_url, 6_000)
    config = engine_config(settings, workers=4, once=False, batch_size=BATCH)
    alone = dataclasses.replace(config, shared_budget=False)
    async with contextlib.AsyncExitStack() as clients:
        engines = [
            client_engine(alone, await clients.enter_async_context(open_dataverse(settings)))
            for _ in range(3)
        ]
        runs = asyncio.gather(*(engine.run() for engine in engines))
        deadline = time.monotonic() + 60
        while not execution_429s(await stack.stats()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        refused = execution_429s(await stack.stats())
        for engine in engines:
            engine.request_stop()
        await asyncio.wait_for(runs, 60)
    drain = engine_config(settings, once=True, batch_size=BATCH)
    await asyncio.wait_for(client_engine(drain, stack.client).run(), 120)
    check = await verdict(stack.database_url, stack.client)
    assert refused > 0, "three engines pacing alone never went over the budget"
    assert (check.lost, check.duplicated, check.stale, check.extra) == (0, 0, 0, 0), check
