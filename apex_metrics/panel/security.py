"""Panel security: the token gate, sessions, security headers, Host names, the bind-address rule.

With ``APEX_PANEL_TOKEN`` set, every route but ``/healthz`` and the login page needs either
``Authorization: Bearer <token>`` (the whole token: compared in constant time) or the session
cookie set by ``POST /login``. The cookie holds a random server-side session id, never the token,
and is ``HttpOnly``, ``SameSite=Strict`` (and ``Secure`` over https); see
:mod:`apex_metrics.panel.login`. Pages get a Content-Security-Policy without inline scripts. A
request that arrives on a loopback address must name a loopback ``Host``
(:mod:`apex_metrics.loopback`).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

from pydantic import SecretStr
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apex_metrics.exceptions import ConfigError
from apex_metrics.loopback import host_refusal, is_loopback, send_refusal
from apex_metrics.panel.login import MIN_TOKEN_CHARS, FailedLogins, Sessions

log = logging.getLogger(__name__)

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


def check_bind(host: str, token: SecretStr | None) -> None:
    """Refuse a non-loopback address without a token; warn when the token is short."""
    if not is_loopback(host) and (token is None or not token.get_secret_value()):
        raise ConfigError(
            f"refusing to serve the panel on {host} without APEX_PANEL_TOKEN",
            hint="set APEX_PANEL_TOKEN, or bind to 127.0.0.1",
        )
    if token is not None and 0 < len(token.get_secret_value()) < MIN_TOKEN_CHARS:
        log.warning(
            "APEX_PANEL_TOKEN has %d characters: use at least %d random ones, e.g. the output "
            "of: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            len(token.get_secret_value()),
            MIN_TOKEN_CHARS,
        )


@dataclass
class Gate:
    """The token, the sessions it opened and the failed sign-ins (one per app)."""

    token: SecretStr
    sessions: Sessions = field(default_factory=Sessions)
    failures: FailedLogins = field(default_factory=FailedLogins)

    def token_matches(self, text: str) -> bool:
        secret = self.token.get_secret_value().encode()
        return bool(text) and hmac.compare_digest(text.encode("utf-8", "surrogateescape"), secret)

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer " and self.token_matches(header[7:].strip()):
            return True
        return self.sessions.valid(request.cookies.get(COOKIE, ""))


GATE_KEY: Final = "apex_metrics.panel.gate"


def gate_of(request: Request) -> Gate | None:
    """The app's :class:`Gate` (None without a token), as the middleware left it."""
    gate: Gate | None = request.scope.get(GATE_KEY)
    return gate


class SecurityMiddleware:
    """Token gate plus security headers on every response (pure ASGI: safe for SSE streams)."""

    def __init__(self, app: ASGIApp, *, token: SecretStr | None, docs_csp: str | None) -> None:
        self.app = app
        self.gate = Gate(token) if token and token.get_secret_value() else None
        self.docs_csp = docs_csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = host_refusal(scope)
        if refusal is not None:
            await send_refusal(send, *refusal)
            return
        scope[GATE_KEY] = self.gate
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

        if self.gate is not None and path not in PUBLIC_PATHS:
            request = Request(scope)
            if not self.gate.authorized(request):
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
