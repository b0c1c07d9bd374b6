"""How the page looks in Chromium: no overflow at 420 and 1400 px, tables scrolling inside their
cards, one time axis for the four charts, a text alternative for each, dark mode, and the page
working under a reverse proxy's root path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from apex_metrics.panel.app import PanelConfig

from .conftest import Served, serve_panel, start_server, stop_server
from .test_browser import CHROMIUM_ARGS, WAIT_MS

pytestmark = pytest.mark.browser

OVERFLOW = """() => {
  const out = [];
  const page = document.documentElement;
  const wide = (e) => e.scrollWidth > e.clientWidth + 1;
  if (wide(page)) out.push(`page ${page.scrollWidth} > ${page.clientWidth}`);
  const header = document.querySelector("header.bar");
  if (wide(header)) out.push(`header ${header.scrollWidth} > ${header.clientWidth}`);
  for (const card of document.querySelectorAll(".panel, figure, .tile")) {
    const name = card.className || card.tagName;
    const box = card.getBoundingClientRect();
    if (box.right > page.clientWidth + 0.5) out.push(`card ${name} ends at ${box.right}`);
    if (wide(card)) out.push(`card ${name} overflows`);
  }
  for (const value of document.querySelectorAll(".tile .value")) {
    if (wide(value)) out.push(`tile value ${value.textContent} spills`);
  }
  return out;
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def seeded_served(h: Any, database_url: str) -> Iterator[Served]:
    h.seed_runs(database_url)  # the panel's own refresher folds the rollups
    with serve_panel(database_url) as served:
        yield served


def open_page(browser: Browser, url: str, width: int, scheme: str = "light") -> Page:
    context = browser.new_context(
        viewport={"width": width, "height": 900},
        color_scheme=scheme,  # type: ignore[arg-type]
    )
    tab = context.new_page()
    tab.goto(url)
    tab.wait_for_function("() => Number(document.body.dataset.refreshes) > 0", timeout=WAIT_MS)
    tab.wait_for_function(
        "() => document.getElementById('chart-success').data !== undefined", timeout=WAIT_MS
    )
    return tab


@pytest.mark.parametrize("width", [420, 1400])
def test_nothing_overflows_and_wide_tables_scroll_in_their_cards(
    browser: Browser, seeded_served: Served, width: int
) -> None:
    tab = open_page(browser, seeded_served.url + "/?window=30d", width)
    try:
        assert tab.evaluate(OVERFLOW) == []
        # The runs table is wider than its card at both widths: it scrolls inside the card.
        scrolls = tab.evaluate(
            """() => [...document.querySelectorAll('.panel .scroll')].map(
                 (s) => [s.querySelector('table').id, s.scrollWidth > s.clientWidth,
                         getComputedStyle(s).overflowX])"""
        )
        assert all(overflow == "auto" for _, _, overflow in scrolls)
        if width == 420:
            assert ["runs", True, "auto"] in scrolls
        header = tab.evaluate(
            "() => { const h = document.querySelector('header.bar').getBoundingClientRect();"
            " return [h.width, document.documentElement.clientWidth]; }"
        )
        assert header[0] <= header[1]
    finally:
        tab.context.close()


def test_charts_share_one_time_axis_and_have_a_text_alternative(
    browser: Browser, seeded_served: Served
) -> None:
    tab = open_page(browser, seeded_served.url + "/?window=7d", 1400)
    try:
        ranges = tab.evaluate(
            """() => ['cost', 'tokens', 'p95', 'success'].map((id) => {
                 const gd = document.getElementById('chart-' + id);
                 return gd._fullLayout.xaxis.range.map((t) => new Date(t).getTime()); })"""
        )
        assert all(r == ranges[0] for r in ranges), ranges
        start, end = tab.evaluate(
            "() => [document.body.dataset.windowStart, document.body.dataset.windowEnd]"
            ".map((t) => Date.parse(t))"
        )
        assert abs(ranges[0][0] - start) < 1000 and abs(ranges[0][1] - end) < 1000
        lefts = tab.evaluate(
            """() => ['cost', 'tokens', 'p95', 'success'].map(
                 (id) => document.getElementById('chart-' + id)._fullLayout._size.l)"""
        )
        assert len(set(lefts)) == 1, lefts  # the plot areas line up
        points = int(tab.evaluate("() => document.body.dataset.chartPoints"))
        for chart in ("cost", "tokens", "p95", "success"):
            label = tab.get_attribute(f"#chart-{chart}", "aria-label") or ""
            assert tab.get_attribute(f"#chart-{chart}", "role") == "img"
            assert f"{points} buckets" in label and "highest" in label, label
            rows = tab.locator(f"#data-{chart} tbody tr").count()
            assert rows == points
            assert (
                tab.evaluate(
                    f"() => document.getElementById('data-{chart}').parentElement"
                    ".getBoundingClientRect().width"
                )
                <= 1
            )  # visually hidden, read by screen readers
    finally:
        tab.context.close()


def test_dark_mode_follows_prefers_color_scheme(browser: Browser, seeded_served: Served) -> None:
    light = open_page(browser, seeded_served.url + "/", 1000, "light")
    dark = open_page(browser, seeded_served.url + "/", 1000, "dark")
    try:
        background = "() => getComputedStyle(document.body).backgroundColor"
        assert light.evaluate(background) == "rgb(244, 245, 247)"
        assert dark.evaluate(background) == "rgb(18, 21, 27)"
        tick = "() => document.getElementById('chart-cost')._fullLayout.font.color"
        assert light.evaluate(tick) != dark.evaluate(tick)  # the charts follow too
        assert dark.evaluate(OVERFLOW) == []
    finally:
        light.context.close()
        dark.context.close()


def test_page_works_under_a_root_path(browser: Browser, h: Any, database_url: str) -> None:
    """As behind a proxy that passes the prefix on: every request of the page stays under it."""
    h.seed_runs(database_url)
    from apex_metrics.testing import free_port

    port = free_port()
    config = PanelConfig(
        source="postgres", database_url=database_url, root_path="/metrics-panel",
        watch_interval=0.5,
    )  # fmt: skip
    server, thread = start_server(config, port)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    try:
        tab = context.new_page()
        tab.on("request", lambda r: requests.append(r.url))
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(f"http://127.0.0.1:{port}/metrics-panel")  # the bare prefix redirects
        tab.wait_for_function("() => Number(document.body.dataset.refreshes) > 0", timeout=WAIT_MS)
        assert tab.url == f"http://127.0.0.1:{port}/metrics-panel/"
        assert tab.get_attribute('[data-tile="runs"]', "data-value") not in (None, "", "0")
        assert tab.locator("#status").get_attribute("data-state") == "live"
        assert not errors, errors
        base = f"http://127.0.0.1:{port}/metrics-panel"
        assert requests and all(url.startswith(base) for url in requests), requests
    finally:
        context.close()
        stop_server(server, thread)
