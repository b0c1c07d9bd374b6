"""The shipped reverse-proxy examples, live: nginx and Caddy in front of ``apex-metrics panel``.

The panel runs as ``deploy/systemd/apex-metrics-panel.service`` starts it (the CLI with the unit's
environment: loopback, ``/metrics-panel``, proxies trusted from 127.0.0.1), on a free port.
``deploy/nginx/apex-metrics-panel.conf`` is included, as its comment says, in the TLS ``server``
block of a throw-away nginx (``daemon off``, everything in a temporary directory);
``deploy/caddy/Caddyfile`` runs as shipped but for its site address and certificate. Only the
upstream port is substituted. The client talks https to the public name ``metrics.example.org``
(a test CA's certificate; connections go to 127.0.0.1) and checks, through the proxy: sign-in and
a ``Secure`` cookie, redirects on the public https origin under the prefix, the loopback Host
guard passed, the first server-sent event at once, and the assets compressed and cached.

Without nginx or Caddy these tests skip, except under CI (``CI=true``): ``.ci/run`` installs
both, so there a missing one fails.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import psycopg
import pytest

from apex_metrics.testing import free_port, tls_files

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PUBLIC = "metrics.example.org"
PREFIX = "/metrics-panel"
UPSTREAM = "127.0.0.1:8000"  # where the examples send requests (the unit's address)
PANEL = [sys.executable, "-m", "apex_metrics", "panel"]  # as the unit runs it
TOKEN = "e2e-proxy-token-5d1c9a7e3b40"
START_S = 15.0
EVENT_S = 3.0  # an event not through by then is held by the proxy

# The frame the nginx example is included into: a single process in the foreground, every path
# in the test's directory. ``gzip on`` as in Debian's /etc/nginx/nginx.conf.
NGINX_CONF = """\
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    gzip on;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {public};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        include {tmp}/apex-metrics-panel.conf;
    }}
}}
"""
# Caddy's global options: no admin endpoint, no port 80, its storage in the test's directory,
# and a bounded stop: by default Caddy waits for every open connection, and it notices that an
# HTTP/1.1 client left an event stream only at the stream's next write (a ping, every 15 s).
CADDY_GLOBAL = """\
{{
	admin off
	auto_https disable_redirects
	grace_period 1s
	storage file_system {tmp}/data
}}
"""


def installed(name: str) -> str:
    """The path of ``name``; skip without it, but fail under CI (``.ci/run`` installs it)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found:
        return found
    message = f"{name} is not installed (apt-get install {name}, as .ci/run does)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message)
    pytest.skip(message)


def unit_environment() -> dict[str, str]:
    text = (DEPLOY / "systemd" / "apex-metrics-panel.service").read_text()
    lines = [
        x.removeprefix("Environment=") for x in text.splitlines() if x.startswith("Environment=")
    ]
    return dict(line.split("=", 1) for line in lines)


def substituted(text: str, old: str, new: str, count: int) -> str:
    assert text.count(old) == count, f"the example no longer has {count}× {old!r}"
    return text.replace(old, new)


