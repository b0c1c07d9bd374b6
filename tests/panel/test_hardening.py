"""Issue 18 hardening of the panel: the token gate, sign-in, Host names, CSV cells, limits."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from apex_metrics.loopback import loopback_host
from apex_metrics.panel.app import PanelConfig
from apex_metrics.panel.login import FAILED_LIMIT, MAX_FORM_BYTES, safe_next
from apex_metrics.panel.security import COOKIE, check_bind

TOKEN = "test-panel-token-7f3a"


async def _login(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.post("/login", data={"token": TOKEN, "next": "/"}, headers=headers)


async def test_only_the_whole_token_or_a_live_session_opens_the_panel(
    h: Any, token_config: PanelConfig
) -> None:
    async with h.panel_client(token_config) as client:
        for bearer in ("", " ", TOKEN[:-1], TOKEN[:1], TOKEN[1:], TOKEN + "x", f"x{TOKEN}"):
            answer = await client.get("/api/kpis", headers={"Authorization": f"Bearer {bearer}"})
            assert answer.status_code == 401, repr(bearer)
        for cookie in ("x", "0" * 64, TOKEN, "forged-session-id-that-was-never-issued"):
            client.cookies.set(COOKIE, cookie)
            assert (await client.get("/api/kpis")).status_code == 401, cookie
        client.cookies.clear()
        ok = await client.get("/api/kpis", headers={"Authorization": f"bearer {TOKEN}"})
        assert ok.status_code == 200


async def test_each_sign_in_gets_a_new_session_and_logout_ends_it(
    h: Any, token_config: PanelConfig
) -> None:
    async with h.panel_client(token_config) as client:
        first = (await _login(client)).cookies[COOKIE]
        client.cookies.clear()
        second = (await _login(client)).cookies[COOKIE]
        assert first != second and TOKEN not in first + second
        client.cookies.clear()
        for cookie in (first, second):
            client.cookies.set(COOKIE, cookie)
            assert (await client.get("/api/kpis")).status_code == 200
            client.cookies.clear()
        client.cookies.set(COOKIE, second)
        assert (await client.post("/logout")).status_code == 303
        client.cookies.clear()
        client.cookies.set(COOKIE, second)  # kept by the attacker: no longer a session
        assert (await client.get("/api/kpis")).status_code == 401
        client.cookies.set(COOKIE, first)
        assert (await client.get("/api/kpis")).status_code == 200


NEXT_CASES = [
    ("/\t/evil.example/", "/"),
    ("/\n/evil.example/", "/"),
    ("/\r\n/evil.example/", "/"),
    ("/ \t/evil.example/", "/"),
    ("/\\evil.example/", "/"),
    ("//evil.example/", "/"),
    ("https://evil.example/", "/"),
    ("javascript:alert(1)", "/"),
    ("/\x00x", "/"),
    ("/\x85/evil.example", "/"),
    ("/?window=7d", "/?window=7d"),
    ("/?campaign=o%27brien+test", "/?campaign=o%27brien+test"),
    ("/caf\u00e9?x=\u20ac", "/caf%C3%A9?x=%E2%82%AC"),
]


@pytest.mark.parametrize(("value", "expected"), NEXT_CASES)
def test_next_is_a_same_origin_path_or_slash(value: str, expected: str) -> None:
    assert safe_next(value) == expected


async def test_login_redirects_only_on_site_and_never_fails_on_next(
    h: Any, token_config: PanelConfig
) -> None:
    async with h.panel_client(token_config) as client:
        for value, expected in NEXT_CASES:
            answer = await client.post("/login", data={"token": TOKEN, "next": value})
            assert answer.status_code == 303, (value, answer.text)
            assert answer.headers["location"] == expected, value
            page = await client.get("/login", params={"next": value})
            assert page.status_code == 200
            assert f'name="next" value="{expected}"' in page.text.replace("&#x27;", "'")


async def test_login_body_is_capped_and_form_fields_limited(
    h: Any, token_config: PanelConfig
) -> None:
    async with h.panel_client(token_config) as client:
        big = await client.post("/login", content=b"token=" + b"x" * MAX_FORM_BYTES)
        assert big.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read, then cut off
            yield b"token="
            for _ in range(1000):
                yield b"x" * 1024

        chunked = await client.post(
            "/login",
            content=chunks(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert chunked.status_code == 413 and "Content-Length" not in chunked.request.headers
        fields = "&".join(f"f{i}=1" for i in range(6))
        many = await client.post(
            "/login",
            content=f"token={TOKEN}&{fields}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert many.status_code == 400 and "5 fields" in many.text
        assert "set-cookie" not in many.headers
        assert (await _login(client)).status_code == 303


async def test_failed_logins_are_rate_limited_per_client_address(
    h: Any, token_config: PanelConfig
) -> None:
    async with h.panel_client(token_config) as client:
        for _ in range(FAILED_LIMIT):
            wrong = await client.post("/login", data={"token": "guess", "next": "/"})
            assert wrong.status_code == 401
        limited = await _login(client)  # even the right token: the limit does not leak it
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 300
        assert "set-cookie" not in limited.headers
        app = client._transport.app  # type: ignore[attr-defined]
        other = httpx.ASGITransport(app=app, client=("203.0.113.9", 4000))
        async with httpx.AsyncClient(transport=other, base_url="http://panel.test") as elsewhere:
            assert (await _login(elsewhere)).status_code == 303


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/form"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://panel.test"},
    ],
)
async def test_cross_site_sign_in_is_refused(
    h: Any, token_config: PanelConfig, headers: dict[str, str]
) -> None:
    async with h.panel_client(token_config) as client:
        answer = await _login(client, **headers)
        assert answer.status_code == 403 and "set-cookie" not in answer.headers


async def test_same_origin_sign_in_is_accepted(h: Any, token_config: PanelConfig) -> None:
    async with h.panel_client(token_config) as client:
        for headers in (
            {"Sec-Fetch-Site": "same-origin", "Origin": "https://proxy.example"},
            {"Origin": "http://panel.test"},
            {"Referer": "http://panel.test/login?next=/"},
            {},
        ):
            assert (await _login(client, **headers)).status_code == 303, headers


def test_short_token_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="apex_metrics.panel.security"):
        check_bind("127.0.0.1", SecretStr(TOKEN))
        assert not caplog.records
        check_bind("0.0.0.0", SecretStr("hunter2"))
    assert len(caplog.records) == 1
    assert "APEX_PANEL_TOKEN has 7 characters" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("localhost", True), ("localhost:8000", True), ("127.0.0.1", True),
        ("127.0.0.1:8000", True), ("[::1]", True), ("[::1]:8000", True), ("LOCALHOST:1", True),
        ("evil.example", False), ("evil.example:8000", False), ("127.0.0.1.evil.example", False),
        ("localhost.evil.example", False), ("127.0.0.2", False), ("[::1]x", False),
        ("localhost:80x", False), ("", False), ("[::1", False),
    ],
)  # fmt: skip
def test_loopback_host_names(host: str, ok: bool) -> None:
    assert loopback_host(host) is ok


async def test_loopback_panel_refuses_other_host_names(h: Any, database_url: str) -> None:
    """DNS rebinding: the request arrives on 127.0.0.1 but names evil.example."""
    app = h.create_app(PanelConfig(source="postgres", database_url=database_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
            assert (await c.get("/healthz")).status_code == 200
            for host in ("localhost:8000", "[::1]:8000"):
                assert (await c.get("/healthz", headers={"Host": host})).status_code == 200
            for host in ("evil.example", "evil.example:8000", "127.0.0.1.nip.io:8000"):
                answer = await c.get("/api/kpis", headers={"Host": host})
                assert answer.status_code == 421, host
                assert "DNS rebinding" in answer.json()["error"]


def test_served_panel_refuses_other_host_names(served: Any) -> None:
    assert httpx.get(f"{served.url}/healthz", timeout=10).status_code == 200
    refused = httpx.get(f"{served.url}/healthz", headers={"Host": "evil.example"}, timeout=10)
    assert refused.status_code == 421


async def test_limit_with_non_ascii_or_huge_digits_is_a_400(h: Any, database_url: str) -> None:
    async with h.panel_client(PanelConfig(source="postgres", database_url=database_url)) as c:
        for value in ("\u00b2", "1\u00b2", "\u0661\u0662", "\uff15", "9" * 5000, "0" * 50 + "5"):
            answer = await c.get("/api/runs", params={"limit": value})
            if value.startswith("0"):
                assert answer.status_code == 200  # zeros in front: still 5
                continue
            assert answer.status_code == 400, value
            assert answer.json()["parameter"] == "limit"


NASTY = {
    "r-eq": ('=HYPERLINK("http://evil.example")', '\'=HYPERLINK("http://evil.example")'),
    "r-plus": ("+1+2", "'+1+2"),
    "r-minus": ("-2+3", "'-2+3"),
    "r-at": ("@SUM(A1)", "'@SUM(A1)"),
    "r-tab": ("\t=1", "'\t=1"),
    "r-cr": ("\r=1", "'\r=1"),
    "r-mid-cr": ("a\rb", "a\rb"),
    "r-plain": ("spring", "spring"),
}


async def test_csv_export_makes_formulas_inert_and_quotes_bare_cr(
    h: Any, database_url: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with psycopg.connect(database_url) as conn:
        for run_id, (campaign, _) in NASTY.items():
            conn.execute(
                h.INSERT,
                (campaign, run_id, "-p", 1, 1, 0, 1, 1, 0, 10, 10, 100, now),
            )
    async with h.panel_client(PanelConfig(source="postgres", database_url=database_url)) as c:
        answer = await c.get("/api/runs.csv", params={"window": "1h"})
    assert answer.status_code == 200
    text = answer.text
    assert '"a\rb"' in text and '"\'\r=1"' in text  # a bare CR is always inside quotes
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == len(NASTY)
    for row in rows:
        assert row["campaign_id"] == NASTY[row["run_id"]][1], row
        assert row["phase"] == "'-p"
        assert row["cost_usd"] == "0.00000"
