"""The environment's web servers, and the ``ARRAffinity`` cookie that pins a client to one.

Dataverse sits behind Azure's load balancer: "When you make a connection to a service on Azure
a cookie is returned with the response and all your subsequent requests will attempt to be
routed to the same server" (Microsoft Learn, "Send parallel requests", Server affinity). A
client that refuses the cookie is spread over every server, and since "each limit is applied
per server", it gets more of the environment's capacity. Here a request that carries the
cookie of one of this emulator's servers goes to that server; any other (no cookie, or a token
this emulator never gave) goes to the next server in turn, and its answer sets the cookie.
"""

from __future__ import annotations

import hashlib
import hmac

COOKIE = "ARRAffinity"


class WebServers:
    """Which of ``count`` web servers serves a request: by affinity cookie or round robin."""

    def __init__(self, count: int, secret: bytes) -> None:
        # One token per server, stable for the same secret (the store's signing key, which a
        # --db file keeps): a client's cookie still names its server after a restart.
        self.tokens = [
            hmac.new(secret, f"{COOKIE}:{index}".encode(), hashlib.sha256).hexdigest()
            for index in range(count)
        ]
        self._by_token = {token: index for index, token in enumerate(self.tokens)}
        self._next = 0

    def reset(self) -> None:
        """Start the round robin again at server 0."""
        self._next = 0

    def route(self, token: str | None) -> tuple[int, bool]:
        """The server for a request carrying ``token`` (the cookie's value, if any), and
        whether that token already named it (then no cookie is set again)."""
        index = self._by_token.get(token) if token else None
        if index is not None:
            return index, True
        index = self._next
        self._next = (index + 1) % len(self.tokens)
        return index, False

    def cookie(self, index: int, *, secure: bool) -> str:
        """The ``Set-Cookie`` value that pins a client to server ``index``."""
        value = f"{COOKIE}={self.tokens[index]}; Path=/; HttpOnly"
        return value + "; Secure" if secure else value
