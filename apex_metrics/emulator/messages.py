"""The emulator's own request and response objects, shared by direct calls and ``$batch`` parts."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from apex_metrics.emulator.costs import Usage
from apex_metrics.emulator.errors import ApiError, bad_request

JSON_TYPE = "application/json; odata.metadata=minimal"
_API_PREFIX = re.compile(r"^/?api/data/v9\.[0-2]/?", re.IGNORECASE)
_MAX_PAYLOAD = 64 * 1024 * 1024
# A JSON escape of a UTF-16 surrogate, or one encoded as UTF-8 bytes (read with surrogatepass).
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


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
    # What the request did, for its modeled cost; the parts of a $batch share the batch's.
    usage: Usage = field(default_factory=Usage)
    # The handler counted this request's usage itself ($batch by its parts, bulk messages by
    # their targets): it is not priced as a single request.
    counted: bool = False

    @property
    def service_root(self) -> str:
        return f"{self.base}/api/data/v9.2"

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def option(self, name: str) -> str | None:
        """A system query option such as ``$select`` (the last one wins)."""
        return option(self.query, name)

    def prefer(self) -> dict[str, str]:
        if self._prefer is None:
            self._prefer = prefer_of(self.header("prefer"))
        return self._prefer

    def json(self) -> Any:
        """The body as JSON; a 400 with a Dataverse error body when it is not."""
        return decode_json(self.body)


def option(query: list[tuple[str, str]], name: str) -> str | None:
    """A system query option such as ``$select`` (the last one wins)."""
    value = None
    for key, item in query:
        if key == name:
            value = item
    return value


def prefer_of(header: str | None) -> dict[str, str]:
    """``parse_prefer``; a batch repeats the same few Prefer values in every part: each short
    one is parsed once."""
    if header and len(header) <= 256:
        return dict(_parsed_prefer(header))
    return parse_prefer(header)


def returns_representation(headers: Mapping[str, str]) -> bool:
    """``Prefer: return=representation`` among ``headers`` (names in any case)."""
    value = headers.get("prefer")
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == "prefer"), None)
    return value is not None and prefer_of(value).get("return") == "representation"


def decode_json(body: bytes) -> Any:
    """A request body as JSON; a 400 with a Dataverse error body when it is not, or when it
    holds a lone surrogate (``"\\ud800"``: no UTF-8 text can store it)."""
    value = _decode_json(body)
    if _SURROGATE.search(body) or (body[:1] != b"{" and body[:3].count(b"\x00")):
        try:
            dumps(value)
        except UnicodeEncodeError:
            raise bad_request(
                "The request body is not valid JSON: a string holds a lone UTF-16 surrogate.",
                "0x80048d19",
            ) from None
    return value


def header_value(value: str) -> str:
    """A header value as ASCII: other characters percent-encoded as UTF-8 (``OData-EntityId``
    of a key with non-ASCII text: HTTP headers carry Latin-1 at most, URIs ASCII)."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe=_HEADER_SAFE)


def ascii_headers(headers: dict[str, str]) -> dict[str, str]:
    return {name: header_value(value) for name, value in headers.items()}


def _decode_json(body: bytes) -> Any:
    if len(body) > _MAX_PAYLOAD:
        raise ApiError(413, "0x80040216", "The request payload is too large.")
    raw = body or b"null"
    # json.loads(raw, parse_constant=...) without building a decoder per call. A body that
    # starts with "{" and no NUL is UTF-8 by json.detect_encoding's rules; an object that runs
    # to the end of the text is what JSONDecoder.decode would return (anything else, an error
    # included, goes through decode itself).
    encoding = "utf-8" if raw[:1] == b"{" and raw[1:2] != b"\x00" else None
    try:
        text = raw.decode(encoding or json.detect_encoding(raw), "surrogatepass")
        if encoding is not None:
            try:
                value, end = _scan_once(text, 0)
            except (StopIteration, RecursionError):  # decode says which, at the usual depth
                end = -1
            if end == len(text):
                return value
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise bad_request(
            f"The request body is not valid JSON: {str(exc)[:200]}", "0x80048d19"
        ) from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON value")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_scan_once: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


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
    if type(data) is dict and _encode_dict is not None:
        return "".join(_encode_dict(data, 0)).encode()
    return _ENCODER.encode(data).encode()


def _default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"cannot serialise {type(value).__name__}")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_default)
# What _ENCODER.encode builds for every call, built once: C encoder of the same settings
# (without the circular-reference check; nothing encoded here refers to itself).
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_encode_dict: Any = (
    _c_make_encoder(
        None, _default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
    if _c_make_encoder is not None
    else None
)


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


@lru_cache(maxsize=256)
def _parsed_prefer(header: str) -> tuple[tuple[str, str], ...]:
    return tuple(parse_prefer(header).items())


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
    if path[:8].lower().startswith(("http://", "https://")):
        scheme_end = path.index("//") + 2
        slash = path.find("/", scheme_end)
        path = "/" if slash < 0 else path[slash:]
    match = _API_PREFIX.match(path)
    if match is not None:
        path = path[match.end() :]
    elif path.startswith("/"):
        return None
    pairs = query_pairs(query)
    return unquote(path, errors="strict"), pairs


def query_pairs(query: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a query string, decoded."""
    try:
        if "%" in query or "+" in query:
            return parse_qsl(query, keep_blank_values=True, errors="strict")
        # nothing to decode: split it directly (the common case inside a batch)
        return [_pair(item) for item in query.split("&") if item]
    except (UnicodeDecodeError, ValueError):
        raise bad_request("The query string is not valid URL-encoded UTF-8.") from None
