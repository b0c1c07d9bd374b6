"""The page in Debian's Chromium (Playwright) against the panel served by uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
WAIT_MS = 15_000

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            errors.append(f"{message.type}: {message.text}")

    tab.on("console", on_console)
    tab.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    try:
        yield tab, errors
    finally:
        context.close()


def refreshes(tab: Page) -> int:
    return int(tab.evaluate("() => Number(document.body.dataset.refreshes)"))


def wait_refresh(tab: Page, after: int) -> None:
    tab.wait_for_function("(n) => Number(document.body.dataset.refreshes) > n", arg=after,
                          timeout=WAIT_MS)  # fmt: skip


def tile(tab: Page, key: str) -> str:
    return str(tab.get_attribute(f'[data-tile="{key}"]', "data-value"))


def shown_window(tab: Page) -> tuple[datetime, datetime]:
    start = tab.evaluate("() => document.body.dataset.windowStart")
    end = tab.evaluate("() => document.body.dataset.windowEnd")
    return datetime.fromisoformat(start), datetime.fromisoformat(end)


def check_tiles(h: Any, tab: Page, url: str, campaign: str | None, phase: str | None) -> None:
    start, end = shown_window(tab)
    want = h.reference(url, start, end, campaign, phase)
    for key in ("runs", "cost_usd", "tokens_in", "success_rate", "latency_p95_ms",
                "cost_per_asset", "cost_per_successful_agent"):  # fmt: skip
        assert h.canon(tile(tab, key) or None) == want[key], key
    # What the chart draws adds up to the tile.
    drawn = tab.evaluate(
        "() => document.getElementById('chart-cost').data[0].y.reduce((a, b) => a + (b || 0), 0)"
    )
    assert abs(Decimal(str(drawn)) - Decimal(want["cost_usd"] or 0)) < Decimal("0.01")
    runs = tab.text_content('[data-tile="runs"] .value')
    assert runs == f"{int(want['runs'] or 0):,}"


def test_page_shows_kpis_and_filters_update_tiles_charts_and_url(
    h: Any, served: Any, page: tuple[Page, list[str]]
) -> None:
    tab, errors = page
    tab.goto(f"{served.url}/?window=7d")
    wait_refresh(tab, 0)
    check_tiles(h, tab, served.database_url, None, None)
    assert tab.text_content("#source") == "source: postgres"

    before = refreshes(tab)
    tab.select_option("#f-campaign", "q4-retention")
    wait_refresh(tab, before)
    assert "campaign=q4-retention" in tab.url and "window=7d" in tab.url
    check_tiles(h, tab, served.database_url, "q4-retention", None)

    before = refreshes(tab)
    tab.select_option("#f-phase", "2-3")
    wait_refresh(tab, before)
    assert "phase=2-3" in tab.url
    check_tiles(h, tab, served.database_url, "q4-retention", "2-3")

    before = refreshes(tab)
    tab.select_option("#f-window", "custom")
    tab.fill("#f-from", "2026-01-01T00:00")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M")
    tab.fill("#f-to", now)
    tab.click("#f-apply")
    wait_refresh(tab, before)
    assert "window=custom" in tab.url and "from=2026-01-01T00%3A00%3A00Z" in tab.url
    start, _end = shown_window(tab)
    assert start == datetime(2026, 1, 1, tzinfo=UTC)
    check_tiles(h, tab, served.database_url, "q4-retention", "2-3")

    before = refreshes(tab)
    tab.go_back()
    wait_refresh(tab, before)
    assert "window=7d" in tab.url and tab.input_value("#f-window") == "7d"
    check_tiles(h, tab, served.database_url, "q4-retention", "2-3")
    assert int(tab.evaluate("() => document.body.dataset.chartPoints")) > 100

    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / "panel.png"), full_page=True)
    assert (ARTIFACTS / "panel.png").stat().st_size > 10_000
    assert errors == []


def insert_run(h: Any, url: str, run_id: str) -> None:
    import random

    row = list(h.random_run(random.Random(run_id), datetime.now(UTC), run_id))
    row[0] = "live-campaign"
    with psycopg.connect(url) as conn:
        conn.execute(h.INSERT, row)


def test_a_new_run_appears_live_within_2_seconds(
    h: Any, served: Any, page: tuple[Page, list[str]]
) -> None:
    tab, errors = page
    tab.goto(f"{served.url}/?window=1h")
    wait_refresh(tab, 0)
    tab.wait_for_selector('#status[data-state="live"]', timeout=WAIT_MS)
    runs_before = int(tile(tab, "runs"))
    insert_run(h, served.database_url, "live-run-1")
    # The requirement: on the page within 2 s of the commit, without a reload.
    tab.wait_for_selector('#runs tr[data-run="live-run-1"]', timeout=2_000)
    assert int(tile(tab, "runs")) == runs_before + 1
    assert "s ago" in str(tab.text_content("#last-run"))
    assert errors == []


def test_the_page_reconnects_after_a_server_restart(
    h: Any, seeded_url: str, page: tuple[Page, list[str]]
) -> None:
    tab, errors = page
    port = h.free_port()
    with h.serve_panel(seeded_url, port) as first:
        tab.goto(f"{first.url}/?window=24h")
        wait_refresh(tab, 0)
        tab.wait_for_selector('#status[data-state="live"]', timeout=WAIT_MS)
    tab.wait_for_selector('#status[data-state="reconnecting"]', timeout=WAIT_MS)
    with h.serve_panel(seeded_url, port):
        tab.wait_for_selector('#status[data-state="live"]', timeout=WAIT_MS)
        insert_run(h, seeded_url, "after-restart")
        tab.wait_for_selector('#runs tr[data-run="after-restart"]', timeout=WAIT_MS)
    # Only the lost connection itself may be reported while the server was down.
    assert all("ERR_CONNECTION_REFUSED" in e or "/api/" in e for e in errors), errors


def test_dataverse_source_shows_synced_runs_live(
    h: Any, seeded_url: str, page: tuple[Page, list[str]]
) -> None:
    """PostgreSQL → sync engine → emulator (HTTP) → panel (source dataverse) → browser."""
    import asyncio
    import concurrent.futures

    from apex_metrics.dataverse.connect import open_dataverse
    from apex_metrics.dataverse.provision import provision
    from apex_metrics.emulator import CostModel, EmulatorConfig
    from apex_metrics.panel.app import PanelConfig
    from apex_metrics.settings import Settings
    from apex_metrics.sync.commands import engine_config, run_sync
    from apex_metrics.testing import running_emulator

    tab, errors = page
    with running_emulator(
        EmulatorConfig(costs=CostModel.free(), key_activation_delay_seconds=0.05)
    ) as emulator:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, database_url=seeded_url, dataverse_url=emulator.url
        )

        def in_thread(coro: Any) -> Any:
            # Playwright's sync API keeps an event loop running in this thread.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                return pool.submit(asyncio.run, coro).result(timeout=60)

        async def prepare() -> None:
            async with open_dataverse(settings) as client:
                await provision(client, poll_interval=0.05, key_timeout=30)

        def sync_once() -> None:
            config = engine_config(settings, workers=1, once=True, poll_interval=0.2)
            in_thread(run_sync(settings, config, handle_signals=False))

        in_thread(prepare())
        sync_once()
        config = PanelConfig(source="dataverse", database_url=seeded_url, settings=settings,
                             watch_interval=0.5)  # fmt: skip
        port = h.free_port()
        server, thread = h.start_server(config, port)
        try:
            tab.goto(f"http://127.0.0.1:{port}/?window=24h")
            wait_refresh(tab, 0)
            tab.wait_for_selector('#status[data-state="live"]', timeout=WAIT_MS)
            assert tab.text_content("#source") == "source: dataverse"
            check_tiles(h, tab, seeded_url, None, None)
            assert tab.text_content("#sync-dead") == "0"
            assert tab.text_content("#sync-retrying") == "0"
            assert tab.text_content("#sync-runs tbody tr:first-child td:last-child") == "ok"

            insert_run(h, seeded_url, "synced-live-run")
            sync_once()
            # Synced: on the page within 2 s, without a reload.
            tab.wait_for_selector('#runs tr[data-run="synced-live-run"]', timeout=2_000)
        finally:
            h.stop_server(server, thread)
    assert errors == []


def test_login_then_live_page_with_a_token(
    h: Any, seeded_url: str, page: tuple[Page, list[str]]
) -> None:
    from pydantic import SecretStr

    from apex_metrics.panel.app import PanelConfig

    tab, errors = page
    config = PanelConfig(source="postgres", database_url=seeded_url, token=SecretStr(h.TOKEN),
                         watch_interval=0.5)  # fmt: skip
    port = h.free_port()
    server, thread = h.start_server(config, port)
    try:
        tab.goto(f"http://127.0.0.1:{port}/?window=24h")
        assert "/login?next=" in tab.url
        tab.fill('input[name="token"]', "wrong")
        tab.click('button[type="submit"]')
        assert tab.text_content(".error") == "Wrong token."
        tab.fill('input[name="token"]', h.TOKEN)
        tab.click('button[type="submit"]')
        tab.wait_for_url(f"http://127.0.0.1:{port}/?window=24h", timeout=WAIT_MS)
        wait_refresh(tab, 0)
        tab.wait_for_selector('#status[data-state="live"]', timeout=WAIT_MS)
        check_tiles(h, tab, seeded_url, None, None)
        cookies = tab.context.cookies()
        assert [c["httpOnly"] for c in cookies] == [True]
        assert all(h.TOKEN not in c["value"] for c in cookies)
        assert h.TOKEN not in tab.content()
        insert_run(h, seeded_url, "after-login")
        tab.wait_for_selector('#runs tr[data-run="after-login"]', timeout=2_000)
    finally:
        h.stop_server(server, thread)
    # The wrong token's 401 answer is the only console error.
    assert all("401" in e for e in errors), errors
