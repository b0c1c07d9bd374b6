"""DNS rebinding: the collector on loopback answers only loopback Host names (issue 18)."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from .conftest import serve_collect


def test_loopback_collector_answers_only_loopback_host_names(database_url: str) -> None:
    with serve_collect(database_url) as served:
        port = urlsplit(served.url).port
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]"):
            answer = httpx.get(f"{served.url}/healthz", headers={"Host": host}, timeout=10)
            assert answer.status_code == 200, host
        for host in ("evil.example", f"evil.example:{port}"):
            for method, path in (("GET", "/healthz"), ("POST", "/v1/traces")):
                answer = httpx.request(
                    method, f"{served.url}{path}", headers={"Host": host}, timeout=10
                )
                assert answer.status_code == 421, (host, path)
