"""Panel security: the token gate, the login cookie, security headers, the bind-address rule.

With ``APEX_PANEL_TOKEN`` set, every route but ``/healthz`` and the login page needs either
``Authorization: Bearer <token>`` or the session cookie set by ``POST /login``. The cookie holds
an HMAC of the token, never the token itself, and is ``HttpOnly``, ``SameSite=Strict`` (and
``Secure`` over https). Pages get a Content-Security-Policy without inline scripts.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Final
from urllib.parse import parse_qs, quote

from pydantic import SecretStr
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apex_metrics.exceptions import ConfigError

COOKIE: Final = "apex_panel_session"
PUBLIC_PATHS: Final = frozenset({"/healthz", "/login", "/static/login.css"})
CSP: Final = (
    "default-src 'self'; script-src 'self'; "
    # Plotly sets style attributes and injects its own stylesheet at run time.
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: SecretStr | None) -> None:
    """Refuse a non-loopback address without a token."""
    if not is_loopback(host) and (token is None or not token.get_secret_value()):
        raise ConfigError(
            f"refusing to serve the panel on {host} without APEX_PANEL_TOKEN",
            hint="set APEX_PANEL_TOKEN, or bind to 127.0.0.1",
        )


def session_value(token: SecretStr) -> str:
    """What the cookie holds: an HMAC of the token (the token never reaches the browser)."""
    return hmac.new(
        token.get_secret_value().encode(), b"apex-metrics panel session v1", hashlib.sha256
    ).hexdigest()


def authorized(request: Request, token: SecretStr) -> bool:
    secret = token.get_secret_value().encode()
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and hmac.compare_digest(header[7:].strip().encode(), secret):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), session_value(token).encode())


class SecurityMiddleware:
    """Token gate plus security headers on every response (pure ASGI: safe for SSE streams)."""

    def __init__(self, app: ASGIApp, *, token: SecretStr | None, docs_csp: str | None) -> None:
        self.app = app
        self.token = token if token and token.get_secret_value() else None
        self.docs_csp = docs_csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        csp = self.docs_csp if path == "/docs" and self.docs_csp else CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = csp
            await send(message)

        if self.token is not None and path not in PUBLIC_PATHS:
            request = Request(scope)
            if not authorized(request, self.token):
                await self._refuse(request)(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)

    @staticmethod
    def _refuse(request: Request) -> Response:
        wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
        if wants_page and not request.url.path.startswith("/api/"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return JSONResponse(
            {"error": "authentication required: Authorization: Bearer <APEX_PANEL_TOKEN>"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="apex-metrics panel"'},
        )


def safe_next(value: str | None) -> str:
    """Only same-site relative paths (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


async def login_form(request: Request) -> tuple[str, str]:
    """(token, next) from a urlencoded login form."""
    body = (await request.body()).decode("utf-8", errors="replace")
    form = parse_qs(body, max_num_fields=5)
    return (form.get("token", [""])[0], safe_next(form.get("next", ["/"])[0]))
