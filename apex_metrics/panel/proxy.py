"""Serving the panel behind a reverse proxy, under a path prefix (``APEX_PANEL_ROOT_PATH``).

:class:`RootPathMiddleware` lets the panel live at ``https://host/metrics-panel/`` whether the
proxy strips the prefix before passing the request on (nginx ``proxy_pass http://…/;``, Caddy
``handle_path``) or passes it on unchanged (nginx ``proxy_pass http://…;``, Caddy ``handle``):

- a request path that starts with the prefix loses it; either way the app routes on its own paths
  and ``scope["root_path"]`` holds the prefix (FastAPI's ``/docs`` and OpenAPI use it);
- a redirect the app sends to one of its own paths gets the prefix, and an absolute one to the
  request's own ``Host`` (Starlette's trailing-slash redirect, ``http://127.0.0.1:8000/api/kpis``:
  the proxy's upstream address) becomes relative first, so it stays on the proxy's origin;
- the bare prefix (``/metrics-panel``) redirects to ``/metrics-panel/``, so the page's relative
  links resolve under it.

The page itself links everything relatively (``static/…``, ``api/…``), so it needs no prefix.
Forwarded headers (``X-Forwarded-Proto``, ``X-Forwarded-For``) are honoured by uvicorn's
``ProxyHeadersMiddleware`` for the addresses in ``APEX_PANEL_FORWARDED_ALLOW_IPS``; the request
then has the client's scheme, so the session cookie is ``Secure`` over https.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def normalize_root_path(value: str | None) -> str:
    """``metrics-panel/`` → ``/metrics-panel``; empty or ``/`` → ``""`` (served at the root)."""
    text = (value or "").strip().strip("/")
    return f"/{text}" if text else ""


def own_location(location: str, host: str) -> str | None:
    """The path (with query) of a redirect to this server itself, ``None`` for other sites.

    ``/login?next=%2F`` stays as it is; ``https://127.0.0.1:8000/api/kpis`` with ``host``
    ``127.0.0.1:8000`` becomes ``/api/kpis``."""
    if location.startswith("/"):
        return None if location.startswith("//") else location
    try:
        parts = urlsplit(location)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host or parts.netloc.lower() != host.lower():
        return None
    return urlunsplit(("", "", parts.path or "/", parts.query, parts.fragment))


class RootPathMiddleware:
    """Strip the prefix from request paths; the app's own redirects become relative and get the
    prefix (pure ASGI: safe for SSE)."""

    def __init__(self, app: ASGIApp, *, root_path: str) -> None:
        self.app = app
        self.root_path = normalize_root_path(root_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix = self.root_path
        if scope["type"] != "http":
            if scope["type"] == "websocket" and prefix:
                scope = self._strip(scope, prefix)
            await self.app(scope, receive, send)
            return
        if prefix and scope["path"] == prefix:
            query = scope.get("query_string", b"").decode("latin-1")
            location = prefix + "/" + (f"?{query}" if query else "")
            await send(
                {
                    "type": "http.response.start",
                    "status": 308,
                    "headers": [(b"location", location.encode("latin-1"))],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if prefix:
            scope = self._strip(scope, prefix)
        hosts = [v for k, v in scope.get("headers", ()) if k == b"host"]
        host = hosts[0].decode("latin-1") if len(hosts) == 1 else ""

        async def send_prefixed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                location = headers.get("location")
                path = own_location(location, host) if location else None
                if path is not None:
                    headers["location"] = prefix + path
            await send(message)

        await self.app(scope, receive, send_prefixed)

    @staticmethod
    def _strip(scope: Scope, prefix: str) -> Scope:
        path: str = scope["path"]
        if path.startswith(prefix + "/"):
            path = path[len(prefix) :]
        raw = scope.get("raw_path")
        if isinstance(raw, bytes) and raw.startswith(prefix.encode() + b"/"):
            raw = raw[len(prefix) :]
        return {**scope, "path": path, "raw_path": raw, "root_path": prefix}
