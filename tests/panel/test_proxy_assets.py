"""Behind a TLS reverse proxy (root path, forwarded headers, Secure cookie, unbuffered SSE) and
the static assets (content-hashed URLs, immutable caching, ETag, gzip)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import SecretStr

from apex_metrics.panel.app import PanelConfig, create_app
from apex_metrics.panel.proxy import normalize_root_path

PREFIX = "/metrics-panel"
HTTPS = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Host": "metrics.example.org",
    "Sec-Fetch-Site": "same-origin",
    "Origin": "https://metrics.example.org",
}


@contextlib.asynccontextmanager
async def client_for(
    config: PanelConfig, client_ip: str = "127.0.0.1"
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
        # As nginx / Caddy reach it with the examples of deploy/: Host is the upstream's.
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
            yield c, app


def test_root_path_is_normalized() -> None:
    assert normalize_root_path("metrics-panel/") == PREFIX
    assert normalize_root_path("/metrics-panel") == PREFIX
    assert normalize_root_path("/") == normalize_root_path(None) == ""


async def test_served_under_a_root_path_whether_the_proxy_strips_it_or_not(
    h: Any, database_url: str
) -> None:
    h.seed_runs(database_url)
    config = PanelConfig(source="postgres", database_url=database_url, root_path=PREFIX)
    async with client_for(config) as (c, _):
        bare = await c.get(PREFIX + "?window=7d", headers=HTTPS)
        assert bare.status_code == 308 and bare.headers["location"] == PREFIX + "/?window=7d"
        page = await c.get(PREFIX + "/", headers=HTTPS)
        assert page.status_code == 200
        links = re.findall(r'(?:href|src)="([^"]+)"', page.text)
        assert links and all(not link.startswith("/") for link in links), links
        for link in links:  # relative links resolve under the prefix
            if link.startswith("static/"):
                assert (await c.get(f"{PREFIX}/{link}", headers=HTTPS)).status_code == 200, link
        # Starlette's trailing-slash redirect is absolute, on the upstream's Host: made relative.
        slash = await c.get(PREFIX + "/api/kpis/", params={"window": "7d"}, headers=HTTPS)
        assert slash.status_code == 307
        assert slash.headers["location"] == PREFIX + "/api/kpis?window=7d"
        passed_on = await c.get(PREFIX + "/api/kpis", params={"window": "7d"}, headers=HTTPS)
        stripped = await c.get("/api/kpis", params={"window": "7d"}, headers=HTTPS)
        assert passed_on.status_code == stripped.status_code == 200
        assert passed_on.json()["tiles"] == stripped.json()["tiles"]
        docs = await c.get(PREFIX + "/docs")
        assert f"'{PREFIX}/openapi.json'" in docs.text  # Swagger UI finds the schema
        assert (await c.get(PREFIX + "/openapi.json")).status_code == 200


async def test_login_behind_https_proxy_sets_a_secure_cookie_under_the_prefix(
    database_url: str,
) -> None:
    token = "proxy-test-token-1"
    config = PanelConfig(
        source="postgres", database_url=database_url, token=SecretStr(token), root_path=PREFIX
    )
    async with client_for(config) as (c, _):
        page = await c.get(PREFIX + "/?window=1h", headers={**HTTPS, "Accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == PREFIX + "/login?next=%2F%3Fwindow%3D1h"
        login = await c.post(
            PREFIX + "/login", data={"token": token, "next": "/?window=1h"}, headers=HTTPS
        )
        assert login.status_code == 303 and login.headers["location"] == PREFIX + "/?window=1h"
        cookie = login.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie
        plain = await c.post(
            PREFIX + "/login", data={"token": token, "next": "/"},
            headers={"Sec-Fetch-Site": "same-origin"},
        )  # fmt: skip
        assert "secure" not in plain.headers["set-cookie"].lower()  # http: no Secure flag
        # A proxy passing the public Host on to a loopback panel is refused (DNS-rebinding
        # guard): the examples in deploy/ send the upstream's Host instead.
        public = await c.get(PREFIX + "/healthz", headers={"Host": "metrics.example.org"})
        assert public.status_code == 421
    # Forwarded headers from an address that is not a trusted proxy are ignored.
    async with client_for(config, client_ip="198.51.100.9") as (c, _):
        spoofed = await c.post(PREFIX + "/login", data={"token": token}, headers=HTTPS)
        assert "secure" not in spoofed.headers["set-cookie"].lower()
    trusting = PanelConfig(
        source="postgres", database_url=database_url, token=SecretStr(token),
        forwarded_allow_ips="198.51.100.0/24",
    )  # fmt: skip
    async with client_for(trusting, client_ip="198.51.100.9") as (c, _):
        trusted = await c.post("/login", data={"token": token}, headers=HTTPS)
        assert "secure" in trusted.headers["set-cookie"].lower()


async def test_event_stream_is_neither_buffered_nor_compressed(database_url: str) -> None:
    config = PanelConfig(source="postgres", database_url=database_url, root_path=PREFIX)
    async with client_for(config) as (c, app):
        app.state.panel.closing = True  # the stream says hello, then ends (finite in process)
        answer = await c.get(PREFIX + "/api/events", headers={**HTTPS, "Accept-Encoding": "gzip"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in answer.headers
    assert "event: hello" in answer.text


async def test_assets_are_hashed_cached_and_compressed(h: Any, database_url: str) -> None:
    h.seed_runs(database_url)
    async with client_for(PanelConfig(source="postgres", database_url=database_url)) as (c, _):
        page = (await c.get("/")).text
        plotly = re.search(r'src="(static/vendor/plotly\.min\.js\?v=[0-9a-f]{16})"', page)
        assert plotly, page
        first = await c.get("/" + plotly.group(1), headers={"Accept-Encoding": "gzip"})
        assert first.status_code == 200
        assert first.headers["content-encoding"] == "gzip"
        assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert first.num_bytes_downloaded < len(first.content) / 2.5  # 4.8 MB → about 1.4 MB
        again = await c.get("/" + plotly.group(1), headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and not again.content
        unversioned = await c.get("/static/panel.css")
        assert unversioned.headers["cache-control"] == "no-cache" and unversioned.headers["etag"]
        assert (await c.get("/static/../api.py")).status_code == 404
        slash = await c.get("/api/kpis/", params={"window": "7d"})  # without a root path too
        assert slash.headers["location"] == "/api/kpis?window=7d"
        big = await c.get(
            "/api/runs",
            params={"window": "30d", "limit": "1000"},
            headers={"Accept-Encoding": "gzip"},
        )
        assert big.headers["content-encoding"] == "gzip"  # JSON answers are compressed too
