"""Loopback servers answer only loopback ``Host`` names: the guard against DNS rebinding.

A page on ``evil.example`` can make its name resolve to 127.0.0.1 and then talk to a server on
this machine as if it were its own origin. The browser still sends ``Host: evil.example``, so a
server reached on a loopback address refuses every ``Host`` but ``localhost``, ``127.0.0.1`` and
``[::1]`` (with or without a port): 421 Misdirected Request, or 400 without a ``Host``. The
panel, the emulator and the collector all use :class:`LoopbackHostGuard`.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})


def is_loopback(host: str) -> bool:
    """Whether a bind address (or an address a connection arrived on) is loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_host(value: str) -> bool:
    """Whether a ``Host`` header names loopback: localhost, 127.0.0.1 or [::1], optional port."""
    host = value.lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = (host[: end + 1], host[end + 1 :]) if end > 0 else (host, "")
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    if rest and not (rest[0] == ":" and rest[1:].isascii() and rest[1:].isdigit()):
        return False
    return name in LOOPBACK_NAMES


def host_refusal(scope: Scope) -> tuple[int, str] | None:
    """``(status, message)`` when a request that arrived on loopback names another host."""
    server = scope.get("server")
    if not server or not isinstance(server[0], str) or not is_loopback(server[0]):
        return None
    hosts = [v for k, v in scope.get("headers", ()) if k == b"host"]
    if len(hosts) != 1:
        return 400, "exactly one Host header is required"
    if not loopback_host(hosts[0].decode("latin-1")):
        return 421, "this server answers only Host: localhost, 127.0.0.1 or [::1] (DNS rebinding)"
    return None


async def send_refusal(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class LoopbackHostGuard:
    """Pure ASGI middleware: :func:`host_refusal` for every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = host_refusal(scope)
            if refusal is not None:
                await send_refusal(send, *refusal)
                return
        await self.app(scope, receive, send)