def nginx_command(tmp: Path, port: int, panel_port: int, cert: Path, key: Path) -> list[str]:
    example = (DEPLOY / "nginx" / "apex-metrics-panel.conf").read_text()
    rendered = substituted(
        example, f"proxy_pass http://{UPSTREAM};", f"proxy_pass http://127.0.0.1:{panel_port};", 2
    )
    (tmp / "apex-metrics-panel.conf").write_text(rendered)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, public=PUBLIC, cert=cert, key=key))
    return [installed("nginx"), "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]


def caddy_command(tmp: Path, port: int, panel_port: int, cert: Path, key: Path) -> list[str]:
    example = (DEPLOY / "caddy" / "Caddyfile").read_text()
    rendered = substituted(
        example, f"reverse_proxy {UPSTREAM} {{", f"reverse_proxy 127.0.0.1:{panel_port} {{", 1
    )
    site = f"https://{PUBLIC}:{port} {{\n\tbind 127.0.0.1\n\ttls {cert} {key}\n"
    rendered = substituted(rendered, f"{PUBLIC} {{\n", site, 1)
    conf = tmp / "Caddyfile"
    conf.write_text(CADDY_GLOBAL.format(tmp=tmp) + rendered)
    return [installed("caddy"), "run", "--config", str(conf), "--adapter", "caddyfile"]


PROXIES: dict[str, Callable[[Path, int, int, Path, Path], list[str]]] = {
    "nginx": nginx_command,
    "caddy": caddy_command,
}


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running(argv: list[str], port: int, log: Path, env: dict[str, str]) -> Iterator[None]:
    """``argv`` in the background until it listens on ``port``; stopped (SIGTERM) after."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_S
        while not listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{argv[0]} did not listen on {port}:\n{log.read_text()}")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ToLoopback(httpx.HTTPTransport):
    """Every connection to 127.0.0.1, with the URL's name as Host and TLS server name (the
    test's stand-in for DNS): the client uses the public origin, as a browser does."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        local = httpx.Request(
            request.method, request.url.copy_with(host="127.0.0.1"), headers=request.headers,
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": request.url.host},
        )  # fmt: skip
        return super().handle_request(local)


@dataclass
class Proxied:
    origin: str  # https://metrics.example.org:<proxy port>
    panel: str  # http://127.0.0.1:<panel port>, the panel itself
    client: httpx.Client
    database_url: str

    def target(self, response: httpx.Response) -> str:
        """Where a redirect sends a browser (its Location resolved against the request)."""
        assert response.is_redirect, (response.status_code, response.text)
        return urljoin(str(response.url), response.headers["location"])


