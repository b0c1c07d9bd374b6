"""Serving the panel behind a reverse proxy, under a path prefix (``APEX_PANEL_ROOT_PATH``).

:class:`RootPathMiddleware` lets the panel live at ``https://host/metrics-panel/`` whether the
proxy strips the prefix before passing the request on (nginx ``proxy_pass http://…/;``, Caddy
``handle_path``) or passes it on unchanged (nginx ``proxy_pass http://…;``, Caddy ``handle``):

- a request path that starts with the prefix loses it; either way the app routes on its own paths
  and ``scope["root_path"]`` holds the prefix (FastAPI's ``/docs`` and OpenAPI use it);
- a redirect the app sends to one of its own paths (``Location: /login?…``) gets the prefix;
- the bare prefix (``/metrics-panel``) redirects to ``/metrics-panel/``, so the page's relative
  links resolve under it.

The page itself links everything relatively (``static/…``, ``api/…``), so it needs no prefix.
Forwarded headers (``X-Forwarded-Proto``, ``X-Forwarded-For``) are honoured by uvicorn's
``ProxyHeadersMiddleware`` for the addresses in ``APEX_PANEL_FORWARDED_ALLOW_IPS``; the request
then has the client's scheme, so the session cookie is ``Secure`` over https.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def normalize_root_path(value: str | None) -> str:
    """``metrics-panel/`` → ``/metrics-panel``; empty or ``/`` → ``""`` (served at the root)."""
    text = (value or "").strip().strip("/")
    return f"/{text}" if text else ""


class RootPathMiddleware:
    """Strip the prefix from request paths, add it to redirects (pure ASGI: safe for SSE)."""

    def __init__(self, app: ASGIApp, *, root_path: str) -> None:
        self.app = app
        self.root_path = normalize_root_path(root_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix = self.root_path
        if scope["type"] not in ("http", "websocket") or not prefix:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == prefix and scope["type"] == "http":
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
        if path.startswith(prefix + "/"):
            path = path[len(prefix) :]
        raw = scope.get("raw_path")
        if isinstance(raw, bytes) and raw.startswith(prefix.encode() + b"/"):
            raw = raw[len(prefix) :]
        scope = {**scope, "path": path, "raw_path": raw, "root_path": prefix}

        async def send_prefixed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                location = headers.get("location")
                if location and location.startswith("/") and not location.startswith("//"):
                    headers["location"] = prefix + location
            await send(message)

        await self.app(scope, receive, send_prefixed)
