"""Authentication, security headers, the bind rule and bad query parameters."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from apex_metrics.exceptions import ConfigError
from apex_metrics.panel.app import PanelConfig
from apex_metrics.panel.security import COOKIE, check_bind

TOKEN = "test-panel-token-7f3a"


async def test_every_route_but_healthz_needs_the_token(h: Any, token_config: PanelConfig) -> None:
    async with h.panel_client(token_config) as client:
        assert (await client.get("/healthz")).status_code == 200
        for path in ("/api/kpis", "/api/series", "/api/campaigns", "/api/runs", "/api/sync",
                     "/api/runs.csv", "/api/options", "/api/events", "/openapi.json", "/docs",
                     "/static/panel.js", "/static/vendor/plotly.min.js", "/nope"):  # fmt: skip
            response = await client.get(path)
            assert response.status_code == 401, path
            assert "authentication required" in response.json()["error"]
        wrong = await client.get("/api/kpis", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await client.get("/api/kpis", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert ok.json()["tiles"][0]["key"] == "cost_usd"


async def test_login_sets_an_httponly_cookie_without_the_token(
    h: Any, token_config: PanelConfig
) -> None:
    async with h.panel_client(token_config) as client:
        page = await client.get("/?window=7d", headers={"Accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2F%3Fwindow%3D7d"
        form = await client.get("/login?next=/%3Fwindow%3D7d")
        assert form.status_code == 200 and 'name="token"' in form.text
        assert TOKEN not in form.text
        bad = await client.post("/login", data={"token": "guess", "next": "/"})
        assert bad.status_code == 401 and "Wrong token." in bad.text
        assert "set-cookie" not in bad.headers
        evil = await client.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert evil.headers["location"] == "/"
        good = await client.post("/login", data={"token": TOKEN, "next": "/?window=7d"})
        assert good.status_code == 303 and good.headers["location"] == "/?window=7d"
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert TOKEN not in cookie and len(good.cookies[COOKIE]) >= 40  # a random session id
        assert (await client.get("/api/kpis")).status_code == 200  # the cookie jar has it
        index = await client.get("/")
        assert index.status_code == 200 and TOKEN not in index.text
        assert (await client.post("/logout")).status_code == 303
        assert (await client.get("/api/kpis")).status_code == 401


async def test_security_headers_and_csp(h: Any, database_url: str) -> None:
    async with h.panel_client(PanelConfig(source="postgres", database_url=database_url)) as c:
        page = await c.get("/")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        script_src = next(p for p in csp.split(";") if p.strip().startswith("script-src"))
        assert script_src.strip() == "script-src 'self'"
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "<script>" not in page.text and " style=" not in page.text
        docs = await c.get("/docs")
        docs_src = next(
            p for p in docs.headers["content-security-policy"].split(";") if "script-src" in p
        )
        assert "unsafe-inline" not in docs_src and "'sha256-" in docs_src
        plotly = await c.get("/static/vendor/plotly.min.js")
        assert plotly.status_code == 200 and plotly.headers["content-type"].startswith(
            "text/javascript"
        )
        assert len(plotly.content) > 1_000_000
        assert (await c.get("/api/kpis")).headers["x-frame-options"] == "DENY"


def test_check_bind_refuses_non_loopback_without_token() -> None:
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    check_bind("0.0.0.0", SecretStr("x"))
    for host in ("0.0.0.0", "192.168.1.10", "::", "panel.example"):
        with pytest.raises(ConfigError, match="APEX_PANEL_TOKEN"):
            check_bind(host, None)
    with pytest.raises(ConfigError):
        check_bind("0.0.0.0", SecretStr(""))


def test_cli_refuses_non_loopback_without_token(database_url: str) -> None:
    exe = Path(sys.executable).with_name("apex-metrics")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env["APEX_DATABASE_URL"] = database_url
    done = subprocess.run(
        [str(exe), "panel", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 1
    assert "refusing to serve the panel on 0.0.0.0 without APEX_PANEL_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr
    env["APEX_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:5432/apex_panel_no_such_db"
    done = subprocess.run(
        [str(exe), "panel", "--source", "postgres", "--port", "1"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: PostgreSQL at ") and "has no database" in done.stderr
    assert "Traceback" not in done.stderr


BAD = [
    ("/api/kpis", {"window": "2h"}, "window"),
    ("/api/kpis", {"window": "custom"}, "from"),
    ("/api/kpis", {"window": "custom", "from": "2026-01-01T00:00Z"}, "to"),
    ("/api/kpis", {"window": "custom", "from": "yesterday", "to": "2026-01-01T00:00Z"}, "from"),
    ("/api/kpis", {"window": "custom", "from": "2026-01-02T00:00Z", "to": "2026-01-01T00:00Z"},
     "to"),
    ("/api/kpis", {"window": "custom", "from": "2020-01-01T00:00Z", "to": "2026-01-01T00:00Z"},
     "to"),
    ("/api/kpis", {"window": "24h", "from": "2026-01-01T00:00Z"}, "from"),
    ("/api/series", {"campaign": "x" * 65}, "campaign"),
    ("/api/series", {"phase": "p" * 17}, "phase"),
    ("/api/campaigns", {"campaign": "bad\u0001"}, "campaign"),
    ("/api/campaigns", {"limit": "0"}, "limit"),
    ("/api/runs", {"limit": "1001"}, "limit"),
    ("/api/runs", {"limit": "-5"}, "limit"),
    ("/api/runs", {"limit": "ten"}, "limit"),
    ("/api/runs", {"limit": "\u00b2"}, "limit"),
    ("/api/campaigns", {"limit": "9" * 5000}, "limit"),
    ("/api/runs.csv", {"limit": "2000000"}, "limit"),
    ("/api/kpis", {"limit": "5"}, "limit"),
    ("/api/sync", {"window": "24h"}, "window"),
    ("/api/kpis", {"campaign_id": "x"}, "campaign_id"),
]  # fmt: skip


async def test_bad_parameters_get_400_naming_the_parameter(h: Any, database_url: str) -> None:
    async with h.panel_client(PanelConfig(source="postgres", database_url=database_url)) as c:
        for path, params, name in BAD:
            response = await c.get(path, params=params)
            assert response.status_code == 400, (path, params, response.text)
            body = response.json()
            assert body["parameter"] == name, (path, params, body)
            assert body["error"].startswith(f"{name}: "), body
        ok = await c.get("/api/kpis", params={"window": "custom",
            "from": "2026-01-01T00:00:00+01:00", "to": "2026-01-01T12:00:00Z"})  # fmt: skip
        assert ok.status_code == 200
        assert ok.json()["window"]["start"] == "2025-12-31T23:00:00+00:00"


@pytest.mark.parametrize("drop", ["DROP VIEW v_sync_health", "DROP TABLE sync_runs"])
async def test_sync_health_degrades_without_the_sync_engine(
    h: Any, database_url: str, drop: str
) -> None:
    """A database without the sync health view (before migration 0011) or the run history:
    no figures at all (no second definition of them), and the command that adds them."""
    with psycopg.connect(database_url) as conn:
        conn.execute(drop)
        conn.execute(h.INSERT, h.random_run(random.Random(1), datetime.now(UTC), "pending-1"))
    async with h.panel_client(PanelConfig(source="postgres", database_url=database_url)) as c:
        body = (await c.get("/api/sync")).json()
    assert body["sync_engine"] is False
    assert body["message"] == "sync engine not installed: run `apex-metrics db migrate`"
    figures = ("pending", "in_flight", "dead", "retrying", "lag_seconds")
    assert all(body[k] is None for k in figures) and body["runs"] == []
    assert body["last_run_at"] is not None