@pytest.fixture(params=sorted(PROXIES))
def proxied(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[Proxied]:
    """The panel as the unit starts it, behind the proxy's shipped example over https."""
    command = PROXIES[request.param]
    unit = unit_environment()
    assert unit["APEX_PANEL_ROOT_PATH"] == PREFIX and f":{unit['APEX_PANEL_PORT']}" in UPSTREAM
    panel_port, port = free_port(), free_port()
    ca, cert, key = tls_files(tmp_path, PUBLIC)
    panel_env = {
        **os.environ, **unit, "APEX_PANEL_PORT": str(panel_port),
        "APEX_DATABASE_URL": database_url, "APEX_PANEL_TOKEN": TOKEN,
    }  # fmt: skip
    proxy_env = {
        **os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }  # fmt: skip
    argv = command(tmp_path, port, panel_port, cert, key)
    with (
        running(PANEL, panel_port, tmp_path / "panel.log", panel_env),
        running(argv, port, tmp_path / "proxy.log", proxy_env),
        httpx.Client(
            transport=ToLoopback(verify=ssl.create_default_context(cafile=str(ca))),
            base_url=f"https://{PUBLIC}:{port}", timeout=httpx.Timeout(10, read=EVENT_S),
        ) as client,
    ):  # fmt: skip
        yield Proxied(f"https://{PUBLIC}:{port}", f"http://127.0.0.1:{panel_port}", client,
                      database_url)  # fmt: skip
    assert not proxy_errors(tmp_path / ("error.log" if request.param == "nginx" else "proxy.log"))


def proxy_errors(log: Path) -> list[str]:
    """What the proxy logged as errors. Caddy's about the event stream the client left are
    left out: it notices an HTTP/1.1 client gone only when it stops (``grace_period``)."""
    lines = log.read_text().splitlines()
    caddy_stop = ('"msg":"server shutdown"', '"error":"context canceled"')
    return [
        x for x in lines
        if "[error]" in x or ('"level":"error"' in x and not any(c in x for c in caddy_stop))
    ]  # fmt: skip


def add_run(h: Any, url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(h.INSERT, h.random_run(random.Random(3), datetime.now(UTC), "proxy-e2e-1"))


def sign_in(proxied: Proxied) -> None:
    """As a browser: the page sends to the login form, which sets a Secure cookie."""
    c, origin, at = proxied.client, proxied.origin, proxied.target
    # The bare prefix goes to the page, query kept, on the public https origin.
    bare = c.get(PREFIX, params={"window": "7d"})
    assert bare.status_code == 308 and at(bare) == f"{origin}{PREFIX}/?window=7d"
    page = c.get(PREFIX + "/", params={"window": "1h"}, headers={"Accept": "text/html"})
    assert page.status_code == 303  # the panel answered the public Host: the guard passed
    assert at(page) == f"{origin}{PREFIX}/login?next=%2F%3Fwindow%3D1h"
    form = c.get(at(page))
    assert form.status_code == 200 and 'action="login"' in form.text
    login = c.post(
        urljoin(at(page), "login"), data={"token": TOKEN, "next": "/?window=1h"},
        headers={"Sec-Fetch-Site": "same-origin", "Origin": origin},
    )  # fmt: skip
    assert login.status_code == 303 and at(login) == f"{origin}{PREFIX}/?window=1h"
    flags = {x.strip().split("=")[0].lower() for x in login.headers["set-cookie"].split(";")}
    assert {"secure", "httponly"} <= flags  # X-Forwarded-Proto: https was honoured
    signed_in = c.get(at(login), headers={"Accept": "text/html", "Accept-Encoding": "gzip"})
    assert signed_in.status_code == 200 and "<html" in signed_in.text
    assert signed_in.headers["content-encoding"] == "gzip"  # the panel's GZipMiddleware
    # Starlette's trailing-slash redirect stays on the proxy's origin, under the prefix.
    slash = c.get(PREFIX + "/api/kpis/", params={"window": "1h"})
    assert at(slash) == f"{origin}{PREFIX}/api/kpis?window=1h"
    assert c.get(at(slash)).json()["tiles"]


def first_events(h: Any, proxied: Proxied) -> None:
    """``hello`` at once, and a ``change`` when a run arrives: nothing held by the proxy (a
    buffering nginx holds even the headers)."""
    started = time.monotonic()
    try:
        with proxied.client.stream(
            "GET", PREFIX + "/api/events",
            headers={"Accept": "text/event-stream", "Accept-Encoding": "gzip"},
        ) as events:  # fmt: skip
            assert events.status_code == 200
            assert events.headers["content-type"].startswith("text/event-stream")
            assert "content-encoding" not in events.headers
            lines = events.iter_lines()
            assert next(lines) == "event: hello"
            waited = time.monotonic() - started
            add_run(h, proxied.database_url)
            while next(lines) != "event: change":
                pass
    except httpx.ReadTimeout:
        pytest.fail(f"no event through the proxy within {EVENT_S} s: it holds the stream")
    assert waited < 1.5, f"the first event took {waited:.1f} s"


def cached_assets(proxied: Proxied) -> None:
    """Plotly.js as the panel serves it: gzip, cached a year, revalidated by ETag."""
    c = proxied.client
    page = c.get(PREFIX + "/").text
    version = page.split('src="static/vendor/plotly.min.js?v=', 1)[1].split('"', 1)[0]
    url = f"{PREFIX}/static/vendor/plotly.min.js?v={version}"
    first = c.get(url, headers={"Accept-Encoding": "gzip"})
    assert first.status_code == 200 and first.headers["content-encoding"] == "gzip"
    assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert first.num_bytes_downloaded < len(first.content) / 2.5  # 4.8 MB → about 1.4 MB
    again = c.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_the_shipped_example_in_front_of_the_panel(h: Any, proxied: Proxied) -> None:
    # Without the proxy, the panel refuses the public name (its DNS-rebinding guard): what
    # reaches it through the proxy carries the upstream's Host.
    assert httpx.get(f"{proxied.panel}/healthz", headers={"Host": PUBLIC}).status_code == 421
    sign_in(proxied)
    first_events(h, proxied)  # with the session cookie, as the page's EventSource
    cached_assets(proxied)
    logout = proxied.client.post(PREFIX + "/logout", headers={"Sec-Fetch-Site": "same-origin"})
    assert proxied.target(logout) == f"{proxied.origin}{PREFIX}/login"
    assert proxied.client.get(PREFIX + "/api/kpis").status_code == 401
