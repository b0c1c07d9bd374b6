"""Signing in to the panel: the login form, sessions, failed-login limits, same-origin checks.

- ``POST /login`` reads at most ``MAX_FORM_BYTES`` (413 beyond) and ``MAX_FORM_FIELDS`` fields
  (400 beyond), and only from the panel's own pages: ``Sec-Fetch-Site``, else ``Origin``, else
  ``Referer`` must name the panel's origin (403 otherwise; a client that sends none of the three,
  such as curl, is not a browser and cannot be made to post cross-site).
- ``FAILED_LIMIT`` wrong tokens within ``FAILED_WINDOW_S`` seconds from one client address, and
  that address gets 429 with ``Retry-After`` until the oldest of them is older than the window.
- Each sign-in starts a new server-side session: the cookie holds a random id (never the
  token), logout ends it, and a restart of the panel ends them all.
- ``next`` is kept only when it is a path on the panel itself (no scheme, no host, no control
  characters or backslashes); anything else becomes ``/``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict, deque
from typing import Final
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request

from apex_metrics.formats import at_most

MAX_FORM_BYTES: Final = 8 * 1024
MAX_FORM_FIELDS: Final = 5
FAILED_LIMIT: Final = 10
FAILED_WINDOW_S: Final = 300
SESSION_SECONDS: Final = 7 * 86400
MAX_SESSIONS: Final = 10_000
MAX_CLIENTS: Final = 10_000
MIN_TOKEN_CHARS: Final = 20
# Printable ASCII but space: what may stay as it is in a Location header.
_URL_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F))


class LoginRefused(Exception):
    """A sign-in request refused before its token is looked at."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def safe_next(value: str | None) -> str:
    """``value`` when it is a path on this site (percent-encoded to ASCII), else ``/``.

    Browsers drop tabs and newlines from URLs, so ``/<TAB>/evil.example/`` would become
    ``//evil.example/``: any control character or backslash refuses the value."""
    if not value or not value.startswith("/") or value.startswith("//"):
        return "/"
    if any(c < " " or "\x7f" <= c <= "\x9f" or c == "\\" for c in value):
        return "/"
    encoded = quote(value, safe=_URL_SAFE)
    parts = urlsplit(encoded)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return "/"
    return encoded


def same_origin(request: Request) -> bool:
    """Whether a form post comes from the panel's own pages (see the module docstring)."""
    headers = request.headers
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site.strip().lower() in ("same-origin", "none")
    host = (headers.get("host") or "").strip().lower()
    for name in ("origin", "referer"):
        value = headers.get(name)
        if value is not None:
            try:
                netloc = urlsplit(value.strip()).netloc.lower()
            except ValueError:
                return False
            return bool(host) and netloc == host
    return True


async def read_form(request: Request) -> tuple[str, str]:
    """``(token, next)`` of a urlencoded login form; :class:`LoginRefused` when too big."""
    declared = request.headers.get("content-length")
    if declared is not None and not at_most(declared, MAX_FORM_BYTES):
        raise LoginRefused(413, f"The sign-in form is larger than {MAX_FORM_BYTES} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise LoginRefused(413, f"The sign-in form is larger than {MAX_FORM_BYTES} bytes.")
    try:
        form = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise LoginRefused(
            400, f"The sign-in form has more than {MAX_FORM_FIELDS} fields."
        ) from None
    return form.get("token", [""])[0], safe_next(form.get("next", ["/"])[0])


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).digest()


class Sessions:
    """Server-side sessions: digest of the cookie's random id → expiry (monotonic)."""

    def __init__(self, lifetime: float = SESSION_SECONDS, limit: int = MAX_SESSIONS) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def start(self) -> str:
        session_id = secrets.token_urlsafe(32)
        self._expiry[_digest(session_id)] = time.monotonic() + self.lifetime
        while len(self._expiry) > self.limit:
            self._expiry.popitem(last=False)  # the oldest sign-in goes first
        return session_id

    def valid(self, session_id: str) -> bool:
        if not session_id:
            return False
        key = _digest(session_id)
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if expiry < time.monotonic():
            del self._expiry[key]
            return False
        return True

    def end(self, session_id: str) -> None:
        self._expiry.pop(_digest(session_id), None)


class FailedLogins:
    """Wrong tokens per client address in a sliding window (``FAILED_LIMIT`` per window)."""

    def __init__(
        self, limit: int = FAILED_LIMIT, window: float = FAILED_WINDOW_S, clients: int = MAX_CLIENTS
    ) -> None:
        self.limit = limit
        self.window = window
        self.clients = clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again (0: now)."""
        failures = self._failures.get(client)
        if failures is None:
            return 0
        now = time.monotonic()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0
        if len(failures) < self.limit:
            return 0
        return max(1, int(failures[0] + self.window - now + 0.999))

    def failed(self, client: str) -> None:
        failures = self._failures.setdefault(client, deque())
        self._failures.move_to_end(client)
        failures.append(time.monotonic())
        while len(failures) > self.limit:
            failures.popleft()
        while len(self._failures) > self.clients:
            self._failures.popitem(last=False)
