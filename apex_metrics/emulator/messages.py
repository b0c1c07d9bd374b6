"""The emulator's own request and response objects, shared by direct calls and ``$batch`` parts."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from apex_metrics.emulator.errors import ApiError, bad_request

JSON_TYPE = "application/json; odata.metadata=minimal"
_API_PREFIX = re.compile(r"^/?api/data/v9\.[0-2]/?", re.IGNORECASE)
_MAX_PAYLOAD = 64 * 1024 * 1024


@dataclass(slots=True)
class Caller:
    """Who is calling: the app registration and its application user."""

    client_id: str
    user_id: str


@dataclass(slots=True)
class ApiRequest:
    method: str
    path: str  # below the service root, decoded, e.g. "accounts(1)/name"
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    base: str  # environment URL, no trailing slash
    caller: Caller
    in_batch: bool = False
    _prefer: dict[str, str] | None = None

    @property
    def service_root(self) -> str:
        return f"{self.base}/api/data/v9.2"

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def option(self, name: str) -> str | None:
        """A system query option such as ``$select`` (the last one wins)."""
        value = None
        for key, item in self.query:
            if key == name:
                value = item
        return value

    def prefer(self) -> dict[str, str]:
        if self._prefer is None:
            self._prefer = parse_prefer(self.header("prefer"))
        return self._prefer

    def json(self) -> Any:
        """The body as JSON; a 400 with a Dataverse error body when it is not."""
        if len(self.body) > _MAX_PAYLOAD:
            raise ApiError(413, "0x80040216", "The request payload is too large.")
        try:
            return json.loads(self.body or b"null", parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise bad_request(
                f"The request body is not valid JSON: {str(exc)[:200]}", "0x80048d19"
            ) from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON value")


@dataclass(slots=True)
class ApiResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, status: int, data: Any, headers: dict[str, str] | None = None) -> ApiResponse:
        merged = {"Content-Type": JSON_TYPE, "OData-Version": "4.0", **(headers or {})}
        return cls(status, merged, dumps(data))

    @classmethod
    def empty(cls, status: int = 204, headers: dict[str, str] | None = None) -> ApiResponse:
        return cls(status, {"OData-Version": "4.0", **(headers or {})}, b"")

    @classmethod
    def error(cls, exc: ApiError) -> ApiResponse:
        return cls.json(exc.status, exc.body(), exc.headers)


def dumps(data: Any) -> bytes:
    return _ENCODER.encode(data).encode()


def _default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"cannot serialise {type(value).__name__}")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_default)


def parse_prefer(header: str | None) -> dict[str, str]:
    """``Prefer`` preferences: name (lower case) -> value ("" when it has none)."""
    result: dict[str, str] = {}
    if not header:
        return result
    items = _split_outside_quotes(header, ",") if '"' in header else header.split(",")
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip().lower()
        if name:
            result[name] = value.strip().strip('"')
    return result


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _pair(item: str) -> tuple[str, str]:
    name, _, value = item.partition("=")
    return name, value


def split_target(target: str, base: str) -> tuple[str, list[tuple[str, str]]] | None:
    """Path below the service root and query pairs of an absolute or relative URL.

    ``None`` when the URL is not under ``/api/data/v9.x/`` of this environment.
    """
    path, _, query = target.partition("?")
    if path.lower().startswith(("http://", "https://")):
        scheme_end = path.index("//") + 2
        slash = path.find("/", scheme_end)
        path = "/" if slash < 0 else path[slash:]
    if path.startswith("/") or _API_PREFIX.match(path):
        match = _API_PREFIX.match(path)
        if match is None:
            return None
        path = path[match.end() :]
    try:
        if "%" in query or "+" in query:
            pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
        else:  # nothing to decode: split it directly (the common case inside a batch)
            pairs = [_pair(item) for item in query.split("&") if item]
    except (UnicodeDecodeError, ValueError):
        raise bad_request("The query string is not valid URL-encoded UTF-8.") from None
    return unquote(path, errors="strict"), pairs
